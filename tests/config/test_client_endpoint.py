"""The config check of client endpoint strings agrees with Twisted's ``clientFromString``.

A string the check accepts must parse at start-up, and one Twisted cannot parse (``tcp6:`` is a
server endpoint type only) must be refused when the file is read, naming the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString

from bcast_sp4.config import ConfigError
from bcast_sp4.config._reader import Reader

ACCEPTED = [
    "tcp:host=127.0.0.1:port=2222",
    r"tcp:host=\:\:1:port=2222",
    "tcp:localhost:2222",
    "unix:path=/run/bcast/ecmg.sock",
]


def read(value: str) -> str:
    return Reader(Path("scs.toml"), {"endpoint": value}, "service #1.ecmg #1").client_endpoint("endpoint")


@pytest.mark.parametrize("spec", ACCEPTED)
def test_accepted_strings_parse_as_twisted_client_endpoints(spec):
    assert read(spec) == spec
    assert clientFromString(reactor, spec) is not None


def test_tcp6_is_refused_when_read_and_twisted_agrees():
    spec = r"tcp6:host=\:\:1:port=2222"
    with pytest.raises(ValueError, match="tcp6"):
        clientFromString(reactor, spec)
    with pytest.raises(ConfigError) as caught:
        read(spec)
    assert caught.value.key == "service #1.ecmg #1.endpoint"
    assert "no tcp6: type" in caught.value.reason and r"tcp:host=\:\:1" in caught.value.reason


def test_other_types_are_refused():
    with pytest.raises(ConfigError, match="not a client endpoint string"):
        read("udp:2222")
