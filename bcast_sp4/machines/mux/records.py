"""Records of the MUX core (:mod:`.core`): its outputs and the stream and route it keeps.

:class:`Emit` / :class:`EmitMany` (datagrams to a route's destination), :class:`Deliver` (a message
for another connection's TCP transport), :class:`UnknownRoute` (:meth:`.core.MuxCore.submit_stkm`),
:class:`MuxStream` (one data stream set up over TCP) and :class:`MuxRoute` (one configured route,
its LTKM queue or STKM carousel, its counters). Pure data; :mod:`.core` re-exports every name.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

import attrs

from ...wire import Message
from ...wire.params import SectionTSpktFlag
from ..pacing import TokenBucket
from ..stkm_schedule import STKMSchedule
from .config import ClientConfig, RouteConfig, RouteKey

if TYPE_CHECKING:
    from .connection import MuxConnection


@attrs.frozen(repr=False)
class Emit:
    """Send *payload* as one UDP datagram to the destination of *route*."""

    route: RouteKey
    payload: bytes

    def __repr__(self) -> str:
        return f"Emit(route=({self.route[0]:#010x}, {self.route[1]}), {len(self.payload)} bytes)"


@attrs.frozen(repr=False)
class EmitMany:
    """Send each of *payloads*, in order, as one UDP datagram to the destination of *route*
    (what a batch of UDP ingest makes, :meth:`MuxCore.receive_udp_batch`)."""

    route: RouteKey
    payloads: tuple[bytes, ...]

    def __repr__(self) -> str:
        return f"EmitMany(route=({self.route[0]:#010x}, {self.route[1]}), {len(self.payloads)} datagrams)"


@attrs.frozen
class Deliver:
    """Send *message* on another connection's TCP transport."""

    connection: "MuxConnection"
    message: Message


class UnknownRoute(LookupError):
    """:meth:`MuxCore.submit_stkm` named no configured STKM route."""


@attrs.define(eq=False)
class MuxStream:
    """One data stream, set up over TCP by *connection* on *route* (a record the core keeps)."""

    connection: "MuxConnection"
    channel_id: int
    stream_id: int
    data_id: int
    data_type: int
    route: "MuxRoute"
    allocation: int = 0  # kbit/s
    ingress: TokenBucket | None = None
    overruns_in_a_row: int = 0
    overruns: int = 0
    #: the channel's section_TSpkt_flag: 0x00 / 0x01 datagrams are format-checked (:mod:`.classic`)
    section_TSpkt_flag: int = SectionTSpktFlag.BCAST


@attrs.define(eq=False)
class MuxRoute:
    """One configured route, its stream (at most one) and its LTKM queue or STKM carousel."""

    config: RouteConfig
    client: ClientConfig
    key: RouteKey
    stream: MuxStream | None = None
    # LTKM
    queue: deque = attrs.field(factory=deque)
    queued_bytes: int = 0
    egress: TokenBucket | None = None
    # STKM
    current: tuple[bytes, ...] = ()
    current_emitted: bool = True
    period: float = 0.1  # s between two copies of the current STKM set
    next_emit: float | None = None
    last_emit: float | None = None
    #: in-process switches to come: (datagrams, period or None, valid_until or None) by on_air_from
    pending: STKMSchedule[tuple[tuple[bytes, ...], float | None, float | None]] = attrs.field(factory=STKMSchedule)
    # STKM bounds (.limits): seconds one emission of the current set occupies at the route's
    # bandwidth, no emission before free_at, when the set became current, until when it is valid,
    # when its stream went away
    gap: float = 0.0
    free_at: float = -math.inf
    current_since: float = 0.0
    valid_until: float | None = None
    sender_gone_at: float | None = None
    # counters
    datagrams_in: int = 0
    bytes_in: int = 0
    datagrams_out: int = 0
    bytes_out: int = 0


__all__ = ["Deliver", "Emit", "EmitMany", "MuxRoute", "MuxStream", "UnknownRoute"]
