"""Framing and dispatch: TCP stream framer, UDP datagram decoder, :func:`decode`.

TS 103 197 §4.4 generic message and §6.1/§6.2 transport (digest ``simulcrypt.md`` §1.2):

* TCP: read the 5-byte header, then ``message_length`` more bytes; any chunking is legal, so
  :class:`Framer` buffers (bytearray, one ``del`` per feed) and cuts whole messages.
* UDP (EMMG/PDG<=>MUX data_provision only): one message per datagram; the header's length
  must account for the datagram exactly.

A message longer than the configured maximum is never buffered: the framer reports
:class:`MessageTooLong` and skips its bytes, so the stream stays in step and the peer gets error
0x0004. Everything else about a message is judged by :func:`decode`, which raises only
:class:`PeerProtocolError` subclasses, whatever the input bytes.
"""

from __future__ import annotations

from .errors import (
    Interface,
    InvalidMessage,
    MessageTooLong,
    PeerProtocolError,
    UnknownMessageType,
    UnknownParameterType,
    UnsupportedVersion,
)
from .message import (
    DECODERS as _DECODERS,
    HEADER,
    HEADER_SIZE,
    MAX_MESSAGE_LENGTH,
    MESSAGE_CLASSES,
    TLV,
    VERSION_GROUPS,
    Deviation,
    Message,
)

_unpack_header = HEADER.unpack_from
_set_deviations = Message._deviations.__set__  # type: ignore[attr-defined]  # slot of _DeviationSlot

#: parameter codes of the ids worth reporting with an error: (channel, stream, client)
_ID_PARAMS = {
    Interface.ECMG_SCS: (0x000E, 0x000F, None),
    Interface.EMMG_MUX: (0x0003, 0x0004, 0x0001),
}


class Framer:
    """Cut a TCP byte stream into whole SimulCrypt messages.

    :param max_length: largest accepted message, header included (at most 65 540, which is
        what the 16-bit message_length allows).
    :param interface: stamped on :class:`MessageTooLong` reports.
    """

    def __init__(self, max_length: int = MAX_MESSAGE_LENGTH, interface: Interface | None = None) -> None:
        if not HEADER_SIZE <= max_length <= MAX_MESSAGE_LENGTH:
            raise ValueError(f"max_length must be {HEADER_SIZE}..{MAX_MESSAGE_LENGTH}, not {max_length}")
        self.max_length = max_length
        self.interface = interface
        self._buffer = bytearray()
        self._skip = 0  # bytes of an over-long message still to discard
        #: ``() -> int``: :attr:`buffered` as a call without a Python frame (a guard asks every turn)
        self.buffered_bytes = self._buffer.__len__

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message (bounded by ``max_length``)."""
        return len(self._buffer)

    def at_boundary(self) -> bool:
        """Whether the framer is between messages: nothing buffered, nothing being skipped (the next
        bytes fed start a message). A caller that handles one whole message of a read itself, at a
        boundary, leaves the framer as :meth:`feed` would have."""
        return not self._buffer and not self._skip

    def pending(self) -> bytes:
        """A copy of the buffered bytes of the unfinished message (for reporting a truncated one)."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list[bytes | MessageTooLong]:
        """Add received bytes; return the messages they complete, in order.

        Each item is a whole message (``bytes``, header included) or a :class:`MessageTooLong`
        standing for a message that was skipped. Bytes of an unfinished message stay buffered.
        """
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data = data[self._skip :]
            self._skip = 0
        buffer = self._buffer
        if not buffer and type(data) is bytes:
            if len(data) >= HEADER_SIZE:
                # One whole message in one read, nothing buffered (a request/response peer): as it is.
                total = HEADER_SIZE + _unpack_header(data, 0)[2]
                if total == len(data) and total <= self.max_length:
                    return [data]
            # Nothing buffered: the messages are cut from the read itself, only its tail is kept.
            source = data
        else:
            buffer += data
            source = buffer
        out: list[bytes | MessageTooLong] = []
        pos = 0
        available = len(source)
        while available - pos >= HEADER_SIZE:
            version, message_type, length = _unpack_header(source, pos)
            total = HEADER_SIZE + length
            if total > self.max_length:
                out.append(
                    MessageTooLong(
                        f"message of {total} bytes exceeds the {self.max_length}-byte limit",
                        interface=self.interface,
                        protocol_version=version,
                        message_type=message_type,
                    )
                )
                if available - pos >= total:
                    pos += total
                    continue
                self._skip = total - (available - pos)
                pos = available
                break
            if available - pos < total:
                break
            out.append(source[pos : pos + total] if source is data else bytes(source[pos : pos + total]))
            pos += total
        if source is data:
            if pos < available:
                buffer += data[pos:]  # the start of the next message
        elif pos:
            del buffer[:pos]
        return out


def decode(
    frame: bytes, interface: Interface | None = None, *, tolerate: frozenset[Deviation] | set | tuple = ()
) -> Message:
    """Decode one whole message.

    :param frame: the message, header included (as cut by :class:`Framer`).
    :param interface: the interface the bytes arrived on; ``None`` infers it from the
        message_type as Wireshark does (digest §1.2).
    :param tolerate: :class:`Deviation` members to accept. A message that breaks only such a
        rule decodes, and its ``deviations`` names what was tolerated; by default (strict) it
        raises as any other violation does.
    :raises PeerProtocolError: a subclass naming the failure; nothing else escapes.
    """
    if type(frame) is not bytes:
        frame = bytes(frame)
    size = len(frame)
    if size < HEADER_SIZE:
        raise InvalidMessage(f"{size} bytes cannot hold a message header", interface=interface, error_information=0)
    version, message_type, length = _unpack_header(frame, 0)
    entry = _DECODERS.get(message_type << 8 | version)
    if entry is not None and length + 5 == size and (interface is None or interface is entry[0]):
        try:
            return entry[1](frame, size, version)
        except PeerProtocolError as exc:
            failure = exc
        cls = MESSAGE_CLASSES[message_type]
        if tolerate and type(failure) is UnknownParameterType:
            relaxed = cls._RELAXED.get((version, failure.error_information))
            if relaxed is not None and relaxed[0] in tolerate:
                try:
                    message = relaxed[1](frame, size, version)
                except PeerProtocolError as exc:
                    failure = exc
                else:
                    _set_deviations(message, frozenset((relaxed[0],)))
                    return message
        failure.interface, failure.protocol_version, failure.message_type = cls.INTERFACE, version, message_type
        failure.channel_id, failure.stream_id, failure.client_id = _salvage_ids(frame, cls.INTERFACE)
        raise failure
    # Something is wrong with the header; report the first fault in the order a reader meets it.
    cls = MESSAGE_CLASSES.get(message_type)
    if interface is None and cls is not None:
        interface = cls.INTERFACE
    context = {"interface": interface, "protocol_version": version, "message_type": message_type}
    if HEADER_SIZE + length != size:
        raise InvalidMessage(
            f"message_length {length} does not match the {size - HEADER_SIZE} bytes after the header",
            error_information=3,
            **context,
        )
    if interface is not None and version not in VERSION_GROUPS[interface]:
        raise UnsupportedVersion(
            f"protocol_version {version} is not a version of {interface.value}", error_information=0, **context
        )
    raise UnknownMessageType(
        f"message_type {message_type:#06x} is not defined on {interface.value if interface else 'any interface'}",
        error_information=1,
        **context,
    )


def decode_datagram(
    datagram: bytes,
    interface: Interface = Interface.EMMG_MUX,
    max_length: int = MAX_MESSAGE_LENGTH,
    *,
    tolerate: frozenset[Deviation] | set | tuple = (),
) -> Message:
    """Decode one UDP datagram, which must hold exactly one message.

    :param tolerate: as for :func:`decode`.
    :raises PeerProtocolError: :class:`MessageTooLong` past *max_length*, :class:`InvalidMessage`
        when the header's length and the datagram's size disagree, else as :func:`decode`.
    """
    if len(datagram) > max_length:
        raise MessageTooLong(
            f"datagram of {len(datagram)} bytes exceeds the {max_length}-byte limit", interface=interface
        )
    return decode(datagram, interface, tolerate=tolerate)


def _salvage_ids(frame: bytes, interface: Interface) -> tuple[int | None, int | None, int | None]:
    """Best-effort channel / stream / client ids from a message that failed to decode."""
    channel_code, stream_code, client_code = _ID_PARAMS[interface]
    found: dict[int, int] = {}
    pos, end = HEADER_SIZE, len(frame)
    while pos + 4 <= end:
        ptype, plen = TLV.unpack_from(frame, pos)
        value = frame[pos + 4 : pos + 4 + plen]
        pos += 4 + plen
        if pos > end:
            break
        if ptype not in found and (
            (ptype in (channel_code, stream_code) and plen == 2) or (ptype == client_code and plen == 4)
        ):
            found[ptype] = int.from_bytes(value, "big")
    return found.get(channel_code), found.get(stream_code), found.get(client_code) if client_code else None
