"""bcast-mux / bcast-emmg: plugins found, Options, config files -> services on a memory reactor."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

from bcast_sp4.config import ConfigError, load_emmg_settings, load_mux_settings, parse_host_port, parse_udp_listen
from bcast_sp4.machines.mux import RouteKind
from bcast_sp4.tap import emmg as emmg_tap
from bcast_sp4.tap import mux as mux_tap
from tests.doubles import UDPMemoryReactor


REPO = Path(__file__).resolve().parents[2]
ETC = REPO / "etc"


def test_plugins_are_found():
    tapnames = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert tapnames["bcast-mux"].module == "bcast_sp4.tap.mux"
    assert tapnames["bcast-emmg"].module == "bcast_sp4.tap.emmg"
    assert isinstance(tapnames["bcast-mux"].options(), usage.Options)


def test_example_mux_config_and_overrides():
    options = mux_tap.Options()
    options.parseOptions(["--config", str(ETC / "mux.toml"), "--endpoint", "tcp:0:interface=127.0.0.1", "--udp", "udp:6000"])
    settings = options["settings"]
    assert settings.endpoint == "tcp:0:interface=127.0.0.1" and settings.udp == (6000, "127.0.0.1")
    bsm = settings.mux.clients[0x00010001]
    assert bsm.routes[0x0100].kind is RouteKind.LTKM and bsm.routes[0x0100].destination == ("127.0.0.1", 4359)
    assert bsm.routes[1].kind is RouteKind.STKM and bsm.max_channels == 2
    options = mux_tap.Options()
    options.parseOptions(["--config", str(ETC / "mux.toml"), "--udp", "off"])
    assert options["settings"].udp is None
    with pytest.raises(usage.UsageError):
        mux_tap.Options().parseOptions(["--config", str(ETC / "mux.toml"), "--udp", "tcp:1"])
    with pytest.raises(SystemExit, match="78"):  # one line on stderr, no help (test_config_and_plugins.py)
        mux_tap.Options().parseOptions(["--config", str(ETC / "missing.toml")])


def test_mux_service_tree_on_a_memory_reactor():
    settings = load_mux_settings(ETC / "mux.toml")
    reactor = UDPMemoryReactor()
    top = mux_tap.build_service(settings, reactor)
    top.startService()
    (tcp,) = reactor.tcpServers
    assert tcp[0] == 5000 and tcp[3] == "127.0.0.1"
    ports = {p.port: p for p in reactor.udp}
    assert ports[5000].protocol is top.mux.udp_protocol and ports[5000].interface == "127.0.0.1"
    assert ports[5000].max_packet_size >= 65507  # not Twisted's 8192: long LTKMs would be cut
    assert settings.udp_receive_buffer == 4 << 20 and top.udp_service.receive_buffer == 4 << 20  # the default asked
    assert sorted(p.connected for p in reactor.udp if p.connected) == [
        ("127.0.0.1", 4359), ("127.0.0.1", 6001), ("127.0.0.1", 6002), ("127.0.0.1", 6101)]
    top.submit = top.mux.submit_stkm
    top.submit(0x00020001, 1, b"stkm")
    (egress,) = [p for p in reactor.udp if p.connected == ("127.0.0.1", 6101)]
    assert egress.socket.sent == [b"stkm"]
    top.stopService()


def test_example_emmg_config_and_service_tree(tmp_path):
    options = emmg_tap.Options()
    options.parseOptions(["--config", str(ETC / "emmg.toml"), "--connect", "tcp:host=127.0.0.1:port=7000", "--transport", "udp"])
    settings = options["settings"]
    assert settings.connect == "tcp:host=127.0.0.1:port=7000" and settings.emmg.udp
    assert settings.emmg.client_id == 0x00010001 and settings.emmg.streams[0].data_id == 0x0100
    sources = settings.sources[0x0100]
    assert len(sources.subscribers.devices) == 3 and sources.spool == Path("/tmp/bcast-sp4/ltkm-spool")
    import attrs

    settings = attrs.evolve(settings, sources={0x0100: attrs.evolve(sources, spool=tmp_path / "spool")})
    reactor = UDPMemoryReactor()
    reactor.advance(1_750_000_000.0)
    top = emmg_tap.build_service(settings, reactor)
    top.startService()
    (client,) = reactor.tcpClients
    assert client[:2] == ("127.0.0.1", 7000)
    (udp,) = reactor.udp
    assert udp.connected == ("127.0.0.1", 5000) and udp.interface == "127.0.0.1"
    assert (tmp_path / "spool" / "sent").is_dir()
    assert top.emmg.machine.queued(0x0100) == 3  # the subscriber file's LTKMs, waiting for the MUX
    top.stopService()
    with pytest.raises(usage.UsageError):
        emmg_tap.Options().parseOptions(["--config", str(ETC / "emmg.toml"), "--transport", "sctp"])


def test_udp_and_destination_notations():
    assert parse_udp_listen("udp:5000") == (5000, "127.0.0.1")
    assert parse_udp_listen("udp:0:interface=0.0.0.0") == (0, "0.0.0.0")
    assert parse_host_port("239.255.43.59:4359") == ("239.255.43.59", 4359)
    for bad in ("tcp:5000", "udp:x", "udp:70000", "udp:1:iface=1.2.3.4", "udp:1:interface=host"):
        with pytest.raises(ValueError):
            parse_udp_listen(bad)
    assert parse_host_port("[::1]:4359") == ("::1", 4359)
    for bad in ("4359", "host:4359", "127.0.0.1:0", "127.0.0.1:x", "::1:4359", "[::1]"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


MUX_BASE = """
[mux]
[[client]]
client_id = 0x00010001
[[client.ltkm]]
data_id = 1
destination = "127.0.0.1:4359"
"""


@pytest.mark.parametrize(
    "text, key",
    [
        ("", "mux"),
        ("[mux]\n", "client"),
        (MUX_BASE.replace("[mux]", "[mux]\nversions = [0, 2]"), "mux.versions"),
        (MUX_BASE.replace("[mux]", "[mux]\nudp = 'udp:x'"), "mux.udp"),
        (MUX_BASE.replace("[mux]", "[mux]\nudp_receive_buffer = -1"), "mux.udp_receive_buffer"),
        (MUX_BASE.replace("[mux]", "[mux]\nudp_receive_buffer = '4M'"), "mux.udp_receive_buffer"),
        (MUX_BASE.replace("[mux]", "[mux]\ncolour = 1"), "mux.colour"),
        (MUX_BASE + "[[client]]\nclient_id = 0x00010001\n[[client.stkm]]\necm_id = 1\ndestination = '127.0.0.1:1'\n",
         "client #2.client_id"),
        (MUX_BASE.replace("0x00010001", "0x00020001"), "client #1.client_id"),  # Smartcard LTKMs are not broadcast
        (MUX_BASE.replace("0x00010001", "0x4AE60000").replace("ltkm", "stkm").replace("data_id", "ecm_id"),
         "client #1.client_id"),
        (MUX_BASE + "[[client.ltkm]]\ndata_id = 1\ndestination = '127.0.0.1:4360'\n", "client #1.ltkm #2.data_id"),
        (MUX_BASE + "[[client.ltkm]]\ndata_id = 2\ndestination = '127.0.0.1:4359'\n", "client #1.ltkm #2.destination"),
        (MUX_BASE.replace("127.0.0.1:4359", "localhost:4359"), "client #1.ltkm #1.destination"),
        (MUX_BASE + "ttl = 0\n", "client #1.ltkm #1.ttl"),
        (MUX_BASE + "default_bandwidth = 10\nmax_bandwidth = 5\n", "client #1.ltkm #1.default_bandwidth"),
        ("[mux]\n[[client]]\nclient_id = 0x00010001\n", "client #1.ltkm"),
        (MUX_BASE + "[egress]\ninterface = 'eth0'\n", "egress.interface"),
        (MUX_BASE + "[queues]\noverrun_limit = 0\n", "queues.overrun_limit"),
    ],
)
def test_mux_config_errors_name_the_key(tmp_path, text, key):
    path = tmp_path / "mux.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_mux_settings(path)
    assert caught.value.key == key, str(caught.value)


EMMG_BASE = """
[emmg]
client_id = 0x00010001
[[stream]]
data_stream_id = 1
data_id = 256
bandwidth = 100
[stream.spool]
directory = "spool"
"""


@pytest.mark.parametrize(
    "text, key",
    [
        (EMMG_BASE.replace("0x00010001", "0x00020001"), "emmg.client_id"),
        (EMMG_BASE.replace("[emmg]", "[emmg]\ntransport = 'udp'"), "emmg.mux_udp"),
        (EMMG_BASE.replace("[emmg]", "[emmg]\ntransport = 'sctp'"), "emmg.transport"),
        (EMMG_BASE.replace("[emmg]", "[emmg]\nmux_udp = '127.0.0.1'"), "emmg.mux_udp"),
        (EMMG_BASE.replace("[emmg]", "[emmg]\nprotocol_version = 1"), "emmg.protocol_version"),
        (EMMG_BASE.replace("bandwidth = 100", "bandwidth = 0"), "stream #1.bandwidth"),
        (EMMG_BASE.replace('[stream.spool]\ndirectory = "spool"', ""), "stream #1.subscribers"),
        (EMMG_BASE + "[stream.subscribers]\nfile = 'missing.toml'\n", "stream #1.subscribers.file"),
        (EMMG_BASE + "[[stream]]\ndata_stream_id = 2\ndata_id = 256\nbandwidth = 1\n[stream.spool]\ndirectory='x'\n",
         "stream #2.data_id"),
        (EMMG_BASE + "[[stream]]\ndata_stream_id = 1\ndata_id = 257\nbandwidth = 1\n[stream.spool]\ndirectory='x'\n",
         "stream #2.data_stream_id"),
        ("[emmg]\nclient_id = 0x00010001\n", "stream"),
    ],
)
def test_emmg_config_errors_name_the_key(tmp_path, text, key):
    path = tmp_path / "emmg.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_emmg_settings(path)
    assert caught.value.key == key, str(caught.value)


def test_emmg_paths_are_relative_to_the_file(tmp_path):
    path = tmp_path / "emmg.toml"
    path.write_text(EMMG_BASE)
    assert load_emmg_settings(path).sources[256].spool == tmp_path / "spool"


def test_multicast_route_ttl_option(tmp_path):
    path = tmp_path / "mux.toml"
    path.write_text(MUX_BASE.replace("127.0.0.1:4359", "239.255.43.59:4359") + "ttl = 16\n")
    settings = load_mux_settings(path)
    route = settings.mux.clients[0x00010001].routes[1]
    assert route.multicast and route.ttl == 16
    reactor = UDPMemoryReactor()
    top = mux_tap.build_service(settings, reactor)
    top.startService()
    (egress,) = [p for p in reactor.udp if p.connected]
    assert egress.socket.options[(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL)] == 16
    top.stopService()


def test_mux_udp_receive_buffer_is_read(tmp_path):
    path = tmp_path / "mux.toml"
    path.write_text(MUX_BASE.replace("[mux]", "[mux]\nudp_receive_buffer = 1048576"))
    assert load_mux_settings(path).udp_receive_buffer == 1 << 20
    path.write_text(MUX_BASE.replace("[mux]", "[mux]\nudp_receive_buffer = 0"))  # the kernel's default
    assert load_mux_settings(path).udp_receive_buffer == 0
