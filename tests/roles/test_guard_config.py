"""The shared ``[limits]`` / ``[tls]`` tables, read by every role's loader."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from bcast_sp4.config import ConfigError, load_ecmg_settings, load_emmg_settings, load_mux_settings, load_scs_settings
from bcast_sp4.config.limits import Limits

ETC = Path(__file__).resolve().parents[2] / "etc"


def role_file(tmp_path: Path, name: str, extra: str) -> Path:
    """A copy of ``etc/<name>.toml`` (with the files it names) plus *extra* TOML."""
    for item in ETC.iterdir():
        if item.is_file():
            shutil.copy(item, tmp_path / item.name)
    path = tmp_path / f"{name}.toml"
    path.write_text(path.read_text() + "\n" + extra)
    return path


def test_defaults_protect_without_a_limits_table():
    settings = load_ecmg_settings(ETC / "ecmg.toml")
    assert settings.limits == Limits()
    assert settings.tls is None
    assert (settings.limits.first_channel_setup_timeout, settings.limits.message_timeout) == (30.0, 10.0)
    assert settings.limits.max_connections == 2048


def test_server_limits_and_allow_lists_are_read(tmp_path):
    # etc/mux.toml already has a [limits] table (the MUX's STKM caps): the guard's keys join it
    path = role_file(tmp_path, "mux", "")
    text = path.read_text()
    assert text.count("\n[limits]") == 1
    path.write_text(text.replace("\n[limits]", """
[limits]
messages_per_turn = 16
first_channel_setup_timeout = 5
idle_timeout = 0
max_connections = 10
allow = ["127.0.0.1", "10.0.0.0/8", "::1"]
udp_allow = ["192.0.2.0/24"]
max_stkm_datagrams = 3
""", 1).replace("max_stkm_datagrams = 16", "", 1))
    settings = load_mux_settings(path)
    limits = settings.limits
    assert limits.messages_per_turn == 16 and limits.first_channel_setup_timeout == 5.0 and limits.idle_timeout == 0
    assert limits.allow == tuple(ipaddress.ip_network(t) for t in ("127.0.0.1/32", "10.0.0.0/8", "::1/128"))
    assert limits.udp_allow == (ipaddress.ip_network("192.0.2.0/24"),)
    assert settings.mux.limits.max_stkm_datagrams == 3  # both readers share the one table


def test_mux_limits_table_refuses_a_key_neither_reader_knows(tmp_path):
    path = role_file(tmp_path, "mux", "")
    path.write_text(path.read_text().replace("\n[limits]", "\n[limits]\ncolour = 1", 1))
    with pytest.raises(ConfigError) as caught:
        load_mux_settings(path)
    assert caught.value.key == "limits.colour" and "unknown key" in caught.value.reason


@pytest.mark.parametrize(("extra", "key", "reason"), [
    ('[limits]\nallow = ["10.0.0.300/8"]', "limits.allow", "not an address or CIDR"),
    ("[limits]\nmax_buffered_bytes = 1000", "limits.max_buffered_bytes", "less than one message"),
    ("[limits]\nmax_buffered_bytes_total = 70000", "limits.max_buffered_bytes_total", "less than max_buffered_bytes"),
    ("[limits]\nmessages_per_turn = 0", "limits.messages_per_turn", "outside"),
    ("[limits]\ncolour = 1", "limits.colour", "unknown key"),
    ("[tls]\nca = \"keys.example.toml\"", "tls.certificate", "a TLS server needs its certificate"),
    ("[tls]\ncertificate = \"keys.example.toml\"", "tls.certificate", "readable by group or others"),
    ("[tls]\ncertificate = \"nowhere.pem\"", "tls.certificate", "is not a file"),
    ("[tls]\ncertificate = \"keys.example.toml\"\nallow_readable_private_key = true\nserver_name = \"x\"",
     "tls.server_name", "unknown key"),
])
def test_ecmg_errors_name_the_key(tmp_path, extra, key, reason):
    with pytest.raises(ConfigError) as caught:
        load_ecmg_settings(role_file(tmp_path, "ecmg", extra))
    assert caught.value.key == key and reason in caught.value.reason


def test_tls_with_an_ssl_endpoint_is_refused(tmp_path):
    path = role_file(tmp_path, "ecmg", '[tls]\ncertificate = "keys.example.toml"\nallow_readable_private_key = true')
    path.write_text(path.read_text().replace('endpoint = "tcp:2222', 'endpoint = "ssl:2222'))
    with pytest.raises(ConfigError) as caught:
        load_ecmg_settings(path)
    assert caught.value.key == "ecmg.endpoint" and "wrapped in TLS" in caught.value.reason


def test_clients_read_budgets_and_client_tls_but_no_server_keys(tmp_path):
    settings = load_emmg_settings(role_file(tmp_path, "emmg", """
[limits]
messages_per_turn = 8
[tls]
ca = "keys.example.toml"
server_name = "mux.example"
"""))
    assert settings.limits.messages_per_turn == 8
    assert settings.tls.ca == (tmp_path / "keys.example.toml").resolve() and settings.tls.server_name == "mux.example"
    assert settings.tls.certificate is None
    with pytest.raises(ConfigError) as caught:
        load_emmg_settings(role_file(tmp_path, "emmg", "[limits]\nallow = [\"127.0.0.1\"]"))
    assert caught.value.key == "limits.allow"
    with pytest.raises(ConfigError) as caught:
        load_emmg_settings(role_file(tmp_path, "emmg", "[tls]\nserver_name = \"x\""))
    assert caught.value.key == "tls.ca"


def test_scs_reads_udp_allow_and_checks_every_endpoint_with_tls(tmp_path):
    settings = load_scs_settings(role_file(tmp_path, "scs", '[limits]\nudp_allow = ["127.0.0.0/8"]'))
    assert settings.limits.udp_allow == (ipaddress.ip_network("127.0.0.0/8"),)
    settings = load_scs_settings(role_file(tmp_path, "scs", '[tls]\nca = "keys.example.toml"'))
    assert settings.tls is not None and settings.tls.server_name is None
