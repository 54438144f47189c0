"""The ECMG Twisted adapter with test doubles: StringTransport, Clock, MemoryReactor."""

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs

from bcast_sp4 import wire
from bcast_sp4.bcast import stkm_drm, traffic
from bcast_sp4.bcast.ecm import STKMSource
from bcast_sp4.config import load_keyfile
from bcast_sp4.config import load_ecmg_settings
from bcast_sp4.bcast.ecm_request import CasMode
from bcast_sp4.machines.ecmg import ECMGConfig, ECMGResources
from bcast_sp4.roles.ecmg_server import ECMGFactory
from bcast_sp4.tap import ecmg as tap
from bcast_sp4.wire import ecmg_scs as m
from bcast_sp4.wire.params import CPCWCombination as CW

from ..integration.harness import ROOT

KEYS = load_keyfile(ROOT / "etc" / "keys.example.toml")
DRM = 0x00010001


def connect(max_length=4096, clock=None, **config):
    clock = clock or Clock()
    clock.advance(1_750_000_000)  # inside the example keys' validity
    resources = ECMGResources(ECMGConfig(cas_modes={DRM: CasMode.DRM_PROFILE}, **config))
    factory = ECMGFactory(resources, STKMSource(KEYS, {DRM: CasMode.DRM_PROFILE}), clock, max_length)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, resources, clock


def replies(transport):
    framer = wire.Framer()
    out = [wire.decode(f, wire.Interface.ECMG_SCS) for f in framer.feed(transport.value())]
    transport.clear()
    return out


def setup_stream(protocol, transport):
    protocol.dataReceived(
        m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM).encode()
        + m.StreamSetup(ECM_channel_id=1, ECM_stream_id=1, ECM_id=1, nominal_CP_duration=20).encode()
    )
    assert [type(r) for r in replies(transport)] == [m.ChannelStatus, m.StreamStatus]


def cw_provision(cp):
    tek = traffic.encode_cw(traffic.generate(traffic.TrafficProtection.ISMACRYP))
    return m.CWProvision(ECM_channel_id=1, ECM_stream_id=1, CP_number=cp, CP_CW_combination=(CW(cp, tek), CW(cp + 1, tek)))


def test_byte_at_a_time_and_coalesced_replies():
    protocol, transport, _, _ = connect()
    data = b"".join(
        msg.encode()
        for msg in (m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM), m.ChannelTest(ECM_channel_id=1))
    )
    for byte in data:
        protocol.dataReceived(bytes([byte]))
    assert [type(r) for r in replies(transport)] == [m.ChannelStatus, m.ChannelStatus]
    # a pipelined burst is answered with one write
    writes = []
    transport.write = writes.append
    protocol.dataReceived(b"".join(cw_provision(cp).encode() for cp in range(5)) + m.ChannelTest(ECM_channel_id=1).encode())
    assert len(writes) == 1


def test_stkms_from_the_adapter_decrypt():
    protocol, transport, _, _ = connect()
    setup_stream(protocol, transport)
    provision = cw_provision(9)
    protocol.dataReceived(provision.encode())
    (response,) = replies(transport)
    parsed = stkm_drm.parse_stkm(response.ECM_datagram, KEYS)
    assert traffic.encode_cw(parsed.material) == provision.CP_CW_combination[0].CW


def test_late_cw_provision_gets_out_of_compute():
    class SlowClock(Clock):
        """Each reading of the time moves it on, as a busy process would experience it."""

        def seconds(self):
            self.rightNow += 0.06
            return self.rightNow

    protocol, transport, _, _ = connect(clock=SlowClock())
    setup_stream(protocol, transport)
    # max_comp_time 100 ms: the 1st provision is read 60 ms after arrival, the 2nd 120 ms after
    protocol.dataReceived(cw_provision(1).encode() + cw_provision(2).encode())
    first, second = replies(transport)
    assert isinstance(first, m.ECMResponse)
    assert isinstance(second, m.StreamError) and second.error_status == (0x000D,)


def test_oversize_message_answered_and_connection_stays_usable():
    protocol, transport, _, _ = connect(max_length=64)
    protocol.dataReceived(m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM).encode())
    replies(transport)
    big = m.CWProvision(ECM_channel_id=1, ECM_stream_id=1, CP_number=1, CP_CW_combination=(CW(1, bytes(100)),)).encode()
    protocol.dataReceived(big[:30])
    protocol.dataReceived(big[30:] + m.ChannelTest(ECM_channel_id=1).encode())
    error, status = replies(transport)
    assert error.error_status == (0x0004,) and isinstance(status, m.ChannelStatus)


def test_connection_lost_frees_resources_and_logs_no_keys():
    with capturedLogs() as events:
        protocol, transport, resources, _ = connect()
        setup_stream(protocol, transport)
        provision = cw_provision(3)
        protocol.dataReceived(provision.encode())
        assert resources.streams == 1
        protocol.connectionLost(None)
    assert resources.streams == 0 and resources.channels == {}
    text = repr(events)
    assert provision.CP_CW_combination[0].CW.hex() not in text
    assert "000102030405060708090a0b0c0d0e0f" not in text  # the example SEK


def test_repeated_errors_close_only_after_replying():
    protocol, transport, _, _ = connect(max_invalid_messages=2)
    with capturedLogs() as events:
        protocol.dataReceived(m.ChannelTest(ECM_channel_id=5).encode() * 3)
    assert len(replies(transport)) == 2 and transport.disconnecting
    assert any(e.get("log_level") is LogLevel.warn and "invalid messages" in e["log_format"] + str(e.get("reason")) for e in events)
    protocol.dataReceived(m.ChannelTest(ECM_channel_id=5).encode())  # ignored once closing
    assert transport.value() == b""


def test_internal_error_drops_only_that_connection():
    protocol, transport, _, _ = connect()

    def boom(*args):
        raise RuntimeError("bug")

    protocol.handle = boom  # what dataReceived calls for each message (the machine's receive)
    with capturedLogs() as events:
        protocol.dataReceived(m.ChannelTest(ECM_channel_id=1).encode())
    assert transport.disconnecting
    assert any(e.get("log_failure") is not None for e in events)


def test_tap_builds_service_on_configured_endpoint():
    options = tap.Options()
    options.parseOptions(["--config", str(ROOT / "etc" / "ecmg.toml"), "--endpoint", "tcp:2345:interface=127.0.0.1"])
    reactor = MemoryReactorClock()
    service = tap.build_service(options["settings"], options["key_store"], reactor)
    service.startService()
    assert [(port, interface) for port, _factory, _backlog, interface in reactor.tcpServers] == [(2345, "127.0.0.1")]
    service.stopService()


def test_example_config_loads():
    settings = load_ecmg_settings(ROOT / "etc" / "ecmg.toml")
    assert settings.ecmg.cas_modes[DRM] is CasMode.DRM_PROFILE
    assert settings.key_file.exists()
