"""The MUX's configuration records (TS 103 197 §6; OMA BCAST SP-4 seed §14.1.1.3.4-.5).

Built by :mod:`bcast_sp4.config.mux`; read by :mod:`.core` and :mod:`.connection`. A route maps
``(client_id, data_id)`` to a UDP destination: an LTKM generator's data_id (LTKMs queued and
paced) or an SCS's ECM_id (the current STKM repeated).
"""

from __future__ import annotations

import enum
import ipaddress

import attrs

from ...wire.params import DataType
from ..channel import MAX_UDP_PAYLOAD
from .limits import MuxLimits

RouteKey = tuple[int, int]  # (client_id, data_id)


class RouteKind(enum.Enum):
    """What a route carries: queued LTKMs or a repeated current STKM."""

    LTKM = "ltkm"
    STKM = "stkm"

    @property
    def data_type(self) -> int:
        """The data_type a stream_setup must announce for this kind."""
        return DataType.EMM if self is RouteKind.LTKM else DataType.ECM


@attrs.frozen(kw_only=True)
class RouteConfig:
    """One ``(client_id, data_id)`` -> UDP destination mapping (data_id = ECM_id for STKM routes)."""

    kind: RouteKind
    data_id: int
    destination: tuple[str, int]
    ttl: int = 1
    max_bandwidth: int = 0xFFFF  # kbit/s, cap for the stream on this route
    default_bandwidth: int = 0  # kbit/s allocated at stream_setup
    repetition_period: int = 100  # ms, STKM routes

    @property
    def multicast(self) -> bool:
        return ipaddress.ip_address(self.destination[0]).is_multicast


@attrs.frozen(kw_only=True)
class ClientConfig:
    """One allowed client_id (an LTKM generator, or an SCS sending STKMs, or both)."""

    client_id: int
    routes: dict[int, RouteConfig]
    name: str = ""
    max_channels: int = 1
    max_bandwidth: int = 0xFFFF  # kbit/s, all streams of this client


@attrs.frozen(kw_only=True)
class MuxConfig:
    """The MUX's behaviour; every limit is enforced with the spec's error codes, never fatal."""

    clients: dict[int, ClientConfig]
    versions: frozenset[int] = frozenset({2, 3, 4, 5})
    max_channels: int = 64
    max_streams: int = 256
    max_streams_per_channel: int = 16
    max_bandwidth: int = 100_000  # kbit/s, all streams together
    queue_datagrams: int = 1024  # per LTKM route
    queue_bytes: int = 1 << 20  # per LTKM route
    max_datagram_size: int = MAX_UDP_PAYLOAD
    overrun_limit: int = 5
    ingress_burst: float = 0.5  # s of allocation tolerated above the rate
    egress_burst: float = 0.02  # s of allocation the pacer may catch up
    unthrottled: bool = False
    max_invalid_messages: int = 3
    drop_log_interval: float = 1.0
    udp_error_interval: float = 1.0
    max_pending_stkms: int = 8
    limits: MuxLimits = MuxLimits()  # STKM amplification bounds, UDP source addresses (.limits)

    def __attrs_post_init__(self) -> None:
        if any(v < 2 for v in self.versions):
            raise ValueError("EMMG<=>MUX v1 has no data_id: the MUX could not map streams; use versions 2..5")


__all__ = ["MAX_UDP_PAYLOAD", "ClientConfig", "MuxConfig", "MuxLimits", "RouteConfig", "RouteKey", "RouteKind"]
