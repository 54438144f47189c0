"""ECMG / STKM generator role: a TCP server of ECMG<=>SCS channels (TS 103 197 §5; SP-4 §14.1.1.3.1).

One :class:`ECMGProtocol` per SCS connection wraps one :class:`ECMGConnection` machine; the
:class:`ECMGFactory` holds what the connections share (:class:`ECMGResources`, the ECM source,
the role's output executor). Connection loss frees the channel, its streams and ECM_ids.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..bcast.ecm_request import ECMSource
from ..machines.channel import ServerChannelState
from ..machines.ecmg import ECMGConnection, ECMGResources
from ..machines.outputs import Output
from ..wire import Interface, Message, PeerProtocolError
from ..wire import ecmg_scs as m
from ._stream import ServerFactory, SimulCryptStreamProtocol
from .executor import OutputExecutor
from .guard import ConnectionGuard

_CHANNEL_OPEN = ServerChannelState.CHANNEL_OPEN  # read every turn (Enum.MEMBER is slow on Python 3.11)


class ECMGProtocol(SimulCryptStreamProtocol):
    interface = Interface.ECMG_SCS
    write_through = True  # an SCS waits for each ECM_response

    def __init__(self, factory: "ECMGFactory") -> None:
        super().__init__(factory.executor, factory.max_message_length, factory.guard)
        self.machine = ECMGConnection(factory.resources, factory.source)
        self._receive = self.machine.receive
        self._cw_provision = self.machine.cw_provision

    def handle(self, item: Message | PeerProtocolError, now: float, received_at: float) -> list[Output] | bytes:
        # the per-STKM hot path: the machine answers a CW_provision with the encoded ECM_response
        if type(item) is m.CWProvision:
            return self._cw_provision(item, now, received_at)
        return self._receive(item, now, received_at)

    def has_channel(self) -> bool:
        return self.machine.state is _CHANNEL_OPEN

    def channel_test(self) -> bool:
        machine = self.machine
        if machine.channel_id is None or machine.version is None:
            return False
        self.send(m.ChannelTest(protocol_version=machine.version, ECM_channel_id=machine.channel_id))
        return True

    def connectionLost(self, reason: Failure) -> None:
        self.outbox.lost()
        self.stop_watch()
        self.run(self.machine.connection_lost())
        self.log_connection("closed", "connection from {peer} closed")


class ECMGFactory(ServerFactory):
    """Builds one :class:`ECMGProtocol` per accepted SCS connection (the session, when given, is
    told of its channels and streams; see :class:`~._stream.ServerFactory` for the rest)."""

    log = Logger()
    protocol = ECMGProtocol
    role = "ecmg"

    def __init__(self, resources: ECMGResources, source: ECMSource, clock: IReactorTime, max_message_length: int,
                 session=None, listening_on: str | None = None, guard: ConnectionGuard | None = None,
                 meter=None) -> None:
        super().__init__(session, listening_on, guard)
        self.resources = resources
        self.source = source
        self.clock = clock
        self.max_message_length = max_message_length
        self.executor = OutputExecutor(clock, ECMGProtocol.log, "ecmg", session=session,
                                       limiter=guard.limiter if guard is not None else None, meter=meter)
