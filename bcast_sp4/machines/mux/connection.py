"""The MUX end of one TCP connection (one data channel) of EMMG/PDG<=>MUX, pure.

TS 103 197 §6 (digest ``simulcrypt.md`` §4, §5.2, §5.4, §6.3-§6.5). One :class:`MuxConnection`
per TCP connection turns messages into calls of the :class:`~.core.MuxCore`'s public API. The
receive prologue, channel_test / channel_close / stream_test, peer notes, invalid counting and the
error replies are the shared server channel's (:mod:`bcast_sp4.machines.channel`); here is what
only a MUX checks: the client_id in every message, routes, bandwidth, data_provision.

Per-connection state table (``own`` = the channel this connection set up; ``Send`` replies on TCP)::

  state         input                  checks (error_status)                              reply / next
  NO_CHANNEL    channel_setup          version accepted (0x0002); client_id allowed       channel_status (the
                                       (0x000E); section_TSpkt_flag among the client's    client's flag)
                                       section_TSpkt_flags, default 0x02 only (0x000D);   -> CHANNEL_OPEN
                                       (client_id, channel id) not active (0x0011); client
                                       below its max_channels (0x0014); MUX below
                                       max_channels (0x0007)
  CHANNEL_OPEN  channel_setup          same id: 0x0011; other id: 0x0007 (one channel     channel_error
                                       per TCP connection)
  CHANNEL_OPEN  channel_test           own channel (0x0006), own client_id (0x000E)       channel_status
  CHANNEL_OPEN  channel_close          own channel (0x0006), own client_id (0x000E)       (none); streams
                                                                                           freed -> NO_CHANNEL
  CHANNEL_OPEN  stream_setup           own channel (0x0006), client (0x000E); stream id   stream_status
                                       free (0x0012); data_id given (v1: 0x000C); a route
                                       for (client_id, data_id) (0x0010); data_type =
                                       route's (LTKM 0x00, STKM 0x02, data: configured)
                                       (0x000D); a classic (0x00/0x01) channel feeds data
                                       routes only (0x000D); route not fed by another stream
                                       (0x0013); streams on channel (0x0008) and on MUX
                                       (0x0009)
  CHANNEL_OPEN  stream_test            known stream (0x0005)                              stream_status
  CHANNEL_OPEN  stream_BW_request      known stream (0x0005)                              stream_BW_allocation
  CHANNEL_OPEN  stream_close_request   known stream (0x0005)                              stream_close_response
  CHANNEL_OPEN  data_provision (TCP)   own channel (0x0006), client (0x000E); stream by   (none)
                                       data_stream_id (0x0005) with the same data_id
                                       (0x0010), or by data_id when the ids are absent
                                       (0x0010); each datagram <= max_datagram_size
                                       (0x000D, that datagram dropped); classic channel:
                                       whole sections / TS packets (0x000D, dropped,
                                       :mod:`.classic`); overrun (0x000F)
  NO_CHANNEL    channel-level message  -                                                  channel_error 0x0006
  NO_CHANNEL    stream-level message,  -                                                  stream_error 0x0006
                data_provision                                                            (channel_error when
                                                                                           no stream id)
  *             channel_status, stream_status (answers to tests), *_error: noted, no reply
  *             stream_close_response, stream_BW_allocation (MUX -> EMMG only): channel_error 0x0001
  *             message in a version other than the channel's: channel_error 0x0002
  *             codec error: channel_error with its code (channel id read, else own, else 0)
  *             TCP closed: channel and streams freed, queued LTKMs dropped (counted)

Decisions where the sources are silent or differ: one data channel per TCP connection (all
examined implementations, [UNCONFIRMED] as a rule); v1, when enabled, is taken with the known
deviation of a data_id in stream_setup / data_provision (the adapter decodes with
``Deviation.V1_DATA_ID`` tolerated; each tolerated stream_setup is noted, and its stream_status
echoes data_id as the deviating peer expects, :mod:`.classic`); a client_id may hold ``max_channels``
channels at once (default 1: its second channel is "client_id in use"; an SCS and an LTKM
generator sharing one BSM id need 2); a stream-level message naming an unknown channel is
answered with stream_error 0x0006 (TSDuck); error replies count as invalid messages and
``max_invalid_messages`` of them in a row close the connection (not 0x000F, which is about rate).
"""

from __future__ import annotations

from typing import Any, Sequence

from ...wire import Message
from ...wire import emmg_mux as m
from ...wire.errors import EMMGMUXErrorStatus as ErrorStatus
from ...wire.params import EMMG_MUX_PARAMS, SectionTSpktFlag, describe_flag, describe_flags
from ..channel import (
    EMMG_MUX_CHANNEL,
    PROTOCOL_VERSION_OFFSET,
    ServerChannel,
    ServerChannelState,
    emmg_mux_channel_error,
    emmg_mux_stream_error,
)
from ..outputs import Notify, Output, Send
from . import classic
from .config import ClientConfig
from .core import MuxCore, MuxStream

# error_information: the offending parameter_type (digest §5.3)
_CLIENT_ID = EMMG_MUX_PARAMS["client_id"].code
_SECTION_TSPKT_FLAG = EMMG_MUX_PARAMS["section_TSpkt_flag"].code
_DATA_TYPE = EMMG_MUX_PARAMS["data_type"].code
_DATA_ID = EMMG_MUX_PARAMS["data_id"].code
_MISSING = ErrorStatus.MISSING_MANDATORY_PARAMETER


class MuxConnection(ServerChannel):
    """The MUX end of one TCP connection (one data channel)."""

    INTERFACE = EMMG_MUX_CHANNEL

    def __init__(self, core: MuxCore, peer_host: str | None = None) -> None:
        super().__init__(
            core.config,
            {
                m.ChannelSetup: self._channel_setup,
                m.StreamSetup: self._stream_setup,
                m.StreamCloseRequest: self._stream_close_request,
                m.StreamBWRequest: self._stream_bw_request,
                m.DataProvision: self._data_provision,
            },
        )
        self.core = core
        #: the TCP peer's address: by default UDP for this connection's client_id must come from it
        self.peer_host = peer_host
        self.client: ClientConfig | None = None
        self.streams: dict[int, MuxStream] = {}
        #: the open channel's section_TSpkt_flag (0x02 unless the client allows classic data)
        self.section_TSpkt_flag: int = SectionTSpktFlag.BCAST
        #: v1 streams set up with data_id (the tolerated deviation): their stream_status echoes it
        self.echo_data_id: set[int] = set()

    @property
    def client_id(self) -> int | None:
        return self.client.client_id if self.client is not None else None

    # -- replies -----------------------------------------------------------------------------

    def channel_error(
        self, code: int, info: int | None = None, *, channel_id: int | None = None, version: int | None = None,
        client_id: int | None = None,
    ) -> m.ChannelError:
        return emmg_mux_channel_error(
            self._reply_version(version),
            self.client_id or 0 if client_id is None else client_id,
            self.channel_id or 0 if channel_id is None else channel_id,
            code,
            info,
        )

    def stream_error(
        self, stream_id: int, code: int, info: int | None = None, *, channel_id: int | None = None,
        version: int | None = None, client_id: int | None = None,
    ) -> m.StreamError:
        return emmg_mux_stream_error(
            self._reply_version(version),
            self.client_id or 0 if client_id is None else client_id,
            self.channel_id or 0 if channel_id is None else channel_id,
            stream_id,
            code,
            info,
        )

    def _reply_fields(self, reply: Message) -> dict[str, Any]:
        return {"channel_id": reply.data_channel_id, "client_id": reply.client_id}

    # -- the sender: every message names the client_id ---------------------------------------

    def _sender_ids(self, msg: Message) -> dict[str, int]:
        return {"client_id": msg.client_id}

    def _check_sender(self, msg: Message, stream_id: int | None) -> list[Output] | None:
        if msg.client_id == self.client_id:
            return None
        return self._invalid(self._wrong_client(msg, stream_id), "wrong_client_id")

    def _wrong_client(self, msg: Message, stream_id: int | None) -> Message:
        if stream_id is None:
            return self.channel_error(ErrorStatus.UNKNOWN_CLIENT_ID, _CLIENT_ID, client_id=msg.client_id)
        return self.stream_error(stream_id, ErrorStatus.UNKNOWN_CLIENT_ID, _CLIENT_ID, client_id=msg.client_id)

    # -- channel messages --------------------------------------------------------------------

    def _channel_setup(self, msg: m.ChannelSetup, now: float, _received_at: float | None) -> list[Output]:
        if self.state is ServerChannelState.CHANNEL_OPEN:
            return self._second_channel_setup(msg)
        ch = msg.data_channel_id
        core, config = self.core, self.config
        version = msg.protocol_version
        code = info = None
        client = config.clients.get(msg.client_id)
        why: dict[str, str] = {}
        if version not in config.versions:
            code, info = ErrorStatus.UNSUPPORTED_PROTOCOL_VERSION, PROTOCOL_VERSION_OFFSET
            why["reason"] = f"client asked protocol_version {version}; this MUX accepts {sorted(config.versions)}"
        elif client is None:
            code, info = ErrorStatus.UNKNOWN_CLIENT_ID, _CLIENT_ID
            why["reason"] = f"client asked client_id {msg.client_id:#010x}; no [[client]] of this MUX has it"
        elif msg.section_TSpkt_flag not in client.section_TSpkt_flags:
            code, info = ErrorStatus.INVALID_VALUE, _SECTION_TSPKT_FLAG
            why["reason"] = (
                f"client asked section_TSpkt_flag {describe_flag(msg.section_TSpkt_flag)}; client "
                f"{msg.client_id:#010x} is allowed {describe_flags(client.section_TSpkt_flags)} "
                "(section_TSpkt_flags of its [[client]])"
            )
        else:
            code = core.channel_refusal(client, ch)
        if code is not None:
            return self._invalid(
                self.channel_error(code, info, channel_id=ch, client_id=msg.client_id, version=version),
                "channel_refused",
                error_status=code,
                client_id=msg.client_id,
                **why,
            )
        core.open_channel(self, msg.client_id, ch)
        self.state = ServerChannelState.CHANNEL_OPEN
        self.client, self.channel_id, self.version = client, ch, version
        self.section_TSpkt_flag = msg.section_TSpkt_flag
        return self._ok(
            Send(self._channel_status()),
            Notify("channel_open", {"channel_id": ch, "client_id": msg.client_id, "version": version,
                                    "section_TSpkt_flag": msg.section_TSpkt_flag}),
        )

    def _channel_status(self) -> m.ChannelStatus:
        return m.ChannelStatus(
            protocol_version=self.version,
            client_id=self.client_id,
            data_channel_id=self.channel_id,
            section_TSpkt_flag=self.section_TSpkt_flag,
        )

    def _free_channel(self, why: str, now: float | None) -> list[Output]:
        core = self.core
        outputs: list[Output] = []
        for stream in self.streams.values():
            outputs += core.close_stream(stream, now, why)
        count = len(self.streams)
        self.streams.clear()
        core.close_channel(self, self.client_id, self.channel_id)
        outputs.append(
            Notify("channel_closed", {"channel_id": self.channel_id, "client_id": self.client_id, "why": why, "streams": count})
        )
        self.state = ServerChannelState.NO_CHANNEL
        self.client = self.channel_id = self.version = None
        self.section_TSpkt_flag = SectionTSpktFlag.BCAST
        self.echo_data_id.clear()
        return outputs

    # -- stream messages ---------------------------------------------------------------------

    def _stream_setup(self, msg: m.StreamSetup, now: float, _received_at: float | None) -> list[Output]:
        refused = self._stream_channel(msg)
        if refused:
            return refused
        core, config = self.core, self.config
        route = core.routes.get((self.client_id, msg.data_id))
        code = info = None
        why: dict[str, str] = {}
        if msg.data_stream_id in self.streams:
            code = ErrorStatus.DATA_STREAM_ID_IN_USE
        elif msg.data_id is None:  # v1 as TS 103 197 has it: nothing to route by
            code, info = _MISSING, _DATA_ID
            why["reason"] = "v1 stream_setup without data_id: the MUX routes streams by data_id"
        elif route is None:
            code, info = ErrorStatus.UNKNOWN_DATA_ID, _DATA_ID
        elif msg.data_type != route.config.expected_data_type:
            code, info = ErrorStatus.INVALID_VALUE, _DATA_TYPE
            why["reason"] = f"data_type {msg.data_type:#04x}; route needs {route.config.expected_data_type:#04x}"
        elif not classic.route_fits(route.config.kind, self.section_TSpkt_flag):
            code, info = ErrorStatus.INVALID_VALUE, _DATA_TYPE
            why["reason"] = (f"{route.config.kind.value} route on a channel set up with section_TSpkt_flag "
                             f"{describe_flag(self.section_TSpkt_flag)}; it needs 0x02")
        elif route.stream is not None:
            code, info = ErrorStatus.DATA_ID_IN_USE, _DATA_ID
        elif len(self.streams) >= config.max_streams_per_channel:
            code = ErrorStatus.TOO_MANY_DATA_STREAMS_ON_CHANNEL
        elif core.streams >= config.max_streams:
            code = ErrorStatus.TOO_MANY_DATA_STREAMS_ON_MUX
        if code is not None:
            return self._invalid(
                self.stream_error(msg.data_stream_id, code, info), "stream_refused", error_status=code, data_id=msg.data_id,
                **why,
            )
        stream = core.open_stream(self, self.channel_id, msg.data_stream_id, msg.data_id, msg.data_type, route, now)
        stream.section_TSpkt_flag = self.section_TSpkt_flag
        self.streams[stream.stream_id] = stream
        noted = [Notify("deviation_tolerated", {"deviation": d.value, "stream_id": stream.stream_id}, "warn")
                 for d in msg.deviations]
        if msg.deviations:
            self.echo_data_id.add(stream.stream_id)
        return self._ok(
            *noted,
            Send(self._stream_status(stream)),
            Notify(
                "stream_open",
                {
                    "channel_id": self.channel_id,
                    "stream_id": stream.stream_id,
                    "client_id": self.client_id,
                    "data_id": stream.data_id,
                    "kind": route.config.kind.value,
                    "allocation": stream.allocation,
                },
            ),
        )

    def _stream_status(self, stream: MuxStream) -> m.StreamStatus:
        if self.version == 1 and stream.stream_id in self.echo_data_id:
            return classic.StreamStatusEchoingDataId(
                protocol_version=1, client_id=self.client_id, data_channel_id=self.channel_id,
                data_stream_id=stream.stream_id, data_id=stream.data_id, data_type=stream.data_type,
            )
        return m.StreamStatus(
            protocol_version=self.version,
            client_id=self.client_id,
            data_channel_id=self.channel_id,
            data_stream_id=stream.stream_id,
            data_id=stream.data_id if self.version >= 2 else None,  # v1 stream_status has no data_id
            data_type=stream.data_type,
        )

    def _stream_close_request(self, msg: m.StreamCloseRequest, now: float, _received_at: float | None) -> list[Output]:
        stream, refused = self._known_stream(msg)
        if refused:
            return refused
        del self.streams[stream.stream_id]
        self.echo_data_id.discard(stream.stream_id)
        outputs = self.core.close_stream(stream, now, "stream_close_request")
        return self._ok(
            Send(
                m.StreamCloseResponse(
                    protocol_version=self.version,
                    client_id=self.client_id,
                    data_channel_id=self.channel_id,
                    data_stream_id=stream.stream_id,
                )
            ),
            *outputs,
            Notify("stream_closed", {"channel_id": self.channel_id, "stream_id": stream.stream_id, "data_id": stream.data_id}),
        )

    def _stream_bw_request(self, msg: m.StreamBWRequest, now: float, _received_at: float | None) -> list[Output]:
        stream, refused = self._known_stream(msg)
        if refused:
            return refused
        grant = self.core.allocate(stream, msg.bandwidth, now)
        return self._ok(
            Send(
                m.StreamBWAllocation(
                    protocol_version=self.version,
                    client_id=self.client_id,
                    data_channel_id=self.channel_id,
                    data_stream_id=stream.stream_id,
                    bandwidth=grant,
                )
            ),
            Notify(
                "bandwidth_allocated",
                {"channel_id": self.channel_id, "stream_id": stream.stream_id, "client_id": self.client_id,
                 "data_id": stream.data_id, "requested": msg.bandwidth, "allocation": grant},
            ),
        )

    def _data_provision(self, msg: m.DataProvision, now: float, _received_at: float | None) -> list[Output]:
        count = len(msg.datagram)
        if self.state is not ServerChannelState.CHANNEL_OPEN or (
            msg.data_channel_id is not None and msg.data_channel_id != self.channel_id
        ):
            ids = {"channel_id": msg.data_channel_id or 0, "client_id": msg.client_id, "version": msg.protocol_version}
            if msg.data_stream_id is not None:
                reply = self.stream_error(msg.data_stream_id, ErrorStatus.UNKNOWN_DATA_CHANNEL_ID, **ids)
            else:
                reply = self.channel_error(ErrorStatus.UNKNOWN_DATA_CHANNEL_ID, **ids)
            return self._refused(reply, "data_before_setup", count, now, None)
        if msg.client_id != self.client_id:
            return self._refused(self._wrong_client(msg, msg.data_stream_id), "wrong_client_id", count, now, None)
        if msg.data_stream_id is not None:
            stream = self.streams.get(msg.data_stream_id)
            if stream is None:
                reply = self.stream_error(msg.data_stream_id, ErrorStatus.UNKNOWN_DATA_STREAM_ID)
                return self._refused(reply, "unknown_stream", count, now, None)
            if msg.data_id is not None and stream.data_id != msg.data_id:  # v1: data_id optional (deviation)
                reply = self.stream_error(stream.stream_id, ErrorStatus.UNKNOWN_DATA_ID, _DATA_ID)
                return self._refused(reply, "wrong_data_id", count, now, stream)
        else:
            stream = next((s for s in self.streams.values() if s.data_id == msg.data_id), None)
            if stream is None:
                reply = self.channel_error(ErrorStatus.UNKNOWN_DATA_ID, _DATA_ID)
                return self._refused(reply, "unknown_data_id", count, now, None)
        self.invalid_in_a_row = 0
        return self.core.ingest(stream, msg.datagram, now, tcp=True)

    def data_run(
        self, version: int, client_id: int, channel_id: int, stream_id: int, data_id: int, datagrams: Sequence[bytes],
        now: float,
    ) -> list[Output] | None:
        """Several data_provisions of one datagram each with the same ids, taken apart by the adapter.

        The hot path of TCP ingest: only when each of them would be accepted as it is (open
        channel of that version, own client_id and channel, a stream of that id fed with that
        data_id); then the same as :meth:`receive` of each in turn (:meth:`.core.MuxCore.ingest_run`).
        Anything else: ``None``, and the caller decodes them in full and hands them to
        :meth:`receive` one by one, so every error is judged and answered in one place.
        """
        if (self.state is not ServerChannelState.CHANNEL_OPEN or version != self.version or client_id != self.client_id
                or channel_id != self.channel_id):
            return None
        stream = self.streams.get(stream_id)
        if stream is None or stream.data_id != data_id:
            return None
        self._now = now
        self.invalid_in_a_row = 0
        core = self.core
        outputs = core.ingest_run(stream, datagrams, now)
        if outputs is not None:
            return outputs
        outputs = []
        for datagram in datagrams:
            try:
                outputs += core.ingest(stream, (datagram,), now, tcp=True)
            except Exception as exc:  # our bug: answered as receive() answers a handler's exception
                msg = m.DataProvision(protocol_version=version, client_id=client_id, data_channel_id=channel_id,
                                      data_stream_id=stream_id, data_id=data_id, datagram=(datagram,))
                outputs += self._internal_error(msg, exc)
        return outputs

    def _refused(self, reply: Message, event: str, count: int, now: float, stream: MuxStream | None) -> list[Output]:
        route = stream.route.key if stream is not None else None
        return self._invalid(reply, event) + self.core.drop(route, "refused", count, now, client_id=self.client_id)


__all__ = ["MuxConnection"]
