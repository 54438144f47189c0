"""The TCP adapter shared by the SimulCrypt roles: bytes -> framer -> codec -> machine -> outputs.

A protocol here does nothing but translate: it feeds received bytes to the :class:`Framer`,
decoded messages (or the codec's errors) to its machine, and executes the machine's outputs —
:class:`Send` becomes one coalesced ``transport.write`` per received chunk, :class:`Close` a
``loseConnection`` after those writes, :class:`Notify` a structured log event. Logs carry ids,
codes and message names, never parameter values (so never key material).
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..machines.outputs import Close, Notify, Output, Send
from ..wire import Framer, Interface, Message, PeerProtocolError, decode

class SimulCryptStreamProtocol(Protocol):
    """Base of the TCP roles. Subclasses set :attr:`interface` and implement :meth:`handle`."""

    log = Logger()
    interface: Interface
    #: :class:`~bcast_sp4.wire.Deviation` members this connection's decoder accepts (none: strict)
    tolerate: frozenset = frozenset()

    def __init__(self, clock: IReactorTime, max_message_length: int) -> None:
        self.clock = clock
        self.framer = Framer(max_length=max_message_length, interface=self.interface)
        self.peer = "?"
        self._closing = False

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.log.info("connection from {peer}", peer=self.peer)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        received_at = self.clock.seconds()
        out: list[bytes] = []
        close_reason = None
        for item in self.framer.feed(data):
            if not isinstance(item, PeerProtocolError):
                try:
                    item = decode(item, self.interface, tolerate=self.tolerate)
                except PeerProtocolError as exc:
                    item = exc
            try:
                outputs = self.handle(item, self.clock.seconds(), received_at)
            except Exception:
                # Our bug, not the peer's: log it, drop this connection, keep the process serving.
                self.log.failure("unhandled error handling a message from {peer}", Failure(), peer=self.peer)
                outputs = [Close("internal error", "warn")]
            close_reason = self._execute(outputs, out)
            if close_reason is not None:
                break
        if out:
            self.transport.write(b"".join(out))
        if close_reason is not None:
            self._closing = True
            emit = self.log.info if close_reason.level == "info" else self.log.warn
            emit("closing connection with {peer}: {reason}", peer=self.peer, reason=close_reason.reason)
            self.transport.loseConnection()

    def _execute(self, outputs: Iterable[Output], out: list[bytes]) -> Close | None:
        for output in outputs:
            if type(output) is Send:
                out.append(output.message.encode())
            elif type(output) is Notify:
                self._log_event(output)
            elif type(output) is Close:
                return output
        return None

    @property
    def session(self):
        """The process's :class:`~bcast_sp4.session.SessionManager`, when the factory has one."""
        return getattr(getattr(self, "factory", None), "session", None)

    def _log_event(self, event: Notify) -> None:
        session = self.session
        if session is not None:
            session.observe(self.interface.value + ":" + type(self).__name__, self.peer, event.event, event.fields)
        fields = dict(event.fields)
        text = "{peer} {event} " + " ".join(f"{k}={{{k}}}" for k in fields)
        emit = {"debug": self.log.debug, "warn": self.log.warn}.get(event.level, self.log.info)
        emit(text, peer=self.peer, event=event.event, **fields)

    def send(self, message: Message) -> None:
        """Write one message now (for role-initiated traffic such as tests)."""
        self.transport.write(message.encode())

    def handle(self, item: Message | PeerProtocolError, now: float, received_at: float) -> list[Output]:
        raise NotImplementedError
