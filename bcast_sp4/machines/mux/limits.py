"""The MUX's amplification bounds on STKM routes and its UDP sender identity, pure.

Issue #13: one data_provision of 10,000 one-byte STKM datagrams made a MUX repeat ~100,000
datagrams/s, on and on after its sender left; a UDP data_provision from any address was taken as
the client's. The rules here (configured in ``[limits]`` and ``[[client]] udp_sources`` of
``mux.toml``, see ``docs/config.md``)::

  what                                     bound                                   answer / effect
  datagrams in one data_provision of an    max_stkm_datagrams (per route)          stream_error 0x0004 "message too long"
  STKM stream                                                                       (error_information 0x0005, datagram);
                                                                                    message dropped ("stkm_limit"), the
                                                                                    current STKM stays
  one STKM datagram                        max_stkm_size bytes                      stream_error 0x000D (error_information
                                                                                    0x0005); message dropped ("stkm_limit")
  repetition of the current set            the route's bandwidth: min(route         stream_error 0x000F "exceeded
                                           max_bandwidth, client max_bandwidth),    bandwidth" once per set; the set is
                                           kbit/s of payload                        repeated more slowly (counted
                                                                                    "stkm_stretched")
  two emissions of a route                 at least size(set) / bandwidth apart     a replacement arriving sooner waits
  STKM whose stream or connection went     stkm_sender_grace s                      repetition stops ("stkm_expired",
  away and nobody replaced it                                                       counted, notified)
  STKM older than its validity             valid_until of an in-process STKM, else  repetition stops ("stkm_expired")
                                           stkm_max_age s after it became current
                                           (0 = until replaced)
  UDP data_provision (or any UDP message   source address in the client's          dropped ("udp_source"), counted;
  naming a client_id) from an address      ``udp_sources`` (addresses / networks),  never reported on the client's TCP
  not allowed for that client_id           else one of the addresses of its open   connection
                                           TCP channels

So whatever a sender does, a route emits at most its bandwidth (plus one set), and a set whose
sender is gone stops after the grace. Messages refused here are answered over TCP (or, for UDP
input, delivered to the stream's TCP connection as other UDP errors are).
"""

from __future__ import annotations

import ipaddress
import math
from typing import TYPE_CHECKING, Iterable

import attrs

from ...wire.errors import EMMGMUXErrorStatus as ErrorStatus

if TYPE_CHECKING:
    from .core import MuxRoute

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen(kw_only=True)
class MuxLimits:
    """The bounds of this module (see its docstring); every one configurable, none fatal.

    :ivar udp_sources: client_id -> networks its UDP data_provision may come from; a client not
        listed may send from the addresses of its open TCP channels only.
    """

    max_stkm_datagrams: int = 16
    max_stkm_size: int = 8192
    stkm_sender_grace: float = 10.0  # s
    stkm_max_age: float = 0.0  # s, 0 = until replaced
    udp_sources: dict[int, tuple[Network, ...]] = attrs.field(factory=dict)


def normal_host(host: str) -> str:
    """*host* as compared: an IPv4-mapped IPv6 address as its IPv4 address; other text unchanged."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.version == 6 and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def stkm_refusal(limits: MuxLimits, datagrams: tuple[bytes, ...]) -> tuple[str, int] | None:
    """``(what, error_status)`` refusing one STKM data_provision, or ``None`` when within the limits."""
    if len(datagrams) > limits.max_stkm_datagrams:  # more than this MUX takes in one message
        return "too_many_datagrams", ErrorStatus.MESSAGE_TOO_LONG
    if max(map(len, datagrams)) > limits.max_stkm_size:
        return "stkm_too_large", ErrorStatus.INVALID_VALUE
    return None


def route_bytes_per_second(route: MuxRoute) -> float:
    """The bandwidth an STKM route's repetition may use: min(route, client) max_bandwidth, in bytes/s."""
    kbit = min(route.config.max_bandwidth, route.client.max_bandwidth)
    return kbit * 125.0


def min_gap(route: MuxRoute, datagrams: Iterable[bytes]) -> float:
    """Seconds one emission of *datagrams* occupies at the route's bandwidth (``inf`` at 0 kbit/s)."""
    size = sum(map(len, datagrams))
    rate = route_bytes_per_second(route)
    if rate <= 0:
        return math.inf
    return size / rate


class UdpSources:
    """Which source addresses may speak for a client_id on the MUX's UDP port.

    The core tells it when a TCP channel opens or closes (:meth:`opened`, :meth:`closed`, with the
    peer's address); :meth:`allowed` is asked once per UDP message.
    """

    #: at most this many (client_id, address) answers about configured networks are remembered
    CACHE = 4096

    def __init__(self, configured: dict[int, tuple[Network, ...]]) -> None:
        self.configured = configured
        self._peers: dict[int, dict[str, int]] = {}  # client_id -> TCP peer address -> channels
        self._cache: dict[tuple[int, str], bool] = {}

    def opened(self, client_id: int, host: str | None) -> None:
        """A TCP channel of *client_id* from *host* opened (``None``: address unknown)."""
        if host is None:
            host = "*"
        peers = self._peers.setdefault(client_id, {})
        key = normal_host(host) if host != "*" else host
        peers[key] = peers.get(key, 0) + 1

    def closed(self, client_id: int, host: str | None) -> None:
        """That channel closed."""
        peers = self._peers.get(client_id)
        if not peers:
            return
        key = "*" if host is None else normal_host(host)
        left = peers.get(key, 0) - 1
        if left > 0:
            peers[key] = left
        else:
            peers.pop(key, None)
        if not peers:
            del self._peers[client_id]

    def allowed(self, client_id: int, host: str) -> bool:
        """May a UDP message naming *client_id* come from *host*?"""
        networks = self.configured.get(client_id)
        if networks is None:
            peers = self._peers.get(client_id)
            if not peers:
                return False
            if host in peers or "*" in peers:
                return True
            return normal_host(host) in peers
        key = (client_id, host)
        known = self._cache.get(key)
        if known is None:
            try:
                address = ipaddress.ip_address(normal_host(host))
            except ValueError:
                known = False
            else:
                known = any(address in network for network in networks)
            if len(self._cache) >= self.CACHE:
                self._cache.clear()
            self._cache[key] = known
        return known


__all__ = ["MuxLimits", "UdpSources", "min_gap", "normal_host", "route_bytes_per_second", "stkm_refusal"]
