"""EMMG session and MUX machines linked in memory through the real codec (h11's ConnectionPair idea).

Time is simulated; every message is encoded and decoded on its way, UDP data_provision through
``decode_datagram``. Checks the whole flow over TCP and over UDP, a reconnection in the middle of a
stream (nothing queued is lost), and that both machines agree on pacing.
"""

from __future__ import annotations

from collections import deque

import pytest

from bcast_sp4 import wire
from bcast_sp4.machines.emmg import Delivered, EMMGClient, EMMGConfig, EMMGStreamConfig, Ready, SendDatagram
from bcast_sp4.machines.mux import ClientConfig, Deliver, Emit, MuxConfig, MuxConnection, MuxCore, RouteConfig, RouteKind
from bcast_sp4.machines.outputs import Close, Notify, Send
from tests.doubles import Timers

CLIENT, DATA_ID = 0x00010001, 0x0100


class Link:
    def __init__(self, udp: bool, kbit: int = 200, datagrams_per_message: int = 1):
        self.core = MuxCore(
            MuxConfig(
                clients={
                    CLIENT: ClientConfig(
                        client_id=CLIENT,
                        routes={DATA_ID: RouteConfig(kind=RouteKind.LTKM, data_id=DATA_ID, destination=("127.0.0.1", 4359))},
                    )
                },
                overrun_limit=1,
            )
        )
        self.emmg = EMMGClient(
            EMMGConfig(
                client_id=CLIENT,
                streams=(EMMGStreamConfig(data_stream_id=1, data_id=DATA_ID, bandwidth=kbit, max_queue=100_000),),
                udp=udp,
                datagrams_per_message=datagrams_per_message,
            )
        )
        self.now = 0.0
        self.timers = Timers()
        self.air: list[tuple[float, bytes]] = []
        self.delivered: list = []
        self.mux_replies: list = []
        self.ready = 0
        self.conn: MuxConnection | None = None
        self.pending: deque = deque()

    # -- plumbing --------------------------------------------------------------------------

    def connect(self):
        self.conn = MuxConnection(self.core)
        self.pending.append(("emmg", self.emmg.connection_made(self.now)))
        self.flush()

    def disconnect(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pending.append(("mux", conn.connection_lost(self.now)))
            self.pending.append(("emmg", self.emmg.connection_lost(self.now)))
            self.flush()

    def flush(self):
        while self.pending:
            side, outputs = self.pending.popleft()
            for o in outputs:
                if side == "emmg":
                    self._from_emmg(o)
                else:
                    self._from_mux(o)

    def _from_emmg(self, o):
        if isinstance(o, Send):
            if self.conn is not None:
                message = wire.decode(o.message.encode(), wire.Interface.EMMG_MUX)
                self.pending.append(("mux", self.conn.receive(message, self.now)))
        elif isinstance(o, SendDatagram):
            try:
                item = wire.decode_datagram(o.message.encode())
            except wire.PeerProtocolError as exc:
                item = exc
            self.pending.append(("mux", self.core.receive_udp(item, self.now)))
            self.delivered += [t for t in o.tokens if t is not None]
        elif isinstance(o, Delivered):
            self.delivered += list(o.tokens)
        elif self.timers.apply(o, self.now):
            pass
        elif isinstance(o, Ready):
            self.ready += 1
        elif isinstance(o, Close):
            self.disconnect()

    def _from_mux(self, o):
        if isinstance(o, (Send, Deliver)):
            self.mux_replies.append(o.message)
            if self.conn is not None:
                message = wire.decode(o.message.encode(), wire.Interface.EMMG_MUX)
                self.pending.append(("emmg", self.emmg.receive(message, self.now)))
        elif isinstance(o, Emit):
            self.air.append((self.now, o.payload))
        elif isinstance(o, Close):
            self.disconnect()
        else:
            assert isinstance(o, Notify)

    def run_until(self, end: float, tick_lateness: float = 0.0):
        while True:
            self.pending.append(("mux", self.core.tick(self.now)))
            self.flush()
            candidates = [at for at in (self.timers.next_at(), self.core.next_wakeup(self.now)) if at is not None]
            if not candidates or min(candidates) > end:
                self.now = end
                self.pending.append(("mux", self.core.tick(self.now)))
                self.flush()
                return
            self.now = max(self.now, min(candidates)) + tick_lateness
            for key in self.timers.fire(self.now):
                self.pending.append(("emmg", self.emmg.timer_fired(key, self.now)))
            self.flush()

    def enqueue(self, ltkms):
        for k, ltkm in enumerate(ltkms):
            assert self.emmg.enqueue(DATA_ID, ltkm, token=k)
        self.pending.append(("emmg", self.emmg.poke(self.now)))
        self.flush()


def ltkms(n, size=300):
    return [k.to_bytes(4, "big") * (size // 4) for k in range(n)]


@pytest.mark.parametrize("udp", [False, True], ids=["tcp", "udp"])
def test_every_ltkm_goes_on_air_byte_identical_in_order(udp):
    link = Link(udp=udp, kbit=200)
    link.connect()
    assert link.ready == 1
    sent = ltkms(400)  # 120000 bytes at 25000 bytes/s: 4.8 s
    link.enqueue(sent)
    link.run_until(6.0, tick_lateness=0.0005)
    assert [p for _t, p in link.air] == sent
    assert link.delivered == list(range(400))
    assert link.core.dropped == {} and link.core.counters["overruns"] == 0
    assert not [r for r in link.mux_replies if hasattr(r, "error_status")]
    air_rate = sum(len(p) for t, p in link.air if 1.0 <= t < 4.0) / 3.0
    assert abs(air_rate - 25_000) / 25_000 < 0.02


def test_reconnection_in_the_middle_loses_nothing():
    link = Link(udp=False, kbit=100)
    link.connect()
    sent = ltkms(200)  # 60000 bytes at 12500 bytes/s
    link.enqueue(sent)
    link.run_until(1.5)
    before = len(link.air)
    assert 0 < before < 200
    link.disconnect()
    link.run_until(3.0)
    assert len(link.air) == before  # nothing while disconnected
    link.connect()
    assert link.ready == 2
    link.run_until(10.0)
    assert [p for _t, p in link.air] == sent
    assert link.core.dropped == {}


def test_several_datagrams_per_message_over_udp():
    link = Link(udp=True, kbit=400, datagrams_per_message=5)
    link.connect()
    sent = ltkms(100, size=1000)
    link.enqueue(sent)
    link.run_until(5.0)
    assert [p for _t, p in link.air] == sent and link.core.counters["data_provisions"] == 20
