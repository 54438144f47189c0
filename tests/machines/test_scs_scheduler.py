"""The SCS crypto-period scheduler, clock-driven, linked in memory to the project's ECMG machine.

Time is a :class:`twisted.internet.task.Clock`; messages cross an in-memory link (encoded and
decoded, with a configurable one-way latency and ECMG computation time); the ECMG is the real
:class:`ECMGConnection` with a fake ECM source whose "STKM" carries the CWs in clear, so every
test can check which TEK an STKM holds.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from bcast_sp4 import wire
from bcast_sp4.bcast import cw_encryption, traffic
from bcast_sp4.bcast.ecm_request import CasMode, ECMGenerationError
from bcast_sp4.machines.ecmg import ChannelParameters, ECMGConfig, ECMGConnection, ECMGResources
from bcast_sp4.machines.outputs import CancelTimer, Notify, Send, StartTimer
from bcast_sp4.machines.scs_core import SCSCore
from bcast_sp4.machines.scs_records import (
    ChannelOutput,
    ChannelSpec,
    CWEncryptionSpec,
    LinkSpec,
    ProvideTEK,
    ServiceSpec,
    SubmitSTKM,
    SwitchTEK,
    Timing,
)
from bcast_sp4.machines.scs_scheduler import POLL_SLACK, PeriodState, PeriodTimer, ServiceScheduler, TEKSwitchTimer
from bcast_sp4.wire import ecmg_scs as m

DRM, CARD = 0x00010001, 0x00020001
CW_KEY = bytes(range(16))
SRTP = traffic.TrafficProtection.SRTP


class FakeSource:
    """An ECM source whose ECM is ``CP_number || every (CP, CW)`` in clear; can refuse or stall."""

    def __init__(self, cw_keys=None) -> None:
        self.refuse: dict[int, int] = {}  # CP_number -> error_status, once
        self.cw_keys = cw_keys or {}
        self.requests: list = []

    def check_stream(self, super_cas_id, ecm_id, now) -> None:
        pass

    def generate(self, request) -> bytes:
        self.requests.append(request)
        code = self.refuse.pop(request.CP_number, None)
        if code is not None:
            raise ECMGenerationError(code, "refused by the test")
        cws = [(c.CP_number, c.CW) for c in request.CP_CW_combination]
        if request.CW_encryption is not None:
            plain = cw_encryption.decrypt(request.CW_encryption, self.cw_keys, cws)
            cws = list(zip((cp for cp, _ in cws), plain))
        body = b"".join(cp.to_bytes(2, "big") + len(cw).to_bytes(1, "big") + cw for cp, cw in cws)
        return request.CP_number.to_bytes(2, "big") + body


def stkm_cws(stkm: bytes) -> dict[int, bytes]:
    pos, out = 2, {}
    while pos < len(stkm):
        cp, size = int.from_bytes(stkm[pos : pos + 2], "big"), stkm[pos + 2]
        out[cp] = stkm[pos + 3 : pos + 3 + size]
        pos += 3 + size
    return out


class Linked:
    """An SCSCore and one ECMG machine per channel, joined by an in-memory link on a Clock."""

    def __init__(self, services, channels, timing=Timing(channel_test_interval=0), ecmg_params=None,
                 latency=0.001, comp_time=0.002, start=1000.0, cw_keys=None) -> None:
        self.clock = Clock()
        self.clock.advance(start)
        self.core = SCSCore(channels, services, timing)
        self.latency, self.comp_time = latency, comp_time
        self.sources, self.ecmgs, self.connected = {}, {}, set()
        self.ecmg_params = ecmg_params or {}
        self.timers = {}
        self.sent: list[tuple[float, str, wire.Message]] = []
        self.tek: list[ProvideTEK] = []
        self.switches: list[tuple[float, SwitchTEK]] = []
        self.stkm: list[tuple[float, SubmitSTKM]] = []
        self.notes: list[Notify] = []
        self.closed: list[tuple[str, str]] = []
        self.drop_responses: set[int] = set()  # CP_numbers whose ECM_response is lost once
        self.stalled = False  # the ECMG answers nothing
        for spec in channels:
            params = self.ecmg_params.get(spec.name, ChannelParameters())
            config = ECMGConfig(cas_modes={spec.super_CAS_id: CasMode.DRM_PROFILE}, channel=params,
                                max_invalid_messages=0)
            self.sources[spec.name] = FakeSource(cw_keys)
            self.ecmgs[spec.name] = (ECMGResources(config), config)
        self.run(self.core.start(self.now))

    @property
    def now(self) -> float:
        return self.clock.seconds()

    def connect(self, name: str) -> None:
        resources, _ = self.ecmgs[name]
        self.machine_for = getattr(self, "machine_for", {})
        self.machine_for[name] = ECMGConnection(resources, self.sources[name])
        self.connected.add(name)
        self.run(self.core.connection_made(name, self.now))

    def disconnect(self, name: str) -> None:
        self.connected.discard(name)
        self.machine_for[name].connection_lost()
        self.run(self.core.connection_lost(name, self.now))

    def run(self, outputs) -> None:
        for output in outputs:
            kind = type(output)
            if kind is ChannelOutput:
                if type(output.output) is Send:
                    self.sent.append((self.now, output.channel, output.output.message))
                    data = output.output.message.encode()
                    self.clock.callLater(self.latency, self._to_ecmg, output.channel, data)
                else:
                    self.closed.append((output.channel, output.output.reason))
                    if output.channel in self.connected:
                        self.clock.callLater(0, self.disconnect, output.channel)
            elif kind is StartTimer:
                old = self.timers.pop(output.key, None)
                if old is not None and old.active():
                    old.cancel()
                self.timers[output.key] = self.clock.callLater(output.seconds, self._fire, output.key)
            elif kind is CancelTimer:
                old = self.timers.pop(output.key, None)
                if old is not None and old.active():
                    old.cancel()
            elif kind is ProvideTEK:
                self.tek.append(output)
            elif kind is SwitchTEK:
                self.switches.append((self.now, output))
            elif kind is SubmitSTKM:
                self.stkm.append((self.now, output))
            elif kind is Notify:
                self.notes.append(output)
            else:
                raise AssertionError(f"unexpected output {output!r}")

    def _fire(self, key) -> None:
        self.timers.pop(key, None)
        self.run(self.core.timer(key, self.now))

    def _to_ecmg(self, name: str, data: bytes) -> None:
        if name not in self.connected or self.stalled:
            return
        message = wire.decode(data, wire.Interface.ECMG_SCS)
        for output in self.machine_for[name].receive(message, self.now):
            if type(output) is Send:
                reply = output.message
                if isinstance(reply, m.ECMResponse) and reply.CP_number in self.drop_responses:
                    self.drop_responses.discard(reply.CP_number)
                    continue
                delay = self.latency + (self.comp_time if isinstance(reply, (m.ECMResponse, m.StreamError)) else 0)
                self.clock.callLater(delay, self._to_scs, name, reply.encode())

    def _to_scs(self, name: str, data: bytes) -> None:
        if name in self.connected:
            self.run(self.core.receive(name, wire.decode(data, wire.Interface.ECMG_SCS), self.now))

    def advance_to(self, t: float, step: float = 0.001) -> None:
        while self.now < t - 1e-12:
            self.clock.advance(min(step, t - self.now))

    def provisions(self, channel=None) -> list[tuple[float, m.CWProvision]]:
        return [(t, msg) for t, ch, msg in self.sent if isinstance(msg, m.CWProvision) and channel in (None, ch)]

    def events(self, name: str) -> list[Notify]:
        return [n for n in self.notes if n.event == name]


def service(name="svc", links=None, period=10, phase=0.0, protection=SRTP, **kw) -> ServiceSpec:
    links = links or (LinkSpec(channel="a", super_CAS_id=DRM, ECM_stream_id=1, ECM_id=1),)
    return ServiceSpec(name=name, crypto_period=period, protection=protection, links=tuple(links), phase=phase, **kw)


def channel(name="a", scid=DRM, channel_id=1, version=3) -> ChannelSpec:
    return ChannelSpec(name=name, endpoint="tcp:host=127.0.0.1:port=1", backup_endpoint=None, super_CAS_id=scid,
                       ECM_channel_id=channel_id, protocol_version=version)


# -- CW_provision timing for several lead_CW / CW_per_msg / delay_start settings ----------------


@pytest.mark.parametrize(
    ("lead_cw", "cw_per_msg", "delay_start", "lead"),
    [(1, 2, -200, None), (0, 1, 0, None), (0, 2, 300, 0.3), (2, 3, -500, 0.2), (1, 3, -100, None)],
)
def test_cw_provision_timing_and_window(lead_cw, cw_per_msg, delay_start, lead):
    D = 1.0
    params = ChannelParameters(lead_CW=lead_cw, CW_per_msg=cw_per_msg, delay_start=delay_start, max_comp_time=100,
                               transition_delay_start=None)
    link = Linked([service(period=10)], [channel()], ecmg_params={"a": params},
                  timing=Timing(channel_test_interval=0, provision_lead=lead))
    link.connect("a")
    link.advance_to(1010.0)
    scheduler = link.core.services["svc"]
    first = scheduler.first_period
    provisions = link.provisions()
    assert len(provisions) >= 7
    used = {t.cp_number: t.material for t in link.tek}
    expected_lead = max(lead if lead is not None else D / 2, 0.1 + 0.05)
    for sent_at, msg in provisions:
        n = next(n for n in range(first, first + 20) if n & 0xFFFF == msg.CP_number)
        T = scheduler.period_start(n)
        # sent at min(T, T + delay_start) - lead (to the 1 ms step of the test clock)
        # (or as soon as the stream is up, for a first period that is already due)
        due = max(min(T, T + delay_start / 1000) - expected_lead, provisions[0][0])
        assert sent_at == pytest.approx(due, abs=0.0021)
        # carrying exactly the window the ECMG announced, oldest first
        first_cp = n - (cw_per_msg - 1 - lead_cw)
        assert [c.CP_number for c in msg.CP_CW_combination] == [(first_cp + k) & 0xFFFF for k in range(cw_per_msg)]
        for c in msg.CP_CW_combination:  # the same TEK for the same period in every message
            if c.CP_number in used:
                assert c.CW == traffic.encode_cw(used[c.CP_number])
    # every period switched exactly at T(n), its STKM on air at T(n) + delay_start, none late
    assert not link.events("period_skipped") and not link.events("stkm_late")
    for tek in link.tek:
        n = next(n for n in range(first, first + 20) if n & 0xFFFF == tek.cp_number)
        assert tek.at == scheduler.period_start(n)
    for received, sub in link.stkm:
        n = next(n for n in range(first, first + 20) if n & 0xFFFF == sub.cp_number)
        assert sub.on_air_from == pytest.approx(scheduler.period_start(n) + delay_start / 1000)
        assert received <= sub.on_air_from and sub.repetition_ms == params.ECM_rep_period
        assert stkm_cws(sub.stkm)[sub.cp_number] == traffic.encode_cw(used[sub.cp_number])


def test_first_period_and_period_boundaries():
    link = Linked([service(period=10, phase=0.25)], [channel()], start=1000.1)
    scheduler = link.core.services["svc"]
    # the first scrambled period leaves start_allowance + lead for connecting and setting up
    first = scheduler.first_period
    assert scheduler.period_start(first) - 0.5 >= 1000.1 + 0.5
    assert scheduler.period_start(first) == pytest.approx(0.25 + first)
    assert scheduler.period_at(scheduler.period_start(first)) == first
    assert scheduler.period_at(scheduler.period_start(first) - 1e-6) == first - 1
    link.connect("a")
    link.advance_to(1006.0)
    starts = [t.at for t in link.tek]
    assert starts == [scheduler.period_start(n) for n in range(first, first + len(starts))]
    assert all(b - a == pytest.approx(1.0) for a, b in zip(starts, starts[1:]))
    states = {n: p.state for n, p in scheduler.periods.items()}
    current = scheduler.period_at(link.now)
    assert states[current] is PeriodState.ON_AIR and states[current + 1] is PeriodState.READY
    assert {t.cp_number for t in link.tek} == {n & 0xFFFF for n in range(first, first + len(starts))}


def test_tek_switch_is_a_scheduler_timer_at_t_n():
    link = Linked([service(period=10, phase=0.3)], [channel()])
    link.connect("a")
    scheduler = link.core.services["svc"]
    first = scheduler.first_period
    link.advance_to(scheduler.period_start(first) - 0.01)
    # READY, TEK handed over ahead of T(n), switch timer armed under a named key
    assert scheduler.periods[first].state is PeriodState.READY and link.tek[0].cp_number == first & 0xFFFF
    assert TEKSwitchTimer("svc", first) in link.timers and not link.switches
    link.advance_to(1008.0)
    provided = {t.cp_number: t.at for t in link.tek}
    switched = [(when, s.cp_number, s.at) for when, s in link.switches]
    assert len(switched) >= 5 and [cp for _, cp, _ in switched] == [t.cp_number for t in link.tek][:len(switched)]
    for when, cp, at in switched:  # at T(n), the instant ProvideTEK announced (to the 1 ms step of the clock)
        assert at == provided[cp] and at <= when < at + 0.0011
    assert all(p.state is not PeriodState.READY for n, p in scheduler.periods.items() if p.start <= link.now)
    # stopping disarms the pending switch timers with the poll timer
    ready = [n for n, p in scheduler.periods.items() if p.state is PeriodState.READY]
    out = link.core.stop(link.now)
    assert ready and {CancelTimer(TEKSwitchTimer("svc", n)) for n in ready} | {CancelTimer(scheduler.timer_key)} <= set(out)


def test_a_switch_due_with_another_service_s_poll_runs_first():
    """b provisions at T_b(n) - 0.2 - 0.5 s: the very instant a switches; the poll waits POLL_SLACK."""
    b_link = LinkSpec(channel="a", super_CAS_id=DRM, ECM_stream_id=2, ECM_id=2)
    link = Linked([service("a"), service("b", links=(b_link,), phase=0.7)], [channel()])
    fired = []
    fire = link._fire

    def recording_fire(key):
        fired.append((link.now, type(key), key.service))
        fire(key)

    link._fire = recording_fire
    link.connect("a")
    link.advance_to(1008.0)
    together = [(x, y) for x, y in zip(fired, fired[1:]) if x[0] == y[0] and {x[2], y[2]} == {"a", "b"}]
    assert len(together) >= 4
    assert all((x[1], x[2], y[1], y[2]) == (TEKSwitchTimer, "a", PeriodTimer, "b") for x, y in together)
    # the poll is armed POLL_SLACK after the instant it is due (here: the first period's start)
    scheduler = ServiceScheduler(service("c"), Timing())
    (timer,) = [o for o in scheduler.start(1000.0) if type(o) is StartTimer]
    assert timer.key == PeriodTimer("c") and POLL_SLACK > 0
    assert 1000.0 + timer.seconds == pytest.approx(scheduler.period_start(scheduler.first_period) + POLL_SLACK, abs=1e-9)


def test_core_rejects_a_foreign_timer_key():
    link = Linked([service()], [channel()])
    with pytest.raises(ValueError, match="not an SCS timer key"):
        link.core.timer(("service", "svc"), link.now)


def test_cp_number_wraps_modulo_65536():
    link = Linked([service(period=10)], [channel()], start=65533.2)
    link.connect("a")
    link.advance_to(65540.0)
    numbers = [t.cp_number for t in link.tek]
    assert 65535 in numbers and 0 in numbers and numbers == sorted(numbers, key=lambda x: (x < 100, x))
    assert not link.events("period_skipped")


def test_all_ecmgs_of_a_service_get_the_same_tek():
    links = (LinkSpec(channel="a", super_CAS_id=DRM, ECM_stream_id=1, ECM_id=1),
             LinkSpec(channel="b", super_CAS_id=CARD, ECM_stream_id=1, ECM_id=1))
    link = Linked([service(links=links)], [channel("a"), channel("b", CARD)],
                  ecmg_params={"a": ChannelParameters(transition_delay_start=None),
                               "b": ChannelParameters(lead_CW=0, CW_per_msg=1, delay_start=-400,
                                                     transition_delay_start=None)})
    link.connect("a")
    link.connect("b")
    link.advance_to(1008.0)
    by_cp = {}
    for _, sub in link.stkm:
        by_cp.setdefault(sub.cp_number, {})[sub.super_cas_id] = stkm_cws(sub.stkm)[sub.cp_number]
    assert len(by_cp) >= 5
    teks = {t.cp_number: traffic.encode_cw(t.material) for t in link.tek}
    for cp, cws in by_cp.items():
        assert cws[DRM] == cws[CARD] == teks[cp]
    # each ECMG's STKM goes on air by its own delay_start
    for _, sub in link.stkm:
        tek = next(t for t in link.tek if t.cp_number == sub.cp_number)
        assert sub.on_air_from - tek.at == pytest.approx(-0.4 if sub.super_cas_id == CARD else -0.2)


def test_transition_delay_start_for_the_first_period_only():
    params = ChannelParameters(delay_start=-200, transition_delay_start=-600)
    link = Linked([service()], [channel()], ecmg_params={"a": params})
    link.connect("a")
    link.advance_to(1006.0)
    offsets = [round(sub.on_air_from - next(t.at for t in link.tek if t.cp_number == sub.cp_number), 3)
               for _, sub in link.stkm]
    assert offsets[0] == -0.6 and set(offsets[1:]) == {-0.2}


# -- late and missing ECM_responses -----------------------------------------------------------


def test_lost_ecm_response_is_retried_after_the_timeout():
    link = Linked([service()], [channel()])
    link.connect("a")
    link.advance_to(1003.0)
    scheduler = link.core.services["svc"]
    target = scheduler.period_at(link.now) + 2
    link.drop_responses.add(target & 0xFFFF)
    link.advance_to(1008.0)
    sends = [t for t, msg in link.provisions() if msg.CP_number == target & 0xFFFF]
    assert len(sends) == 2 and sends[1] - sends[0] == pytest.approx(0.25, abs=0.002)  # max(2 x 100 ms, 250 ms)
    assert scheduler.stats.timeouts == 1 and scheduler.stats.retries == 1
    assert not link.events("period_skipped") and len(link.events("stkm_timeout")) == 1
    assert target & 0xFFFF in {t.cp_number for t in link.tek}


def test_late_ecm_response_is_submitted_late_and_counted():
    link = Linked([service()], [channel()], timing=Timing(channel_test_interval=0, provision_lead=0.25,
                                                          response_timeout_floor=0.5), comp_time=0.05)
    link.connect("a")
    link.advance_to(1004.0)
    link.comp_time = 0.1  # provision_at = T - 0.2 - 0.25; answer after ~0.102 s: still early
    link.advance_to(1006.0)
    assert not link.events("stkm_late")
    link.comp_time = 0.3  # now the STKM arrives ~0.05 s after T(n) + delay_start, before T(n)
    link.advance_to(1009.0)
    scheduler = link.core.services["svc"]
    late = link.events("stkm_late")
    assert late and scheduler.stats.stkms_late == len(late)
    for note in late:
        assert note.fields["late_by_ms"] == pytest.approx(52, abs=3)
        assert all(" ECM_id 0x" in name for name in note.fields["links"])
    assert not link.events("period_skipped")  # late for air, but in time for the switch


def test_missing_stkm_keeps_the_last_good_period():
    link = Linked([service()], [channel()])
    link.connect("a")
    link.advance_to(1003.5)
    scheduler = link.core.services["svc"]
    victim = scheduler.period_at(link.now) + 2
    for cp in range(victim, victim + 1):
        link.sources["a"].refuse[cp & 0xFFFF] = 0x000D
    # refuse every attempt for the victim period
    original = link.sources["a"].generate

    def refusing(request):
        if request.CP_number == victim & 0xFFFF:
            raise ECMGenerationError(0x000D, "out of compute")
        return original(request)

    link.sources["a"].generate = refusing
    link.advance_to(1008.0)
    skipped = link.events("period_skipped")
    assert [n.fields["cp_number"] for n in skipped] == [victim & 0xFFFF]
    spec = scheduler.links[0].spec  # links named by ECMG channel and ECM_id (#12), not by list index
    assert skipped[0].fields["missing_links"] == [f"{spec.channel} ECM_id {spec.ECM_id:#06x}"]
    assert scheduler.stats.periods_skipped == 1 and scheduler.stats.refusals == 3  # max_attempts
    assert victim & 0xFFFF not in {t.cp_number for t in link.tek}
    assert victim & 0xFFFF not in {s.cp_number for _, s in link.switches}  # nor switched to
    assert victim & 0xFFFF not in {s.cp_number for _, s in link.stkm}  # never aired
    assert {victim - 1, victim + 1} <= {n for n in range(victim - 3, victim + 4) if n & 0xFFFF in {t.cp_number for t in link.tek}}
    sends = [t for t, msg in link.provisions() if msg.CP_number == victim & 0xFFFF]
    assert len(sends) == 3 and all(b - a == pytest.approx(0.05 + 0.004, abs=0.003) for a, b in zip(sends, sends[1:]))


def test_stream_error_with_bcast_code_is_retried_and_logged():
    link = Linked([service()], [channel()])
    link.connect("a")
    link.advance_to(1003.0)
    scheduler = link.core.services["svc"]
    target = scheduler.period_at(link.now) + 2
    link.sources["a"].refuse[target & 0xFFFF] = 0xFF01
    link.advance_to(1007.0)
    refused = link.events("stkm_refused")
    assert [(n.fields["cp_number"], n.fields["error_status"]) for n in refused] == [(target & 0xFFFF, 0xFF01)]
    assert target & 0xFFFF in {t.cp_number for t in link.tek}


def test_unresponsive_ecmg_skips_periods_then_recovers():
    link = Linked([service()], [channel()])
    link.connect("a")
    link.advance_to(1003.0)
    link.stalled = True
    link.advance_to(1005.0)
    scheduler = link.core.services["svc"]
    assert scheduler.stats.periods_skipped >= 1
    assert any(n.event == "stkm_abandoned" or n.event == "stkm_timeout" for n in link.notes)
    link.stalled = False
    link.advance_to(1005.001)  # the poll at T(n) = 1005 s (POLL_SLACK after it) counts the stall's last victim
    skipped = scheduler.stats.periods_skipped
    link.advance_to(1009.0)
    assert scheduler.stats.periods_skipped == skipped  # recovered
    # the scrambler's TEKs only ever move forward
    starts = [t.at for t in link.tek]
    assert starts == sorted(starts)


def test_reconnect_re_provisions_pending_periods():
    link = Linked([service()], [channel()])
    link.connect("a")
    link.advance_to(1003.3)
    scheduler = link.core.services["svc"]
    link.disconnect("a")
    link.advance_to(1003.6)
    link.connect("a")
    link.advance_to(1007.0)
    # channel and stream set up again on the new connection
    setups = [msg for _, _, msg in link.sent if isinstance(msg, m.StreamSetup)]
    assert len(setups) == 2
    assert scheduler.stats.periods_skipped <= 1
    current = scheduler.period_at(link.now)
    assert scheduler.periods[current].state is PeriodState.ON_AIR


def test_cw_encryption_on_the_link():
    spec = CWEncryptionSpec(algorithm=cw_encryption.CWAlgorithm.AES128_CBC, key_id=7, key=CW_KEY)
    links = (LinkSpec(channel="a", super_CAS_id=DRM, ECM_stream_id=1, ECM_id=1, cw_encryption=spec),)
    link = Linked([service(links=links)], [channel()], cw_keys={7: CW_KEY})
    link.connect("a")
    link.advance_to(1005.0)
    provisions = link.provisions()
    assert provisions and all(msg.CW_encryption[0] == 0x02 for _, msg in provisions)
    scheduler = link.core.services["svc"]
    for _, msg in provisions:  # the CWs on the wire are not the TEK layout
        assert all(c.CW[0:2] != b"\x01\x01" for c in msg.CP_CW_combination)
    for _, sub in link.stkm:  # but the ECMG recovered the TEKs
        tek = next(t for t in link.tek if t.cp_number == sub.cp_number)
        assert stkm_cws(sub.stkm)[sub.cp_number] == traffic.encode_cw(tek.material)
    assert scheduler.stats.periods_skipped == 0


def test_tek_material_per_protection_and_identifiers():
    for protection, params in ((traffic.TrafficProtection.SRTP, {"mki_length": 2}),
                               (traffic.TrafficProtection.ISMACRYP, {"key_indicator_length": 1}),
                               (traffic.TrafficProtection.IPSEC, {"authenticated": True})):
        link = Linked([service(protection=protection, tek_params=params)], [channel()])
        link.connect("a")
        link.advance_to(1006.0)
        materials = [t.material for t in link.tek]
        assert len(materials) >= 4 and all(type(x).PROTECTION is protection for x in materials)
        ids = [x.identifier for x in materials]
        assert len(set(ids)) == len(ids)
        keys = [traffic.key_material_plaintext(x) for x in materials]
        assert len(set(keys)) == len(keys)  # fresh material every period
        if protection is traffic.TrafficProtection.SRTP:
            assert all(len(x.mki) == 2 and x.mki == (t.cp_number).to_bytes(2, "big") for x, t in zip(materials, link.tek))
        if protection is traffic.TrafficProtection.IPSEC:
            assert all(x.authenticated and x.spi >= 256 for x in materials)
