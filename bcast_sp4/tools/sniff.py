"""Finding SimulCrypt in a capture by content (``bcast-sp4 decode --pcap FILE`` without ``--port``).

SimulCrypt has no registered port, so the decoder recognises its messages. A byte string is taken
for a SimulCrypt message when (:func:`plausible_message`):

1. its message_type is one of TS 103 197 (ECMG<=>SCS or EMMG<=>MUX);
2. its protocol_version is one that interface knows (ECMG<=>SCS 1-3, EMMG<=>MUX 1-5);
3. its message_length is consistent: the parameters (parameter_type, parameter_length, value)
   follow each other without a gap or overrun and end exactly at 5 + message_length, and there
   is at least one.

TCP: a connection is judged on its first message, in whichever direction one completes first
(a stream whose first five bytes already fail 1 or 2 is refused at once). The verdict holds for
both directions until a new SYN reuses the addresses. A connection whose capture starts
mid-stream, not at a message boundary, is therefore not recognised: name its port with ``--port``.
UDP: each datagram is judged on its own and must be exactly one message (TS 103 197 §6: one
message per datagram); once a destination address and port is recognised, every later datagram
to it is decoded, so a broken one is reported rather than skipped.

The cost of a false positive is a few undecodable "messages" reported; of a false negative, a
conversation the user must name with ``--port``. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable

from ..wire.message import HEADER, HEADER_SIZE, MESSAGE_CLASSES, TLV, VERSION_GROUPS
from .capture import SYN, Segment

__all__ = ["plausible_header", "plausible_message", "Classifier"]

_ACK = 0x10


def plausible_header(data: bytes) -> bool | None:
    """Rules 1 and 2 on the first five bytes; ``None`` when fewer than five are there."""
    if len(data) < HEADER_SIZE:
        return None
    version, message_type, _length = HEADER.unpack_from(data, 0)
    cls = MESSAGE_CLASSES.get(message_type)
    return cls is not None and version in VERSION_GROUPS[cls.INTERFACE]


def plausible_message(frame: bytes) -> bool:
    """All three rules on *frame*, which must be exactly one message."""
    if not plausible_header(frame):
        return False
    end = HEADER_SIZE + HEADER.unpack_from(frame, 0)[2]
    if end != len(frame) or end == HEADER_SIZE:
        return False
    pos = HEADER_SIZE
    while pos < end:
        if pos + 4 > end:
            return False
        pos += 4 + TLV.unpack_from(frame, pos)[1]
    return pos == end


class _Conversation:
    __slots__ = ("verdict", "pending", "server")

    def __init__(self, server: tuple[str, int] | None) -> None:
        self.verdict: bool | None = None
        self.pending: dict[tuple, bytearray] = {}
        self.server = server  # the side that answered a SYN, when seen


class Classifier:
    """Decide which TCP connections and UDP destinations of a capture carry SimulCrypt.

    :param max_length: bytes buffered per connection direction before giving up on a verdict.
    :ivar found: ``(transport, server port)`` of every recognised conversation (the server port of
        a TCP connection is the one its SYN went to, else the lower of the two).
    """

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._tcp: dict[Hashable, _Conversation] = {}
        self._udp: set[tuple[str, int]] = set()
        self.found: set[tuple[str, int]] = set()

    def tcp(self, segment: Segment, delivered: list[tuple[tuple, bytes]]) -> list[tuple[tuple, bytes]]:
        """Feed one TCP segment and the bytes the reassembler delivered for it.

        :returns: the ``(direction, bytes)`` to decode now: nothing while the connection is
            undecided or refused; once it is recognised, everything buffered so far, then each
            new delivery.
        """
        key = frozenset((segment.src, segment.dst))
        conv = self._tcp.get(key)
        if segment.flags & SYN and not segment.flags & _ACK:
            conv = None  # a new connection: judge it afresh
        if conv is None:
            server = segment.dst if segment.flags & SYN and not segment.flags & _ACK else None
            conv = self._tcp[key] = _Conversation(server)
        if conv.verdict is False:
            return []
        if conv.verdict:
            return delivered
        for direction, data in delivered:
            conv.pending.setdefault(direction, bytearray()).extend(data)
        for buffer in conv.pending.values():
            verdict = self._judge(buffer)
            if verdict is not None:
                conv.verdict = verdict
                break
        if not conv.verdict:
            if conv.verdict is False:
                conv.pending.clear()
            return []
        self.found.add(self._port(conv, segment))
        out = [(direction, bytes(data)) for direction, data in conv.pending.items() if data]
        conv.pending.clear()
        return out

    def _judge(self, buffer: bytearray) -> bool | None:
        ok = plausible_header(buffer)
        if not ok:
            return ok
        total = HEADER_SIZE + HEADER.unpack_from(buffer, 0)[2]
        if total > self.max_length:
            return False
        if len(buffer) < total:
            return None
        return plausible_message(bytes(buffer[:total]))

    @staticmethod
    def _port(conv: _Conversation, segment: Segment) -> tuple[str, int]:
        server = conv.server or min((segment.src, segment.dst), key=lambda end: end[1])
        return ("tcp", server[1])

    def tcp_port(self, segment: Segment) -> tuple[str, int] | None:
        """The ``("tcp", server port)`` of a recognised connection, else ``None``."""
        conv = self._tcp.get(frozenset((segment.src, segment.dst)))
        if conv is None or not conv.verdict:
            return None
        return self._port(conv, segment)

    def udp(self, segment: Segment) -> bool:
        """Whether to decode this datagram (see the module docstring)."""
        if segment.dst in self._udp:
            return True
        if plausible_message(segment.payload):
            self._udp.add(segment.dst)
            self.found.add(("udp", segment.dst[1]))
            return True
        return False
