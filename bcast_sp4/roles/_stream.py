"""The TCP adapter shared by the SimulCrypt roles: bytes -> framer -> codec -> machine -> outputs.

A protocol here does nothing but translate: it feeds received bytes to the :class:`Framer`,
decoded messages (or the codec's errors) to its machine, and hands the machine's outputs to the
role's :class:`~bcast_sp4.roles.executor.OutputExecutor` with its own
:class:`~bcast_sp4.roles.executor.Outbox`: the replies to one received chunk leave in one
``transport.write``, a :class:`Close` after them.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..machines.outputs import Close, Output
from ..wire import Framer, Interface, Message, PeerProtocolError, decode
from .executor import Outbox, OutputExecutor

_INTERNAL_ERROR = (Close("internal error", "warn"),)


def peer_name(transport) -> str:
    """``host:port`` of the other end of *transport* (``?`` for an address without one)."""
    peer = transport.getPeer()
    if isinstance(peer, (IPv4Address, IPv6Address)):
        return f"{peer.host}:{peer.port}"
    return "?"


class SimulCryptStreamProtocol(Protocol):
    """Base of the TCP roles. Subclasses set :attr:`interface` and implement :meth:`handle`.

    :param executor: the role's output executor (shared by its connections).
    """

    log = Logger()
    interface: Interface
    #: :class:`~bcast_sp4.wire.Deviation` members this connection's decoder accepts (none: strict)
    tolerate: frozenset = frozenset()

    def __init__(self, executor: OutputExecutor, max_message_length: int) -> None:
        self.executor = executor
        self.clock = executor.clock
        self.framer = Framer(max_length=max_message_length, interface=self.interface)
        self.outbox = Outbox(self.log)
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
        self.log.info("connection from {peer}", peer=self.peer)

    def dataReceived(self, data: bytes) -> None:
        outbox = self.outbox
        if outbox.closing:
            return
        clock, executor, interface, reply_outbox = self.clock, self.executor, self.interface, self.reply_outbox
        tolerate = self.tolerate
        received_at = clock.seconds()
        executor.begin()
        try:
            for item in self.framer.feed(data):
                if not isinstance(item, PeerProtocolError):
                    try:
                        item = decode(item, interface, tolerate=tolerate)
                    except PeerProtocolError as exc:
                        item = exc
                now = clock.seconds()
                try:
                    outputs = self.handle(item, now, received_at)
                except Exception:
                    # Our bug, not the peer's: log it, drop this connection, keep the process serving.
                    self.log.failure("unhandled error handling a message from {peer}", Failure(), peer=self.peer)
                    outputs = _INTERNAL_ERROR
                executor.run(outputs, now, reply_outbox)
                if outbox.closing:
                    break
        finally:
            executor.end()

    def run(self, outputs) -> None:
        """Execute outputs produced outside ``dataReceived`` (timers, shutdown) on this connection."""
        self.executor.run(outputs, self.clock.seconds(), self.outbox)

    def send(self, message: Message) -> None:
        """Write one message now (role-initiated traffic, e.g. the MUX's deliveries)."""
        self.executor.send(self.outbox, message)

    def handle(self, item: Message | PeerProtocolError, now: float, received_at: float) -> list[Output]:
        raise NotImplementedError
