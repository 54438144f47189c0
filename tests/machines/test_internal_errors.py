"""No unhandled path (issue #13 item 1): a failure injected into each source and callback.

Every exception escaping a machine's handler, an ECM source, a MUX route, an LTKM source or the
SCS's TEK source becomes the interface's error reply (0x7000, in a stream_error when the message
names a stream) and an ``internal_error`` event naming the exception's type and place (never its
message); the channel and the other streams keep working.
"""

from __future__ import annotations

import hashlib

import pytest

from bcast_sp4.bcast.ecm_request import CasMode
from bcast_sp4.machines.ecmg import ECMGConfig, ECMGConnection, ECMGResources
from bcast_sp4.machines.emmg import EMMGClient, EMMGConfig, EMMGState, EMMGStreamConfig
from bcast_sp4.machines.mux import ClientConfig, Emit, MuxConfig, MuxConnection, MuxCore, RouteConfig, RouteKind
from bcast_sp4.machines.outputs import Close
from bcast_sp4.machines.scs_records import LinkSpec
from bcast_sp4.machines.scs_scheduler import PeriodTimer
from bcast_sp4.wire import ecmg_scs as e
from bcast_sp4.wire import emmg_mux as m
from bcast_sp4.wire.params import CPCWCombination as CW
from tests.doubles import notices, one, sent

DRM = 0x00010001
SECRET = "00112233445566778899aabbccddeeff"  # an exception message that must never reach a log event


class FlakySource:
    """An ECM source that raises a bug-like exception for the ECM_ids in :attr:`broken`."""

    def __init__(self):
        self.broken: set[int] = set()
        self.check_broken: set[int] = set()

    def check_stream(self, super_cas_id, ecm_id, now):
        if ecm_id in self.check_broken:
            raise KeyError(SECRET)

    def generate(self, request):
        if request.ECM_id in self.broken:
            raise RuntimeError(SECRET)
        return hashlib.sha256(b"".join(c.CW for c in request.CP_CW_combination)).digest()


def no_secret(notes):
    for note in notes:
        assert SECRET not in repr(note.fields), note


def test_ecm_source_failures_answer_0x7000_on_that_stream_and_the_channel_goes_on():
    source = FlakySource()
    conn = ECMGConnection(ECMGResources(ECMGConfig(cas_modes={DRM: CasMode.DRM_PROFILE})), source)
    one(conn.receive(e.ChannelSetup(protocol_version=3, ECM_channel_id=1, Super_CAS_id=DRM), 0.0), e.ChannelStatus)
    for stream_id in (1, 2):
        one(conn.receive(e.StreamSetup(protocol_version=3, ECM_channel_id=1, ECM_stream_id=stream_id, ECM_id=stream_id,
                                       nominal_CP_duration=20), 0.0), e.StreamStatus)
    source.broken.add(1)
    for cp in range(1, 6):  # more than max_invalid_messages (3) failures: never a close
        for stream_id in (1, 2):
            out = conn.receive(e.CWProvision(protocol_version=3, ECM_channel_id=1, ECM_stream_id=stream_id, CP_number=cp,
                                             CP_CW_combination=(CW(cp, b"a" * 16), CW(cp + 1, b"b" * 16))), 0.0)
            assert not [o for o in out if isinstance(o, Close)]
            if stream_id == 1:
                error = one(out, e.StreamError)
                assert (error.ECM_stream_id, error.error_status) == (1, (0x7000,))
                (note,) = notices(out, "internal_error")
                assert note.fields["error"] == "RuntimeError" and "generate" in note.fields["at"]
                no_secret([note])
            else:
                assert one(out, e.ECMResponse).CP_number == cp
    # a failing stream check: stream_error 0x7000 for the new stream, the others unaffected
    source.check_broken.add(3)
    out = conn.receive(e.StreamSetup(protocol_version=3, ECM_channel_id=1, ECM_stream_id=3, ECM_id=3,
                                     nominal_CP_duration=20), 0.0)
    assert one(out, e.StreamError).error_status == (0x7000,)
    no_secret(notices(out))
    assert one(conn.receive(e.ChannelTest(protocol_version=3, ECM_channel_id=1), 0.0), e.ChannelStatus)


def test_a_channel_level_handler_failure_answers_channel_error_0x7000(monkeypatch):
    conn = ECMGConnection(ECMGResources(ECMGConfig(cas_modes={DRM: CasMode.DRM_PROFILE})), FlakySource())
    one(conn.receive(e.ChannelSetup(protocol_version=3, ECM_channel_id=7, Super_CAS_id=DRM), 0.0), e.ChannelStatus)
    monkeypatch.setattr(conn, "_channel_status", lambda: 1 / 0)
    out = conn.receive(e.ChannelTest(protocol_version=3, ECM_channel_id=7), 0.0)
    error = one(out, e.ChannelError)
    assert (error.ECM_channel_id, error.error_status, error.protocol_version) == (7, (0x7000,), 3)
    assert notices(out, "internal_error")[0].fields["error"] == "ZeroDivisionError"


# -- MUX -----------------------------------------------------------------------------------------


class BrokenRouteCore(MuxCore):
    """A MUX core whose route callbacks raise for one data_id (as a bug in a route's handling would)."""

    broken = 0x0100

    def ingest(self, stream, datagrams, now, *, tcp):
        if stream.data_id == self.broken:
            raise ValueError(SECRET)
        return super().ingest(stream, datagrams, now, tcp=tcp)


def mux_config():
    routes = {
        0x0100: RouteConfig(kind=RouteKind.LTKM, data_id=0x0100, destination=("127.0.0.1", 4359), max_bandwidth=500),
        1: RouteConfig(kind=RouteKind.STKM, data_id=1, destination=("127.0.0.1", 6001)),
    }
    return MuxConfig(clients={DRM: ClientConfig(client_id=DRM, routes=routes)}, unthrottled=True)


def test_a_mux_route_failure_answers_0x7000_and_the_other_stream_goes_on():
    core = BrokenRouteCore(mux_config())
    conn = MuxConnection(core)
    one(conn.receive(m.ChannelSetup(protocol_version=3, client_id=DRM, data_channel_id=1, section_TSpkt_flag=2), 0.0),
        m.ChannelStatus)
    for st, data_id, kind in ((1, 0x0100, 0), (2, 1, 2)):
        one(conn.receive(m.StreamSetup(protocol_version=3, client_id=DRM, data_channel_id=1, data_stream_id=st,
                                       data_id=data_id, data_type=kind), 0.0), m.StreamStatus)
    for k in range(5):
        out = conn.receive(m.DataProvision(protocol_version=3, client_id=DRM, data_channel_id=1, data_stream_id=1,
                                           data_id=0x0100, datagram=(b"ltkm",)), 0.0)
        error = one(out, m.StreamError)
        assert (error.client_id, error.data_stream_id, error.error_status) == (DRM, 1, (0x7000,))
        no_secret(notices(out))
        assert not [o for o in out if isinstance(o, Close)]
        out = conn.receive(m.DataProvision(protocol_version=3, client_id=DRM, data_channel_id=1, data_stream_id=2,
                                           data_id=1, datagram=(b"stkm %d" % k,)), 0.0)
        assert sent(out) == []
    assert [o.payload for o in core.tick(0.0) if type(o) is Emit] == [b"stkm 4"]
    # the same failure over UDP: dropped and counted, nothing raised
    out = core.receive_udp(m.DataProvision(protocol_version=3, client_id=DRM, data_id=0x0100, datagram=(b"u",)), 0.0)
    assert core.dropped["internal_error"] == 1 and notices(out, "internal_error")
    assert core.receive_udp_fast(3, DRM, 0x0100, b"u", 0.0) is not None
    assert core.dropped["internal_error"] == 2


def test_a_failing_tick_is_notified_and_the_next_one_runs(monkeypatch):
    core = MuxCore(mux_config())
    core.submit_stkm(DRM, 1, b"stkm", None, 0.0)
    real = core._tick
    monkeypatch.setattr(core, "_tick", lambda now: 1 / 0)
    assert notices(core.tick(0.0), "internal_error") and core.counters["internal_errors"] == 1
    monkeypatch.setattr(core, "_tick", real)
    assert [o.payload for o in core.tick(0.0) if type(o) is Emit] == [b"stkm"]


# -- EMMG client ---------------------------------------------------------------------------------


def test_an_emmg_client_handler_failure_answers_channel_error_0x7000(monkeypatch):
    config = EMMGConfig(client_id=DRM, data_channel_id=1, protocol_version=3,
                        streams=(EMMGStreamConfig(data_stream_id=1, data_id=0x0100, bandwidth=100),))
    client = EMMGClient(config)
    client.connection_made(0.0)
    monkeypatch.setitem(client._table, (EMMGState.WAIT_CHANNEL_STATUS, m.ChannelStatus), lambda msg, now: [][1])
    out = client.receive(m.ChannelStatus(protocol_version=3, client_id=DRM, data_channel_id=1, section_TSpkt_flag=2), 0.0)
    error = one(out, m.ChannelError)
    assert (error.client_id, error.data_channel_id, error.error_status) == (DRM, 1, (0x7000,))
    assert notices(out, "internal_error")[0].fields["error"] == "IndexError"
    assert client.state is EMMGState.WAIT_CHANNEL_STATUS  # nothing closed; the setup timer decides


def test_a_failing_ltkm_source_skips_that_device_and_the_others_get_theirs():
    from bcast_sp4.roles.emmg_client import SubscriberSource

    class Device:
        def __init__(self, n):
            self.device_id = bytes([n]) * 4

    class Subscribers:
        devices = [Device(n) for n in range(4)]

        def ltkm_for(self, device, issued_at, sequence):
            if device.device_id[0] == 1:
                raise RuntimeError(SECRET)

            class Issued:
                data = b"ltkm" + device.device_id
                sequence = 0
                device_id = device.device_id

            return Issued()

    source = SubscriberSource(Subscribers(), repeat_interval=0)
    issued = source.take(10, 0.0)
    assert [i.data[4] for i in issued] == [0, 2, 3] and source.failures == 1


# -- SCS -----------------------------------------------------------------------------------------


def test_a_failing_tek_source_is_retried_and_the_other_service_never_notices():
    from tests.machines.test_scs_scheduler import Linked, channel, service

    services = [service("s1", period=10), service("s2", period=10, links=(LinkSpec(channel="a", super_CAS_id=DRM,
                                                                                  ECM_stream_id=2, ECM_id=2),))]
    link = Linked(services, [channel()])
    scheduler = link.core.services["s1"]
    real, calls = scheduler._tek_factory, []

    def flaky(n):
        calls.append(n)
        if len(calls) <= 3:
            raise OSError(SECRET)
        return real(n)

    scheduler._tek_factory = flaky
    link.connect("a")
    link.advance_to(link.now + 20.0, step=0.01)
    failures = link.events("internal_error")
    assert len(failures) == 3 and all(f.fields["error"] == "OSError" for f in failures)
    no_secret(failures)
    # from the poll timer (armed again TIMER_RETRY later) or from the ECMG message that started a poll
    assert any(f.fields.get("key") == repr(PeriodTimer("s1")) for f in failures)
    by_service = {name: [s for _t, s in link.switches if s.service == name] for name in ("s1", "s2")}
    assert len(by_service["s2"]) >= 8  # every period of the healthy service
    assert len(by_service["s1"]) >= 5  # the flaky one recovered after its retries


def test_an_undecodable_message_in_another_version_than_the_channels_gets_0x0002():
    # v1 has no ECM_id: a v1 stream_setup carrying one fails v1's tables (0x000E), but on a v3
    # channel the version is the fault (found by benchmarks/robustness.py)
    from bcast_sp4 import wire

    conn = ECMGConnection(ECMGResources(ECMGConfig(cas_modes={DRM: CasMode.DRM_PROFILE})), FlakySource())
    one(conn.receive(e.ChannelSetup(protocol_version=3, ECM_channel_id=1, Super_CAS_id=DRM), 0.0), e.ChannelStatus)
    frame = bytes.fromhex("0101010018000e00020001000f00020004001900020002001000020014")
    with pytest.raises(wire.PeerProtocolError) as caught:
        wire.decode(frame, wire.Interface.ECMG_SCS)
    assert caught.value.error_status == 0x000E
    error = one(conn.receive(caught.value, 0.0), e.ChannelError)
    assert (error.error_status, error.protocol_version, error.ECM_channel_id) == ((0x0002,), 3, 1)


def test_the_adapters_cw_provision_fast_path_answers_0x7000_too():
    source = FlakySource()
    conn = ECMGConnection(ECMGResources(ECMGConfig(cas_modes={DRM: CasMode.DRM_PROFILE})), source)
    one(conn.receive(e.ChannelSetup(protocol_version=3, ECM_channel_id=1, Super_CAS_id=DRM), 0.0), e.ChannelStatus)
    for stream_id in (1, 2):
        one(conn.receive(e.StreamSetup(protocol_version=3, ECM_channel_id=1, ECM_stream_id=stream_id, ECM_id=stream_id,
                                       nominal_CP_duration=20), 0.0), e.StreamStatus)
    source.broken.add(1)
    for stream_id in (1, 2):
        out = conn.cw_provision(e.CWProvision(protocol_version=3, ECM_channel_id=1, ECM_stream_id=stream_id, CP_number=7,
                                              CP_CW_combination=(CW(7, b"a" * 16), CW(8, b"b" * 16))), 0.0)
        if stream_id == 1:
            assert one(out, e.StreamError).error_status == (0x7000,) and notices(out, "internal_error")
        else:
            assert isinstance(out, bytes) and out[1:3] == b"\x02\x02"  # the encoded ECM_response
