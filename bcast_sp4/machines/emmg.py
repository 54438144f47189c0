"""EMMG / LTKM generator side of EMMG/PDG<=>MUX: setup, bandwidth, paced data_provision, pure.

TS 103 197 §6 (digest ``simulcrypt.md`` §4, §5.2, §6.3-§6.5); OMA BCAST SP-4 seed §14.1.1.3.4-.5:
the BSM's LTKM generator opens one channel (client_id 0x0001xxxx, section_TSpkt_flag 0x02), one
stream per data_id (data_type 0x00), asks for bandwidth and sends LTKMs as ``datagram`` parameters
over TCP or UDP, never faster than allocated.

One :class:`EMMGClient` per process outlives TCP connections: its per-stream LTKM queues survive a
reconnect, so nothing queued is lost; after every (re)connect it repeats the whole setup and resumes.
Inputs: :meth:`connection_made`, :meth:`receive` (decoded messages or the codec's error),
:meth:`timer_fired`, :meth:`connection_lost`, :meth:`enqueue` / :meth:`poke` (new LTKMs),
:meth:`shutdown`; ``now`` is always passed in. Outputs: ``Send`` (TCP), :class:`SendDatagram`
(data_provision to the MUX's UDP port), ``Close``, ``Notify``, :class:`StartTimer` /
:class:`CancelTimer` (keys ``"response"``, ``"pace"``, ``"udp_end_wait"``), :class:`Delivered` (the
tokens of queued LTKMs just handed to the transport: the role moves spool files aside) and
:class:`Ready` (setup complete).

State table (streams are set up, then given bandwidth, one after the other, in config order)::

  state               input                               action                                  next
  DISCONNECTED        connection_made                     channel_setup; timer response           WAIT_CHANNEL_STATUS
  WAIT_CHANNEL_STATUS channel_status (our client, channel, stream_setup(first); timer response     WAIT_STREAM_STATUS
                      flag 0x02)
  WAIT_STREAM_STATUS  stream_status (our ids, data_id,    next stream_setup, or first             WAIT_STREAM_STATUS /
                      data_type)                          stream_BW_request; timer response       WAIT_BW_ALLOCATION
  WAIT_BW_ALLOCATION  stream_BW_allocation (our ids)      rate := allocation; next request, or    WAIT_BW_ALLOCATION /
                                                          Ready + pace                            READY
  READY               stream_BW_allocation (unsolicited)  rate := allocation; pace                READY
  READY               timer pace / enqueue                data_provision while the stream's       READY
                                                          token bucket allows; timer pace
  WAIT_STREAM_STATUS, shutdown                            stream_close_request per stream set up  CLOSING /
  WAIT_BW_ALLOCATION                                      (none: channel_close; Close)            CLOSED
  READY               shutdown                            TCP: stream_close_request(s); UDP:      CLOSING /
                                                          first wait udp_end_wait (100 ms, as     DRAINING
                                                          TSDuck) so UDP data is not overtaken
  DRAINING            timer udp_end_wait                  stream_close_request(s)                 CLOSING
  CLOSING             stream_close_response (last)        channel_close; Close                    CLOSED
  CLOSING             timer response (close_timeout)      channel_close; Close (warned)           CLOSED
  WAIT_*              channel_error, stream_error,        Close, the reason naming the field and  (DISCONNECTED on
                      status with other ids or flag,      both values (ClientService reconnects   connection_lost)
                      timeout                             with back-off, lengthened per failure)
  READY               channel_error / stream_error        noted (0x000F warned; 0x7001: Close)    READY
  channel open        channel_test                        channel_status (own parameters)         same
  channel open        stream_test                         stream_status, stream_error 0x0005      same
                                                          for a stream not set up
  *                   message only an EMMG sends          channel_error 0x0001                    same
  *                   message in another version          channel_error 0x0002                    same
  *                   codec error                         channel_error with its code             same
  *                   a handler raises (our bug)          channel_error 0x7000; internal_error    same
  *                   connection_lost                     timers cancelled; queues kept           DISCONNECTED
  CLOSED              anything                            ignored                                 CLOSED

Pacing (:mod:`.pacing`): per stream a token bucket at the allocation (kbit/s of datagram payload)
with ``pacing_burst`` seconds of depth (default 10 ms: enough to absorb timer lateness, so the long
run equals the allocation). A message goes out while the bucket is not in debt; over any window
*T* at most ``allocation * T + depth + one message`` bytes leave. An allocation of 0 stops the
stream until the MUX grants more. A stream_BW_allocation without a bandwidth value means "what was
requested" (the MUX did not restrict it; TSDuck's MUX omits it when unlimited) -- a decision,
TSDuck's own EMMG reads it as 0.

Invalid messages from the MUX are answered (channel_error) and counted; ``max_invalid_messages``
in a row close the connection, like the MUX and the ECMG do.

Configuration, states, outputs and the set-up failure texts are in :mod:`.emmg_records` (imported
from here as before).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

from ..wire import Message, PeerProtocolError
from ..wire import emmg_mux as m
from ..wire.errors import EMMGMUXErrorStatus as ErrorStatus
from ..wire.params import DataType, SectionTSpktFlag, describe_flag
from .channel import (
    MESSAGE_TYPE_OFFSET,
    PROTOCOL_VERSION_OFFSET,
    InvalidCounting,
    emmg_mux_channel_error,
    emmg_mux_stream_error,
    internal_error,
    peer_error_fields,
)
from .emmg_records import (
    CHANNEL_OPEN,
    DATAGRAM_TLV,
    SETTING_UP,
    TCP_OVERHEAD,
    UDP_OVERHEAD,
    Delivered,
    EMMGConfig,
    EMMGState,
    EMMGStreamConfig,
    EMMGStreamState,
    Ready,
    SendDatagram,
    differences,
    refusal_text,
)
from .outputs import CancelTimer, Close, Notify, Output, Send, StartTimer
from .pacing import TokenBucket, kbit_to_bytes


class EMMGClient(InvalidCounting):
    """The EMMG/PDG client of EMMG<=>MUX: its protocol state and LTKM queues (one per process).

    It outlives the TCP connections to the MUX (each one sets the channel up again).
    """

    def __init__(self, config: EMMGConfig) -> None:
        self.config = config
        self.state = EMMGState.DISCONNECTED
        self.streams: dict[int, EMMGStreamState] = {s.data_stream_id: EMMGStreamState(s) for s in config.streams}
        self.by_data_id: dict[int, EMMGStreamState] = {s.config.data_id: s for s in self.streams.values()}
        self._order = [s.data_stream_id for s in config.streams]
        self._step = 0  # index into _order during setup
        self._closing: set[int] = set()
        self.invalid_in_a_row = 0
        self.connections = 0
        #: the ids every message of our channel carries
        self._ids = {"protocol_version": config.protocol_version, "client_id": config.client_id,
                     "data_channel_id": config.data_channel_id}
        self._table: dict[tuple[EMMGState, type], Callable[[Any, float], list[Output]]] = {
            (EMMGState.WAIT_CHANNEL_STATUS, m.ChannelStatus): self._on_channel_status,
            (EMMGState.WAIT_STREAM_STATUS, m.StreamStatus): self._on_stream_status,
            (EMMGState.WAIT_BW_ALLOCATION, m.StreamBWAllocation): self._on_bw_allocation,
            (EMMGState.READY, m.StreamBWAllocation): self._on_bw_allocation,
            (EMMGState.DRAINING, m.StreamBWAllocation): self._on_bw_allocation,
            (EMMGState.CLOSING, m.StreamCloseResponse): self._on_close_response,
        }

    # -- LTKM intake ---------------------------------------------------------------------------

    def room(self, data_id: int) -> int:
        """How many more LTKMs the stream of *data_id* can queue."""
        stream = self.by_data_id[data_id]
        return max(0, stream.config.max_queue - len(stream.queue))

    def queued(self, data_id: int) -> int:
        """How many LTKMs wait in the queue of *data_id*."""
        return len(self.by_data_id[data_id].queue)

    def discard_queued(self, data_id: int) -> int:
        """Empty the queue of *data_id* (what waits there has been superseded); how many were dropped.

        :raises KeyError: no stream for *data_id*.
        """
        queue = self.by_data_id[data_id].queue
        count = len(queue)
        queue.clear()
        return count

    def enqueue(self, data_id: int, datagram: bytes, token: Hashable | None = None) -> bool:
        """Queue one LTKM for *data_id*; ``False`` when the queue is full.

        :param token: returned in :class:`Delivered` once the LTKM is sent (e.g. its spool path).
        :raises KeyError: no stream for *data_id*.
        :raises ValueError: empty, or too long for one data_provision on this transport.
        """
        stream = self.by_data_id[data_id]
        if not 1 <= len(datagram) <= self.config.max_datagram:
            raise ValueError(f"LTKM of {len(datagram)} bytes outside 1..{self.config.max_datagram}")
        if len(stream.queue) >= stream.config.max_queue:
            return False
        stream.queue.append((bytes(datagram), token))
        return True

    def requeue(self, data_id: int, datagrams: tuple[bytes, ...], tokens: tuple[Hashable | None, ...]) -> None:
        """Put LTKMs whose UDP send failed back at the head of their queue, in order.

        The queue may exceed ``max_queue`` by these few: they were already accepted once.
        """
        stream = self.by_data_id[data_id]
        tokens = tuple(tokens) + (None,) * (len(datagrams) - len(tokens))
        for datagram, token in reversed(list(zip(datagrams, tokens))):
            stream.queue.appendleft((datagram, token))
        stream.sent_datagrams -= len(datagrams)
        stream.sent_bytes -= sum(len(d) for d in datagrams)

    def poke(self, now: float) -> list[Output]:
        """New LTKMs were queued: send what the allocation allows now."""
        if self.state in (EMMGState.READY, EMMGState.DRAINING):
            return self._pump(now)
        return []

    # -- connection events -------------------------------------------------------------------

    def connection_made(self, now: float) -> list[Output]:
        """A TCP connection to the MUX is up: start the setup."""
        if self.state is EMMGState.CLOSED:
            return [Close("session closed", "info")]
        self.connections += 1
        self.state = EMMGState.WAIT_CHANNEL_STATUS
        self.invalid_in_a_row = 0
        for stream in self.streams.values():
            stream.open = False
            stream.allocation = None
            stream.bucket = TokenBucket(rate=0.0, depth=0.0, stamp=now)
        config = self.config
        return [
            Send(m.ChannelSetup(**self._ids, section_TSpkt_flag=SectionTSpktFlag.BCAST)),
            StartTimer("response", config.response_timeout),
            Notify("connected", {"client_id": config.client_id, "channel_id": config.data_channel_id,
                                 "connection": self.connections}),
        ]

    def connection_lost(self, now: float) -> list[Output]:
        """The TCP connection is gone: the MUX has freed everything; queues stay for the next one."""
        outputs: list[Output] = [CancelTimer("response"), CancelTimer("pace"), CancelTimer("udp_end_wait")]
        if self.state is not EMMGState.CLOSED:
            fields = {"state": self.state.value, "queued": sum(len(s.queue) for s in self.streams.values())}
            outputs.append(Notify("disconnected", fields, "info" if self.state is EMMGState.DISCONNECTED else "warn"))
            self.state = EMMGState.DISCONNECTED
        for stream in self.streams.values():
            stream.open = False
        return outputs

    def timer_fired(self, key: str, now: float) -> list[Output]:
        if key == "pace":
            return self.poke(now)
        if key == "udp_end_wait" and self.state is EMMGState.DRAINING:
            return self._close_streams()
        if key == "response" and self.state is EMMGState.CLOSING:
            # bounded wait for stream_close_response: the channel is closed in order all the same
            self.state = EMMGState.CLOSED
            fields = {"state": "CLOSING", "unanswered": sorted(self._closing)}
            return [Notify("close_timeout", fields, "warn"), Send(self._channel_close()), Close("shutdown (close timeout)", "info")]
        if key == "response" and self.state in SETTING_UP:
            return [Notify("timeout", {"state": self.state.value}, "warn"), Close(f"no answer in {self.state.value}")]
        return []

    def shutdown(self, now: float) -> list[Output]:
        """Close streams and channel in order, then the connection (or just stop when not ready)."""
        state = self.state
        if state is EMMGState.READY:
            if self.config.udp:
                self.state = EMMGState.DRAINING
                return [CancelTimer("pace"), StartTimer("udp_end_wait", self.config.udp_end_wait)]
            return [CancelTimer("pace")] + self._close_streams()
        if state in (EMMGState.DRAINING, EMMGState.CLOSING):
            return []
        if state in (EMMGState.WAIT_STREAM_STATUS, EMMGState.WAIT_BW_ALLOCATION):
            # mid-setup: the streams already set up are closed in order too
            return [CancelTimer("response")] + self._close_streams()
        if state in CHANNEL_OPEN:
            self.state = EMMGState.CLOSED
            return [CancelTimer("response"), Send(self._channel_close()), Close("shutdown", "info")]
        self.state = EMMGState.CLOSED
        return [CancelTimer("response"), Close("shutdown", "info")] if state is not EMMGState.DISCONNECTED else []

    # -- messages ----------------------------------------------------------------------------

    def receive(self, item: Message | PeerProtocolError, now: float) -> list[Output]:
        """Handle one message from the MUX (or the codec's error for one).

        An exception while handling it (our bug) answers channel_error 0x7000 and is notified as
        ``internal_error``; the channel and its streams stay as they are.
        """
        try:
            return self._receive(item, now)
        except Exception as exc:
            name = getattr(item, "NAME", "decode_error")
            return [Send(self._channel_error(ErrorStatus.UNKNOWN_ERROR)), internal_error(name, exc)]

    def _receive(self, item: Message | PeerProtocolError, now: float) -> list[Output]:
        if self.state is EMMGState.CLOSED:
            return []
        if isinstance(item, PeerProtocolError):
            return self._invalid(
                self._channel_error(item.error_status, item.error_information), "decode_error",
                error_status=item.error_status, detail=item.detail,
            )
        if item.protocol_version != self.config.protocol_version:
            return self._invalid(
                self._channel_error(ErrorStatus.UNSUPPORTED_PROTOCOL_VERSION, PROTOCOL_VERSION_OFFSET), "version_mismatch",
                message_version=item.protocol_version,
            )
        handler = self._table.get((self.state, type(item)))
        if handler is not None:
            return handler(item, now)
        kind = type(item)
        if kind is m.ChannelTest:
            return self._on_channel_test(item)
        if kind is m.StreamTest:
            return self._on_stream_test(item)
        if kind in (m.ChannelError, m.StreamError):
            return self._on_error(item)
        if kind in (m.ChannelStatus, m.StreamStatus, m.StreamBWAllocation, m.StreamCloseResponse):
            # An answer we did not wait for (e.g. to a test we never sent): note it, no reply.
            if self.state in SETTING_UP:
                return [Notify("unexpected_answer", {"message_type": item.NAME, "state": self.state.value}, "warn"),
                        Close(f"unexpected {item.NAME} in {self.state.value}")]
            return [Notify("unexpected_answer", {"message_type": item.NAME, "state": self.state.value}, "warn")]
        return self._invalid(
            self._channel_error(ErrorStatus.INVALID_MESSAGE, MESSAGE_TYPE_OFFSET), "wrong_direction", message_type=item.NAME
        )

    def _on_channel_status(self, msg: m.ChannelStatus, now: float) -> list[Output]:
        config = self.config
        faults = differences(msg, {"client_id": config.client_id, "data_channel_id": config.data_channel_id})
        if msg.section_TSpkt_flag != SectionTSpktFlag.BCAST:
            faults.append(f"MUX answered section_TSpkt_flag {describe_flag(msg.section_TSpkt_flag)}; "
                          f"BCAST {self._payload} need 0x02")
        if faults:
            return self._setup_failed("channel_status_mismatch", "; ".join(faults), client_id=msg.client_id,
                                      channel_id=msg.data_channel_id, section_TSpkt_flag=msg.section_TSpkt_flag)
        self.invalid_in_a_row = 0
        self.state = EMMGState.WAIT_STREAM_STATUS
        self._step = 0
        return [Notify("channel_open", {"client_id": config.client_id, "channel_id": config.data_channel_id}),
                Send(self._stream_setup(self._order[0])), StartTimer("response", config.response_timeout)]

    def _on_stream_status(self, msg: m.StreamStatus, now: float) -> list[Output]:
        config = self.config
        stream = self.streams[self._order[self._step]]
        stream_config = stream.config
        faults = differences(msg, {
            "client_id": config.client_id, "data_channel_id": config.data_channel_id,
            "data_stream_id": stream_config.data_stream_id, "data_id": stream_config.data_id,
            "data_type": stream_config.data_type,
        })
        if faults:
            return self._setup_failed("stream_status_mismatch", "; ".join(faults), stream_id=msg.data_stream_id,
                                      data_id=msg.data_id)
        self.invalid_in_a_row = 0
        stream.open = True
        outputs: list[Output] = [
            Notify("stream_open", {"stream_id": stream_config.data_stream_id, "data_id": stream_config.data_id})
        ]
        self._step += 1
        if self._step < len(self._order):
            outputs += [Send(self._stream_setup(self._order[self._step])), StartTimer("response", config.response_timeout)]
            return outputs
        self.state = EMMGState.WAIT_BW_ALLOCATION
        self._step = 0
        return outputs + [Send(self._bw_request(self._order[0])), StartTimer("response", config.response_timeout)]

    def _on_bw_allocation(self, msg: m.StreamBWAllocation, now: float) -> list[Output]:
        config = self.config
        stream = self.streams.get(msg.data_stream_id)
        ours = msg.client_id == config.client_id and msg.data_channel_id == config.data_channel_id
        if not ours or stream is None or not stream.open:
            if self.state is EMMGState.WAIT_BW_ALLOCATION:
                faults = differences(msg, {"client_id": config.client_id, "data_channel_id": config.data_channel_id})
                why = "; ".join(faults) or f"MUX answered data_stream_id {msg.data_stream_id}, a stream not set up"
                return self._setup_failed("allocation_mismatch", why, stream_id=msg.data_stream_id)
            return [Notify("unexpected_answer", {"message_type": msg.NAME, "stream_id": msg.data_stream_id}, "warn")]
        self.invalid_in_a_row = 0
        granted = stream.config.bandwidth if msg.bandwidth is None else msg.bandwidth
        stream.allocation = granted
        rate = kbit_to_bytes(granted)
        stream.bucket.set_rate(rate, rate * config.pacing_burst, now)
        fields = {"stream_id": msg.data_stream_id, "requested": stream.config.bandwidth, "allocation": granted,
                  "stated": msg.bandwidth is not None}
        outputs: list[Output] = [Notify("bandwidth", fields, "warn" if granted == 0 else "info")]
        if self.state is EMMGState.WAIT_BW_ALLOCATION:
            if msg.data_stream_id != self._order[self._step]:
                return outputs
            self._step += 1
            if self._step < len(self._order):
                request = self._bw_request(self._order[self._step])
                return outputs + [Send(request), StartTimer("response", config.response_timeout)]
            self.state = EMMGState.READY
            outputs += [CancelTimer("response"), Ready(), Notify("ready", {"client_id": config.client_id, "udp": config.udp})]
        if self.state is EMMGState.READY:
            outputs += self._pump(now)
        return outputs

    def _on_close_response(self, msg: m.StreamCloseResponse, now: float) -> list[Output]:
        self.invalid_in_a_row = 0
        self._closing.discard(msg.data_stream_id)
        stream = self.streams.get(msg.data_stream_id)
        if stream is not None:
            stream.open = False
        if self._closing:
            return []
        self.state = EMMGState.CLOSED
        return [CancelTimer("response"), Send(self._channel_close()), Close("shutdown complete", "info")]

    def _not_our_channel(self, msg: m.ChannelTest | m.StreamTest) -> list[Output] | None:
        """A test must name our client_id (else 0x000E) and open channel (else 0x0006)."""
        config = self.config
        if msg.client_id != config.client_id:
            code = ErrorStatus.UNKNOWN_CLIENT_ID
        elif self.state not in CHANNEL_OPEN or msg.data_channel_id != config.data_channel_id:
            code = ErrorStatus.UNKNOWN_DATA_CHANNEL_ID
        else:
            return None
        return self._invalid(self._channel_error(code), "unknown_channel")

    def _on_channel_test(self, msg: m.ChannelTest) -> list[Output]:
        refused = self._not_our_channel(msg)
        if refused:
            return refused
        return self._ok(Send(m.ChannelStatus(**self._ids, section_TSpkt_flag=SectionTSpktFlag.BCAST)))

    def _on_stream_test(self, msg: m.StreamTest) -> list[Output]:
        refused = self._not_our_channel(msg)
        if refused:
            return refused
        stream = self.streams.get(msg.data_stream_id)
        if stream is None or not stream.open:
            return self._invalid(self._stream_error(msg.data_stream_id, ErrorStatus.UNKNOWN_DATA_STREAM_ID), "unknown_stream")
        stream_config = stream.config
        return self._ok(
            Send(
                m.StreamStatus(
                    **self._ids, data_stream_id=stream_config.data_stream_id, data_id=stream_config.data_id,
                    data_type=stream_config.data_type,
                )
            )
        )

    def _on_error(self, msg: m.ChannelError | m.StreamError) -> list[Output]:
        fields = {**peer_error_fields(msg), "state": self.state.value}
        if self.state in SETTING_UP:
            why = refusal_text(msg, self.state)
            return [Notify("setup_refused", {**fields, "reason": why}, "warn"), Close(f"setup refused: {why}")]
        if ErrorStatus.UNRECOVERABLE_ERROR in msg.error_status:
            return [Notify("unrecoverable_error", fields, "warn"), Close("unrecoverable error from the MUX")]
        event = "exceeded_bandwidth" if ErrorStatus.EXCEEDED_BANDWIDTH in msg.error_status else "peer_error"
        return [Notify(event, fields, "warn")]

    # -- sending -----------------------------------------------------------------------------

    def _pump(self, now: float) -> list[Output]:
        """Send every message the token buckets allow now; arm the pace timer for the next one."""
        config = self.config
        outputs: list[Output] = []
        wait = None
        limit = config.message_limit - (UDP_OVERHEAD if config.udp else TCP_OVERHEAD)
        per_message = config.datagrams_per_message
        for stream in self.streams.values():
            queue = stream.queue
            if not stream.open:
                continue
            bucket = stream.bucket
            while queue and bucket.ready(now):
                datagrams: list[bytes] = []
                tokens: list[Hashable | None] = []
                size = room = 0
                while queue and len(datagrams) < per_message:
                    datagram, token = queue[0]
                    if datagrams and room + len(datagram) + DATAGRAM_TLV > limit:
                        break
                    queue.popleft()
                    datagrams.append(datagram)
                    tokens.append(token)
                    size += len(datagram)
                    room += len(datagram) + DATAGRAM_TLV
                bucket.take(size)
                stream.sent_datagrams += len(datagrams)
                stream.sent_bytes += size
                outputs += self._data_provision(stream, tuple(datagrams), tuple(tokens))
            if queue:
                delay = bucket.delay(now)
                if wait is None or delay < wait:
                    wait = delay
        if wait is not None and wait != float("inf"):
            outputs.append(StartTimer("pace", wait))
        return outputs

    def _data_provision(
        self, stream: EMMGStreamState, datagrams: tuple[bytes, ...], tokens: tuple[Hashable | None, ...]
    ) -> list[Output]:
        config = self.config
        if config.udp:
            message = m.DataProvision(
                protocol_version=config.protocol_version, client_id=config.client_id, data_id=stream.config.data_id,
                datagram=datagrams,
            )
            return [SendDatagram(message, tokens if any(t is not None for t in tokens) else ())]
        message = m.DataProvision(
            protocol_version=config.protocol_version, client_id=config.client_id, data_channel_id=config.data_channel_id,
            data_stream_id=stream.config.data_stream_id, data_id=stream.config.data_id, datagram=datagrams,
        )
        delivered = tuple(t for t in tokens if t is not None)
        return [Send(message), Delivered(delivered)] if delivered else [Send(message)]

    def _close_streams(self) -> list[Output]:
        config = self.config
        self.state = EMMGState.CLOSING
        self._closing = {sid for sid, s in self.streams.items() if s.open}
        if not self._closing:
            self.state = EMMGState.CLOSED
            return [Send(self._channel_close()), Close("shutdown complete", "info")]
        closes: list[Output] = [
            Send(m.StreamCloseRequest(**self._ids, data_stream_id=sid)) for sid in self._order if sid in self._closing
        ]
        return closes + [StartTimer("response", config.close_timeout)]

    # -- message builders --------------------------------------------------------------------

    def _stream_setup(self, stream_id: int) -> m.StreamSetup:
        stream_config = self.streams[stream_id].config
        return m.StreamSetup(
            **self._ids, data_stream_id=stream_id, data_id=stream_config.data_id, data_type=stream_config.data_type
        )

    def _bw_request(self, stream_id: int) -> m.StreamBWRequest:
        return m.StreamBWRequest(**self._ids, data_stream_id=stream_id, bandwidth=self.streams[stream_id].config.bandwidth)

    def _channel_close(self) -> m.ChannelClose:
        return m.ChannelClose(**self._ids)

    def _channel_error(self, code: int, info: int | None = None) -> m.ChannelError:
        config = self.config
        return emmg_mux_channel_error(config.protocol_version, config.client_id, config.data_channel_id, code, info)

    def _stream_error(self, stream_id: int, code: int) -> m.StreamError:
        config = self.config
        return emmg_mux_stream_error(config.protocol_version, config.client_id, config.data_channel_id, stream_id, code)

    def _setup_failed(self, event: str, reason: str, **fields) -> list[Output]:
        return [Notify(event, {"state": self.state.value, "reason": reason, **fields}, "warn"),
                Close(f"{event} during setup: {reason}")]

    @property
    def _payload(self) -> str:
        """What this client carries, for messages: STKMs (an SCS's link) or LTKMs."""
        return "STKMs" if all(s.data_type == DataType.ECM for s in self.config.streams) else "LTKMs"

    # -- introspection -----------------------------------------------------------------------

    def stats(self) -> dict[int, dict[str, int | None]]:
        """Per data_id: queued, sent datagrams and bytes, current allocation."""
        return {
            s.config.data_id: {"queued": len(s.queue), "sent_datagrams": s.sent_datagrams, "sent_bytes": s.sent_bytes,
                               "allocation": s.allocation}
            for s in self.streams.values()
        }


__all__ = [
    "Delivered",
    "EMMGClient",
    "EMMGConfig",
    "EMMGState",
    "EMMGStreamConfig",
    "Ready",
    "SendDatagram",
]
