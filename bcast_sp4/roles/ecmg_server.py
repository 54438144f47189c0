"""ECMG / STKM generator role: a TCP server of ECMG<=>SCS channels (TS 103 197 §5; SP-4 §14.1.1.3.1).

One :class:`ECMGProtocol` per SCS connection wraps one :class:`ECMGConnection` machine; the
:class:`ECMGFactory` holds what the connections share (:class:`ECMGResources`, the ECM source,
the role's output executor). Connection loss frees the channel, its streams and ECM_ids.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..bcast.ecm_request import ECMSource
from ..machines.ecmg import ECMGConnection, ECMGResources
from ..wire import Interface
from ._stream import SimulCryptStreamProtocol
from .executor import OutputExecutor


class ECMGProtocol(SimulCryptStreamProtocol):
    interface = Interface.ECMG_SCS

    def __init__(self, factory: "ECMGFactory") -> None:
        super().__init__(factory.executor, factory.max_message_length)
        self.machine = ECMGConnection(factory.resources, factory.source)
        self.handle = self.machine.receive  # per message: one call less than a delegating method

    def connectionLost(self, reason: Failure) -> None:
        self.outbox.lost()
        self.run(self.machine.connection_lost())
        self.log.info("connection from {peer} closed", peer=self.peer)


class ECMGFactory(Factory):
    """Builds one :class:`ECMGProtocol` per accepted SCS connection.

    :param session: the process's :class:`~bcast_sp4.session.SessionManager` (told of channels
        and streams, and that the server listens), or ``None``.
    :param listening_on: the endpoint description the factory is listening on (for the session).
    """

    log = Logger()
    noisy = False

    def __init__(self, resources: ECMGResources, source: ECMSource, clock: IReactorTime, max_message_length: int,
                 session=None, listening_on: str | None = None) -> None:
        self.session = session
        self.listening_on = listening_on
        self.resources = resources
        self.source = source
        self.clock = clock
        self.max_message_length = max_message_length
        self.executor = OutputExecutor(clock, ECMGProtocol.log, "ecmg", session=session)

    def startFactory(self) -> None:
        """The server listens (Twisted calls this before the first connection is accepted)."""
        if self.session is not None and self.listening_on is not None:
            self.session.listening(self.listening_on, "ecmg")

    def buildProtocol(self, addr) -> ECMGProtocol:
        protocol = ECMGProtocol(self)
        protocol.factory = self
        return protocol
