"""Move every port of a lab at once: ``--port-base N`` of ``bcast-lab`` and ``bcast-sp4 lab-apart``. Pure.

The lab's files name the ports of each role twice — where a server listens and where its clients
connect or send (MUX endpoint and EMMG ``connect``, ECMG endpoint and the SCS's ECMG entries,
scrambler input and the terminal's ``source_to``, MUX routes and the terminal's listeners...).
:func:`move_ports` rewrites all of them together: the lowest port of the lab becomes *base* and
every other keeps its distance from it (``etc/lab``: 12201 -> N, 16203 -> N + 4002). Port 0
(any free port) stays 0.

Ports are found by field name, in the settings the loaders return: endpoint strings
(``endpoint``, ``backup_endpoint``, ``connect`` and the SCS channel names made from them),
``(port, interface)`` listeners, ``(host, port)`` destinations and the scramblers' ``input_port``.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import attrs

#: string fields holding endpoint descriptions ("tcp:12201:interface=..", "tcp:host=..:port=12201")
_ENDPOINTS = frozenset({"endpoint", "backup_endpoint", "connect", "name", "channel"})
#: (port, interface) fields
_LISTENERS = frozenset({"udp", "ltkm_listen", "listen"})
#: (host, port) fields
_DESTINATIONS = frozenset({"destination", "mux_udp", "output", "inner_destination", "source_destination"})
#: plain port numbers
_PORTS = frozenset({"input_port"})
#: fields never walked (loaded key material, paths)
_SKIP = frozenset({"key_stores", "source_path"})

_ENDPOINT_PORT = re.compile(r"(?:(?<=^tcp:)|(?<=^udp:)|(?<=^tcp6:)|(?<=^udp6:)|(?<=port=))(\d+)")


def _rewrite(value: Any, field: str | None, port: Callable[[int], int]) -> Any:
    if field in _SKIP:
        return value
    if attrs.has(type(value)):
        changes = {}
        for f in attrs.fields(type(value)):
            if not f.init:
                continue
            old = getattr(value, f.name)
            new = _rewrite(old, f.name, port)
            if new is not old:
                changes[f.alias] = new
        return attrs.evolve(value, **changes) if changes else value
    if isinstance(value, str):
        if field in _ENDPOINTS:
            new = _ENDPOINT_PORT.sub(lambda m: str(port(int(m.group(1)))), value)
            return value if new == value else new
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return port(value) if field in _PORTS else value
    if isinstance(value, tuple):
        if field in _LISTENERS and len(value) == 2 and isinstance(value[0], int):
            return (port(value[0]), value[1])
        if field in _DESTINATIONS and len(value) == 2 and isinstance(value[1], int):
            return (value[0], port(value[1]))
        items = [_rewrite(item, field, port) for item in value]
        return value if all(a is b for a, b in zip(items, value)) else type(value)(items)
    if isinstance(value, list):
        items = [_rewrite(item, field, port) for item in value]
        return value if all(a is b for a, b in zip(items, value)) else items
    if isinstance(value, dict):
        items = {k: _rewrite(v, field, port) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    return value


def ports_of(settings: Any) -> set[int]:
    """Every port the settings name (0 excluded)."""
    seen: set[int] = set()

    def note(p: int) -> int:
        if p:
            seen.add(p)
        return p

    _rewrite(settings, None, note)
    return seen


def move_ports(settings: Any, base: int) -> Any:
    """*settings* with every port moved so that the lowest becomes *base* (see the module docstring).

    :raises ValueError: *base* outside 1..65535, or a moved port above 65535.
    """
    ports = ports_of(settings)
    if not ports:
        return settings
    if not 1 <= base <= 65535:
        raise ValueError(f"port base {base} outside 1..65535")
    low, high = min(ports), max(ports)
    if base + high - low > 65535:
        raise ValueError(f"port base {base} moves port {high} to {base + high - low} (above 65535); "
                         f"use a base of at most {65535 - (high - low)}")
    offset = base - low
    return _rewrite(settings, None, lambda p: p + offset if p else p)


__all__ = ["move_ports", "ports_of"]
