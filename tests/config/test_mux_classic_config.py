"""MUX configuration: classic clients (section_TSpkt_flags, [[client.data]]), v1, IPv6 egress."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcast_sp4.config import ConfigError
from bcast_sp4.config.mux import load_mux_settings
from bcast_sp4.machines.mux import RouteKind

ROOT = Path(__file__).resolve().parents[2]

BASE = """
[mux]
[[client]]
client_id = 0x4ADC0001
section_TSpkt_flags = [0, 1, 2]
[[client.data]]
data_id = 1
destination = "127.0.0.1:4401"
"""


def load(tmp_path, text):
    path = tmp_path / "mux.toml"
    path.write_text(text)
    return load_mux_settings(path)


def test_the_classic_example_loads():
    settings = load_mux_settings(ROOT / "etc" / "mux-classic.toml")
    (client,) = settings.mux.clients.values()
    assert client.section_TSpkt_flags == {0, 1, 2}
    assert {r.kind for r in client.routes.values()} == {RouteKind.DATA}
    assert settings.mux.versions == {1, 2, 3}
    assert [r.expected_data_type for r in client.routes.values()] == [0, 0]


def test_defaults_stay_bcast_only(tmp_path):
    settings = load_mux_settings(ROOT / "etc" / "mux.toml")
    assert all(c.section_TSpkt_flags == {2} for c in settings.mux.clients.values())
    assert settings.mux.versions == {2, 3, 4, 5}
    assert (settings.egress_interface6, settings.ipv6_multicast_interface) == ("::1", "")


@pytest.mark.parametrize("edit, key", [
    (lambda t: t.replace("[[client.data]]", "[[client.ltkm]]").replace("0x4ADC0001", "0x00010001"),
     "client #1.section_TSpkt_flags"),
    (lambda t: t.replace("[0, 1, 2]", "[3]"), "client #1.section_TSpkt_flags"),
    (lambda t: t.replace('data_id = 1\n', 'data_id = 1\ndata_type = 256\n'), "client #1.data #1.data_type"),
    (lambda t: t.replace("[mux]", "[mux]\n[egress]\ninterface6 = \"127.0.0.1\""), "egress.interface6"),
    (lambda t: t.replace("[mux]", "[mux]\n[egress]\ninterface6 = \"fe80::1%eth0\""), "egress.interface6"),
    (lambda t: t.replace("127.0.0.1:4401", "::1:4401"), "client #1.data #1.destination"),
])
def test_errors_name_the_key(tmp_path, edit, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(tmp_path, edit(BASE))


def test_ipv6_destinations_and_egress(tmp_path):
    settings = load(tmp_path, BASE.replace("127.0.0.1:4401", "[ff05::4401]:4401").replace(
        "[mux]", '[mux]\n[egress]\ninterface6 = "::"\nipv6_multicast_interface = "lo"'))
    (route,) = settings.mux.clients[0x4ADC0001].routes.values()
    assert route.destination == ("ff05::4401", 4401) and route.ipv6 and route.multicast
    assert (settings.egress_interface6, settings.ipv6_multicast_interface) == ("::", "lo")
