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
from ..wire.ecmg_scs import CWProvisionReader
from ._stream import ServerFactory, SimulCryptStreamProtocol
from .executor import OutputExecutor
from .guard import ConnectionGuard

_CHANNEL_OPEN = ServerChannelState.CHANNEL_OPEN  # read every turn (Enum.MEMBER is slow on Python 3.11)
#: CW_provisions a connection may send that its reader fails to learn from (invalid ones) before it
#: stops trying: each try decodes the message once more
MAX_FAILED_LEARNS = 64
_CW_PROVISION = b"\x02\x01"  # message_type 0x0201 on the wire


class ECMGProtocol(SimulCryptStreamProtocol):
    interface = Interface.ECMG_SCS
    write_through = True  # an SCS waits for each ECM_response

    def __init__(self, factory: "ECMGFactory") -> None:
        super().__init__(factory.executor, factory.max_message_length, factory.guard)
        self.machine = ECMGConnection(factory.resources, factory.source)
        self._receive = self.machine.receive
        self._cw_provision = self.machine.cw_provision
        self._cw_provision_fields = self.machine.cw_provision_fields
        #: CW_provisions by their layout (:meth:`quick`, the per-STKM path)
        self.reader = CWProvisionReader(limit=4, max_size=factory.max_message_length)
        self._learns_left = MAX_FAILED_LEARNS

    # -- the per-STKM path (issue #9) ----------------------------------------------------------------

    def quick(self, frame: bytes, received_at: float) -> bytes | list[Output] | None:
        """A whole frame that is a CW_provision laid out as one this channel sent before: read by
        its layout (:class:`~bcast_sp4.wire.ecmg_scs.CWProvisionReader`) and handed to the machine
        as fields, without the decoder or a message object. ``None`` for any other frame, or a
        CW_provision that is not for an open stream of this channel in its version: the shared
        path decodes and answers it. The first CW_provision of a layout on an open channel is
        decoded once more, to learn the layout (an invalid one is not learnt; after
        :data:`MAX_FAILED_LEARNS` of them the connection stops trying)."""
        fields = self.reader.read(frame)
        if fields is None:
            if not self._learns_left or self.machine.state is not _CHANNEL_OPEN or not self._learn(frame):
                return None
            fields = self.reader.read(frame)
        return self._provide(fields, received_at)

    def _learn(self, frame: bytes) -> bool:
        learnt = self.reader.learn(frame)
        if learnt is False:
            self._learns_left -= 1  # an invalid CW_provision (the shared path answers it)
        return bool(learnt)

    def _provide(self, fields: tuple, received_at: float) -> bytes | list[Output] | None:
        now = self.clock.seconds()
        outputs = self._cw_provision_fields(fields, now, received_at)
        if outputs is not None:
            meter = self.executor.meter
            if meter is not None:
                role, peer = self.executor.role, self.outbox.peer
                meter.cw_provision_received(role, peer, fields[1], fields[2], fields[3], received_at)
                if type(outputs) is bytes:
                    meter.ecm_response_sent(role, peer, fields[1], fields[2], fields[3], now)
        return outputs

    def dataReceived(self, data: bytes) -> None:
        """A read made only of whole CW_provisions of known layouts (one, or the few a paced SCS's
        read often holds, then at most the start of the next message), on a connection with
        nothing buffered or waiting for a later turn and within the guard's budget, is answered
        here: each CW_provision's fields go to the machine (:meth:`_provide`), the ECM_responses
        leave in one write, then the guard's :meth:`ConnectionWatch.turn_done`. That is what the
        shared path does with such a read, without the framer's copies, the decoder and the
        guard's :meth:`ConnectionWatch.receive`. A CW_provision the machine does not take as it
        stands (another channel, an unknown stream) hands it and the rest of the read to the
        shared path's :meth:`handle_frames`; the turn's time (``[limits] turn_time``) is kept as
        there. Everything else takes the shared path."""
        if type(data) is bytes and data[1:3] == _CW_PROVISION:
            watch, outbox = self.watch, self.outbox
            if (watch is not None and outbox.close is None and watch.takes_whole(len(data))
                    and self.framer.at_boundary()):
                found = self._provisions(data)
                if found is not None and watch.takes_whole(len(data), len(found[0])):
                    self._answer_all(found[0], found[1], watch, outbox)
                    return
        super().dataReceived(data)

    def _provisions(self, data: bytes) -> tuple[list[tuple[bytes, tuple]], bytes] | None:
        """``([(frame, fields)], tail)`` when *data* is whole CW_provisions of known layouts, then
        at most the start of one more message (*tail*, which the framer keeps: within the
        connection's max_message_length as far as its header says), else ``None``. A layout's
        size, header and parameter lengths make a frame it reads one whole message."""
        read = self.reader.read
        fields = read(data)
        if fields is not None:  # the usual read: one CW_provision
            return [(data, fields)], b""
        items = []
        pos, end = 0, len(data)
        while end - pos >= 5:
            size = 5 + (data[pos + 3] << 8 | data[pos + 4])
            if end - pos < size:  # the start of the next message
                if size > self.framer.max_length:
                    return None  # the framer reports it: the shared path's
                break
            frame = data[pos:pos + size]  # the read itself when it is one message
            fields = read(frame)
            if fields is None:
                return None
            items.append((frame, fields))
            pos += size
        return (items, data[pos:]) if items else None

    def _answer_all(self, items: list[tuple[bytes, tuple]], tail: bytes, watch, outbox) -> None:
        """Answer the CW_provisions of one read (:meth:`dataReceived`), replies in one write; the
        framer keeps *tail*, the start of the next message."""
        executor, clock = self.executor, self.clock
        if tail:
            self.framer.feed(tail)  # an unfinished message: buffered, nothing returned
        received_at = clock.seconds()
        deadline = received_at + watch.turn_time
        handled, count = 0, len(items)
        executor.begin()
        try:
            for _frame, fields in items:
                outputs = self._provide(fields, received_at)
                if outputs is None:  # the shared path answers this one and the rest, in this turn
                    watch.deadline = deadline
                    handled += self.handle_frames([frame for frame, _ in items[handled:]], received_at)
                    break
                if type(outputs) is bytes:
                    executor.send_encoded(outbox, outputs)
                else:
                    executor.run(outputs, clock.seconds(), self.reply_outbox)
                handled += 1
                if outbox.close is not None:  # closing: nothing more is handled on this connection
                    self._closing_watch()
                    handled = count
                    break
                if handled < count and clock.seconds() > deadline:
                    break  # the turn's time is up: the guard keeps the rest for the next turn
        finally:
            executor.end()
        if handled < count:
            watch.put_back([frame for frame, _ in items], handled, received_at)
        watch.turn_done(handled > 0)  # counts what waits (the rest, the tail), times it, re-arms the timeouts

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
