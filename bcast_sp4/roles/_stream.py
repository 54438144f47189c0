"""The TCP adapter shared by the SimulCrypt roles: bytes -> framer -> codec -> machine -> outputs.

A protocol here does nothing but translate: it feeds received bytes to the :class:`Framer`,
decoded messages (or the codec's errors) to its machine, and hands the machine's outputs to the
role's :class:`~bcast_sp4.roles.executor.OutputExecutor` with its own
:class:`~bcast_sp4.roles.executor.Outbox`: the replies to one received chunk leave in one
``transport.write``, a :class:`Close` after them.

With a :class:`~bcast_sp4.roles.guard.ConnectionGuard` (every role built by its tap has one), the
connection's :class:`~bcast_sp4.roles.guard.ConnectionWatch` decides how many of the received
messages are handled in this reactor turn (the rest on the next turns, reading paused) and, after
each turn, checks the buffers and the timeouts; servers tell it whether a channel is open and
send the channel_test it asks for.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReadWriteDescriptor, ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..machines.outputs import Close, Output
from ..wire import Framer, Interface, Message, PeerProtocolError, decode
from .executor import Outbox, OutputExecutor
from .guard import ConnectionGuard, ConnectionWatch
from .log_limit import host_of

_INTERNAL_ERROR = (Close("internal error", "warn"),)
_PLAIN_TCP = (tcp.Server, tcp.Client)  # Twisted's TCP connections: the buffer fields direct_writer reads


def bare(exc: PeerProtocolError) -> PeerProtocolError:
    """*exc* without its traceback and chained exceptions, for keeping as an input item.

    A peer's invalid message is an expected input, not a bug: the decoder's exception is the item
    the machine answers, and nothing needs where it was raised. Kept whole, the exception, its
    traceback's frames (this adapter's and the decoder's, linked by ``f_back``), their locals and
    the chained ``struct.error`` form a reference cycle per invalid message that only the cyclic
    GC frees: under a fuzz flood the ECMG's young collections found ~15,000 such objects a second
    and took 5-17 ms of CPU each, the control channel's worst round trips (issue #13).
    """
    exc.__traceback__ = exc.__context__ = exc.__cause__ = None
    return exc


def peer_name(transport) -> str:
    """``host:port`` of the other end of *transport* (``?`` for an address without one)."""
    peer = transport.getPeer()
    if isinstance(peer, (IPv4Address, IPv6Address)):
        return f"{peer.host}:{peer.port}"
    return "?"


def socket_writer(transport) -> Callable[[bytes], None] | None:
    """``transport.write`` that sends at once, for a plain Twisted TCP connection (else ``None``).

    Twisted's own write buffers, registers the socket for writing and sends on the next reactor
    turn (or on an explicit ``doWrite``), then unregisters it: two ``epoll_ctl`` calls and a dozen
    Python calls around each ``send``. A request/response server (the ECMG) writes one short reply
    per request into an empty buffer, and the SCS one CW_provision per stream-period, so this
    sends it straight away (:func:`direct_writer`); accepted and connected sockets alike.
    """
    if type(transport) not in _PLAIN_TCP or "write" in vars(transport) or not all(
        hasattr(transport, name) for name in ("socket", "dataBuffer", "offset", "_tempDataLen", "connected", "disconnecting")
    ):
        # another transport, a write wrapped on this one (a capture, a test's recorder), or a
        # Twisted whose buffer fields moved: the transport's own write
        return None
    return direct_writer(transport, transport.socket)


def direct_writer(transport, sock) -> Callable[[bytes], None]:
    """``send(data)``: straight to *sock* while *transport* (a Twisted ``FileDescriptor`` on it)
    buffers nothing and is connected; what the socket does not take (or any socket error) goes
    to ``transport.write``, which keeps the order, sends it when the socket is writable and
    reports the error as a connection loss. Once the transport buffers anything, every write is
    its write until it has sent all."""
    write = transport.write

    def send(data: bytes) -> None:
        if (transport.connected and not transport.disconnecting and not transport._tempDataLen
                and transport.offset == len(transport.dataBuffer)):
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the transport's own send meets the error and loses the connection
            if sent == len(data):
                return
            data = data[sent:]
        write(data)

    return send


class SimulCryptStreamProtocol(Protocol):
    """Base of the TCP roles. Subclasses set :attr:`interface` and implement :meth:`handle`.

    :meth:`handle` returns the machine's outputs, or ``bytes``: a reply a hot path already
    encoded, queued as it is. Every connection runs with TCP_NODELAY (a message, then the peer
    answers: Nagle would hold the next one back behind a delayed ACK). With :attr:`write_through`
    the replies to a received chunk are sent before ``dataReceived`` returns (the transport's
    ``doWrite``), not at the reactor's next turn; what the socket does not take waits as usual.

    :param executor: the role's output executor (shared by its connections).
    :param guard: the role's connection guard (budgets, timeouts), or ``None`` for none.
    """

    log = Logger()
    interface: Interface
    #: send each batch of replies at once (a request/response server: the ECMG)
    write_through = False
    #: :class:`~bcast_sp4.wire.Deviation` members this connection's decoder accepts (none: strict)
    tolerate: frozenset = frozenset()
    #: ``(frame, received_at) -> outputs | bytes | None``: a role's own path for the whole frames it
    #: recognises without the decoder (the ECMG's CW_provisions), tried first; ``None`` from it
    #: means "not taken, nothing done" and the frame is decoded and handled as usual. It reports
    #: what it takes to the meter itself.
    quick: Callable[[bytes, float], object] | None = None

    def __init__(self, executor: OutputExecutor, max_message_length: int, guard: ConnectionGuard | None = None) -> None:
        self.executor = executor
        self.guard = guard
        self.watch: ConnectionWatch | None = None
        self.clock = executor.clock
        self.framer = Framer(max_length=max_message_length, interface=self.interface)
        # the class's logger: ``self.log`` would be a Logger whose source is this protocol, and the
        # outbox holding it a reference cycle that keeps the connection (its framer's buffer too)
        # alive after it closed, until a full garbage collection (issue #13: memory after a flood)
        self.outbox = Outbox(type(self).log, limiter=executor.limiter)
        #: where the machine's plain Send / Close go (``None`` when the machine addresses them itself)
        self.reply_outbox: Outbox | None = self.outbox

    @property
    def peer(self) -> str:
        return self.outbox.peer

    @property
    def closing(self) -> bool:
        """A close is under way: nothing more is read or written."""
        return self.outbox.closing

    def connectionMade(self) -> None:
        self.outbox.attach(self.transport, peer_name(self.transport))
        self.prepare_transport()
        self.start_watch()
        self.log_connection("opened", "connection from {peer}")
        if self.executor.meter is not None:  # servers; the clients count in their ClientService
            self.executor.meter.connection_made(self.executor.role)

    def log_connection(self, kind: str, text: str) -> None:
        """An info line about this connection (*kind*: ``opened``, ``closed``), limited per host by
        the role's limiter when it has one: a flood of connections is a few lines and a summary.
        Logged by the class's logger: an event whose source is the protocol would keep the
        protocol alive as long as the event is kept (a log buffer)."""
        limiter = self.executor.limiter
        if limiter is None or limiter.allow(host_of(self.peer), kind, f"connections {kind}", "info"):
            type(self).log.info(text, peer=self.peer)

    def prepare_transport(self) -> None:
        """TCP_NODELAY, and the outbox's write-through when :attr:`write_through` (from connectionMade)."""
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        if self.write_through and IReadWriteDescriptor.providedBy(transport) and not ISSLTransport.providedBy(transport):
            # a plain TCP socket (TLS writes through its own layer): straight to the socket when
            # the transport holds nothing, else the transport's write and doWrite
            send = socket_writer(transport)
            if send is not None:
                self.outbox.send = send
            else:
                self.outbox.push = transport.doWrite

    # -- the guard's hooks ---------------------------------------------------------------------------

    def start_watch(self) -> None:
        """Put the connection under the guard (from ``connectionMade``, once the peer is known)."""
        guard = self.guard
        if guard is not None:
            self.watch = guard.watch(
                self.peer, self.transport, handle_frames=self.handle_frames, close=self.close_now,
                partial=self.framer.buffered_bytes, has_channel=self.has_channel if guard.server else None,
                channel_test=self.channel_test, feed=self.framer.feed,
            )

    def stop_watch(self) -> None:
        """The connection is gone (from ``connectionLost``): the guard's timers stop, counts go back."""
        if self.watch is not None:
            self.watch.connection_lost()
            self.watch = None

    def _closing_watch(self) -> None:
        if self.watch is not None:
            self.watch.closing()

    def has_channel(self) -> bool:
        """Whether a channel is open on this connection (servers say; a client's guard does not ask)."""
        return True

    def channel_test(self) -> bool:
        """Send a channel_test on the open channel; ``False`` when there is none (servers only)."""
        return False

    def close_now(self, reason: str) -> None:
        """Drop the connection at once (the guard logged why): nothing more is read or written."""
        outbox = self.outbox
        outbox.ask_close(Close(reason, "info"))
        outbox.closed = True  # the guard logged it; no write-then-close: the peer is not served further
        self.transport.abortConnection()

    # -- input -----------------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.outbox.close is not None:  # closing (the property's test, without its call)
            return
        received_at = self.clock.seconds()
        watch = self.watch
        if watch is None:
            self.handle_frames(self.framer.feed(data), received_at)
            return
        frames = watch.receive(data, received_at)
        handled = self.handle_frames(frames, received_at) if frames else 0
        if handled < len(frames):
            watch.put_back(frames, handled, received_at)
        watch.turn_done(handled > 0)

    def handle_frames(self, frames: list, received_at: float) -> int:
        """Decode and handle whole messages whose bytes arrived at *received_at*; replies in one write.

        :returns: how many were handled: all, unless the connection closes or the guard's turn
            time runs out (the guard keeps the rest for the next turn).
        """
        outbox = self.outbox
        if outbox.close is not None:  # closing
            self._closing_watch()
            return len(frames)
        clock, executor, interface, reply_outbox = self.clock, self.executor, self.interface, self.reply_outbox
        meter = executor.meter
        tolerate, quick = self.tolerate, self.quick
        deadline = self.watch.deadline if self.watch is not None else None
        handled = 0
        executor.begin()
        try:
            for item in frames:
                outputs = None
                try:
                    if quick is not None and type(item) is bytes:
                        outputs = quick(item, received_at)  # the role's own path (it counts what it takes)
                    decoded = outputs is None
                    if decoded:
                        if not isinstance(item, PeerProtocolError):
                            try:
                                item = decode(item, interface, tolerate=tolerate)
                            except PeerProtocolError as exc:
                                item = bare(exc)
                            else:
                                if meter is not None:
                                    meter.message_received(executor.role, outbox.peer, item, received_at)
                        now = clock.seconds()
                        outputs = self.handle(item, now, received_at)
                    else:
                        now = clock.seconds()
                except Exception:
                    # Our bug, not the peer's: log it, drop this connection, keep the process serving.
                    self.log.failure("unhandled error handling a message from {peer}", Failure(), peer=self.peer)
                    outputs, decoded, now = _INTERNAL_ERROR, False, clock.seconds()
                if type(outputs) is bytes:  # a hot path's reply, already encoded
                    executor.send_encoded(reply_outbox, outputs)
                    if meter is not None and decoded:  # the ECM_response to the CW_provision *item*
                        meter.encoded_reply(executor.role, outbox.peer, item, clock.seconds())
                else:
                    executor.run(outputs, now, reply_outbox)
                handled += 1
                if outbox.close is not None:  # closing
                    self._closing_watch()
                    return len(frames)  # nothing more is handled on this connection
                if deadline is not None and handled < len(frames) and clock.seconds() > deadline:
                    break  # the turn's time is up: the guard keeps the rest for the next turn
        finally:
            executor.end()
        return handled

    def run(self, outputs) -> None:
        """Execute outputs produced outside ``dataReceived`` (timers, shutdown) on this connection."""
        self.executor.run(outputs, self.clock.seconds(), self.outbox)

    def send(self, message: Message) -> None:
        """Write one message now (role-initiated traffic, e.g. the MUX's deliveries)."""
        self.executor.send(self.outbox, message)

    def handle(self, item: Message | PeerProtocolError, now: float, received_at: float) -> list[Output]:
        raise NotImplementedError


class ServerFactory(Factory):
    """What the server roles' factories share (set :attr:`protocol` and :attr:`role`): the guard's
    admission of each connection, and ``listening`` in the session once the port listens.

    :param session: the process's :class:`~bcast_sp4.session.SessionManager`, or ``None``.
    :param listening_on: the endpoint description the factory listens on (for the session).
    :param guard: the connection guard (admission, budgets, timeouts), or ``None`` for none.
    """

    noisy = False
    #: the role's name in the session (``"ecmg"``, ``"mux"``)
    role = ""

    def __init__(self, session=None, listening_on: str | None = None, guard: ConnectionGuard | None = None) -> None:
        self.session = session
        self.listening_on = listening_on
        self.guard = guard

    def startFactory(self) -> None:
        """The server listens (Twisted calls this before the first connection is accepted)."""
        if self.session is not None and self.listening_on is not None:
            self.session.listening(self.listening_on, self.role)

    def buildProtocol(self, addr) -> SimulCryptStreamProtocol | None:
        if self.guard is not None and not self.guard.admit(addr):
            return None  # Twisted closes the socket at once
        protocol = self.protocol(self)
        protocol.factory = self
        return protocol
