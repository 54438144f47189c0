"""States, timer keys, error codes and refusal texts of one SCS channel (:mod:`.scs_channel`).

TS 103 197 §5 (digest ``simulcrypt.md`` §5.1, §6.1, §6.2). The state tables are in
:mod:`.scs_channel`, next to the machine that runs them; what they name lives here so that the
machine's module holds only the sequencing. :mod:`.scs_channel` re-exports the public names.
"""

from __future__ import annotations

import collections
import enum

import attrs

from ..wire import ecmg_scs as m
from ..wire.errors import ECMGSCSErrorStatus as ErrorStatus
from ..wire.errors import Interface, error_name
from ..wire.params import ECMG_SCS_PARAMS
from .scs_records import LinkSpec

# error_status values (TS 103 197 §5.6, digest §5.1), under the names used below
INVALID_MESSAGE = ErrorStatus.INVALID_MESSAGE
UNKNOWN_CHANNEL = ErrorStatus.UNKNOWN_ECM_CHANNEL_ID
UNKNOWN_STREAM = ErrorStatus.UNKNOWN_ECM_STREAM_ID
STREAM_ID_IN_USE = ErrorStatus.ECM_STREAM_ID_IN_USE
UNRECOVERABLE = ErrorStatus.UNRECOVERABLE_ERROR
#: stream_setup refusals that point at configuration or keys rather than load (logged as errors)
CONFIGURATION_CODES = frozenset(
    {ErrorStatus.UNKNOWN_SUPER_CAS_ID, ErrorStatus.INVALID_VALUE, ErrorStatus.UNKNOWN_ECM_ID, ErrorStatus.ECM_ID_IN_USE}
)


class ChannelTimerKind(enum.Enum):
    """The timers of one channel and its streams."""

    SETUP = "setup"  # channel_setup unanswered
    TEST = "test"  # next channel_test due
    TEST_REPLY = "test_reply"  # channel_test unanswered
    STREAM_SETUP = "stream_setup"  # stream_setup unanswered
    STREAM_RETRY = "stream_retry"  # a refused stream's next stream_setup
    STREAM_CLOSE = "stream_close"  # stream_close_request unanswered
    CLOSE = "close"  # shutdown: stream_close_responses awaited (close_timeout)


CHANNEL_TIMERS = (ChannelTimerKind.SETUP, ChannelTimerKind.TEST, ChannelTimerKind.TEST_REPLY, ChannelTimerKind.CLOSE)
STREAM_TIMERS = (ChannelTimerKind.STREAM_SETUP, ChannelTimerKind.STREAM_RETRY, ChannelTimerKind.STREAM_CLOSE)


@attrs.frozen
class ChannelTimer:
    """Timer key: *kind* of channel *channel*, of its stream *stream_id* for the stream timers."""

    channel: str
    kind: ChannelTimerKind
    stream_id: int | None = None


class SCSChannelState(enum.Enum):
    """The SCS channel's states (first table above)."""

    DISCONNECTED = "DISCONNECTED"
    WAIT_CH_STATUS = "WAIT_CH_STATUS"
    CH_OPEN = "CH_OPEN"
    CLOSING = "CLOSING"  # shutdown: stream_close_requests sent, their responses awaited


class SCSStreamState(enum.Enum):
    """The states of one SCS stream (second table above)."""

    IDLE = "IDLE"
    WAIT_ST_STATUS = "WAIT_ST_STATUS"
    ST_OPEN = "ST_OPEN"
    ST_CLOSING = "ST_CLOSING"
    ST_BACKOFF = "ST_BACKOFF"


class AfterClose(enum.Enum):
    """What a stream does once its stream_close_request is answered."""

    SET_UP_AGAIN = "set_up_again"
    STAY_CLOSED = "stay_closed"


@attrs.define
class ChannelStream:
    """One stream of the channel: its service, link, state and the CP_numbers awaiting an ECM_response."""

    service: str
    link: LinkSpec
    nominal_CP_duration: int
    state: SCSStreamState = SCSStreamState.IDLE
    outstanding: collections.deque = attrs.field(factory=collections.deque)
    last_status: m.StreamStatus | None = None
    refusals: int = 0
    after_close: AfterClose = AfterClose.SET_UP_AGAIN

    @property
    def stream_id(self) -> int:
        return self.link.ECM_stream_id


class SetupWindow:
    """The streams whose first stream_setup waits for a place: at most *limit* set-ups from the
    queue await their answer at a time (``Timing.setups_in_flight``; 0 = no limit)."""

    def __init__(self) -> None:
        self.queue: collections.deque[ChannelStream] = collections.deque()
        #: stream ids set up from the queue, possibly still awaiting their stream_status
        self.in_flight: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self.queue)

    def clear(self) -> None:
        self.queue.clear()
        self.in_flight.clear()

    def due(self, streams: dict[int, ChannelStream], limit: int) -> list[ChannelStream]:
        """The queued (still IDLE) streams to set up now; an answer, a refusal or a time-out (the
        stream left WAIT_ST_STATUS) freed their places."""
        waiting = SCSStreamState.WAIT_ST_STATUS
        in_flight = self.in_flight = {sid for sid in self.in_flight if streams[sid].state is waiting}
        out: list[ChannelStream] = []
        queue = self.queue
        while queue and (limit <= 0 or len(in_flight) < limit):
            stream = queue.popleft()
            if stream.state is SCSStreamState.IDLE:
                out.append(stream)
                in_flight.add(stream.stream_id)
        return out


_PARAM_NAMES = {p.code: name for name, p in ECMG_SCS_PARAMS.items()}
_OFFSET_CODES = (ErrorStatus.INVALID_MESSAGE, ErrorStatus.UNSUPPORTED_PROTOCOL_VERSION, ErrorStatus.UNKNOWN_MESSAGE_TYPE)


def channel_refusal_text(codes: tuple[int, ...], info: tuple[bytes, ...]) -> str:
    """``ECMG refused channel_setup: channel_error 0x0005 (unknown Super_CAS_id value) about Super_CAS_id``."""
    names = ", ".join(f"{c:#06x} ({error_name(Interface.ECMG_SCS, c)})" for c in codes)
    about = ""
    if info and len(info[0]) == 2 and codes and codes[0] not in _OFFSET_CODES:
        name = _PARAM_NAMES.get(int.from_bytes(info[0], "big"))
        about = f" about {name}" if name else ""
    return f"ECMG refused channel_setup: channel_error {names}{about}"


__all__ = [
    "AfterClose",
    "CHANNEL_TIMERS",
    "CONFIGURATION_CODES",
    "ChannelStream",
    "ChannelTimer",
    "ChannelTimerKind",
    "INVALID_MESSAGE",
    "SCSChannelState",
    "SCSStreamState",
    "STREAM_ID_IN_USE",
    "STREAM_TIMERS",
    "SetupWindow",
    "UNKNOWN_CHANNEL",
    "UNKNOWN_STREAM",
    "UNRECOVERABLE",
    "channel_refusal_text",
]
