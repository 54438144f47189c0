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
    """What a route carries: queued LTKMs, a repeated current STKM, or classic DVB data (queued
    and paced like LTKMs; see :mod:`.classic`)."""

    LTKM = "ltkm"
    STKM = "stkm"
    DATA = "data"

    @property
    def data_type(self) -> int:
        """The data_type a stream_setup must announce for this kind."""
        return DataType.ECM if self is RouteKind.STKM else DataType.EMM

    @property
    def queued(self) -> bool:
        """Datagrams are queued and paced (LTKM, data), not a repeated current set (STKM)."""
        return self is not RouteKind.STKM


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
    data_type: int | None = None  # data routes: the data_type a stream_setup must announce

    @property
    def expected_data_type(self) -> int:
        """The data_type a stream_setup on this route must announce."""
        return self.kind.data_type if self.data_type is None else self.data_type

    @property
    def multicast(self) -> bool:
        return ipaddress.ip_address(self.destination[0]).is_multicast

    @property
    def ipv6(self) -> bool:
        return ipaddress.ip_address(self.destination[0]).version == 6


@attrs.frozen(kw_only=True)
class ClientConfig:
    """One allowed client_id (an LTKM generator, or an SCS sending STKMs, or both)."""

    client_id: int
    routes: dict[int, RouteConfig]
    name: str = ""
    max_channels: int = 1
    max_bandwidth: int = 0xFFFF  # kbit/s, all streams of this client
    #: section_TSpkt_flag values its channel_setup may carry (0x00 / 0x01: classic DVB, opt-in)
    section_TSpkt_flags: frozenset[int] = frozenset({0x02})


@attrs.frozen(kw_only=True)
class MuxConfig:
    """The MUX's behaviour; every limit is enforced with the spec's error codes, never fatal."""

    clients: dict[int, ClientConfig]
    #: v1 in ``versions``: v1 has no data_id, so the MUX tolerates the known deviation of a v1
    #: stream_setup / data_provision carrying one (wire.Deviation.V1_DATA_ID) and refuses a v1
    #: stream_setup without it (0x000C: nothing to route by)
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


__all__ = ["MAX_UDP_PAYLOAD", "ClientConfig", "MuxConfig", "MuxLimits", "RouteConfig", "RouteKey", "RouteKind"]
