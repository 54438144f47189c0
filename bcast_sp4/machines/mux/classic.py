"""Classic DVB data clients of the MUX: section_TSpkt_flag 0x00 (sections) and 0x01 (TS packets).

TS 103 197 §6 (digest ``simulcrypt.md`` §4.2: ``section_TSpkt_flag`` 0x00 = datagrams are MPEG-2
sections, 0x01 = 188-byte TS packets; SP-4 adds 0x02, binary LTKMs/STKMs). A SP-4 MUX refuses
the DVB values unless a ``[[client]]`` opts in (``section_TSpkt_flags = [0, 1, 2]``): lab engineers
feed it from classic EMMGs (traffic generators, migrations). Such a client's channel may carry only
``data`` routes (``[[client.data]]``), whose datagrams are queued and paced like LTKMs and leave as
UDP payloads, byte for byte; LTKM and STKM routes stay 0x02 only.

What is checked (each datagram of a data_provision on its own; a failing one is dropped, counted
as ``bad_format`` and answered with stream_error 0x000D naming ``datagram``, the others pass):

* 0x01: a whole number of 188-byte packets, each starting with the sync byte 0x47;
* 0x00: one or more whole sections back to back, each ``3 + section_length`` bytes (the 12-bit
  section_length of bytes 1-2, at most 4093: ISO/IEC 13818-1 private sections), ending exactly at
  the datagram's end;
* 0x02 (a data route of a client that also allows 0x02): nothing, the bytes are opaque.

v1 EMMGs that send data_id anyway (``wire.Deviation.V1_DATA_ID``, accepted when ``versions``
lists 1): such a peer also expects data_id back in stream_status -- TSDuck validates every version
against its v2 table, so a v1 stream_status without data_id is "missing mandatory parameter" to it
(digest ``simulcrypt.md`` §2.1). A stream set up that way is answered with
:class:`StreamStatusEchoingDataId`: version byte 1, parameters as in v2. A v1 stream_setup without
data_id gets strict v1 (and is refused: nothing to route by).

Pure: no I/O. The connection (:mod:`.connection`) calls :func:`route_fits` at stream_setup; the
core (:mod:`.core`) calls :func:`screen` in ``ingest``. The section_TSpkt_flag descriptions of log
lines, :func:`describe_flag` / :func:`describe_flags`, live in :mod:`bcast_sp4.wire.params` (shared
with the EMMG and SCS machines) and are re-exported here.
"""

from __future__ import annotations

import attrs

from ...wire import emmg_mux as m
from ...wire.params import SectionTSpktFlag, describe_flag, describe_flags
from .config import RouteKind

TS_PACKET_SIZE = 188
SYNC_BYTE = 0x47
#: ISO/IEC 13818-1: a private section's section_length is at most 4093 (4096-byte section)
MAX_SECTION_LENGTH = 4093
_SYNC = bytes([SYNC_BYTE])


def route_fits(kind: RouteKind, flag: int) -> bool:
    """May a channel set up with *flag* feed a route of *kind*? LTKM/STKM routes need 0x02."""
    return kind is RouteKind.DATA or flag == SectionTSpktFlag.BCAST


def format_fault(flag: int, datagram: bytes) -> str | None:
    """Why *datagram* is not whole data of the *flag*'s format, or ``None`` when it is."""
    size = len(datagram)
    if flag == SectionTSpktFlag.TS_PACKETS:
        if size % TS_PACKET_SIZE:
            return f"{size} bytes is not a whole number of {TS_PACKET_SIZE}-byte TS packets"
        if datagram[::TS_PACKET_SIZE] == _SYNC * (size // TS_PACKET_SIZE):  # every sync byte, at C speed
            return None
        for offset in range(0, size, TS_PACKET_SIZE):
            if datagram[offset] != SYNC_BYTE:
                return f"TS packet {offset // TS_PACKET_SIZE} starts with {datagram[offset]:#04x}, not sync byte 0x47"
        return None
    if flag == SectionTSpktFlag.SECTIONS:
        pos = index = 0
        while pos < size:
            if size - pos < 3:
                return f"section {index} at byte {pos}: {size - pos} bytes cannot hold a section header"
            length = ((datagram[pos + 1] & 0x0F) << 8) | datagram[pos + 2]
            if length > MAX_SECTION_LENGTH:
                return f"section {index} at byte {pos}: section_length {length} exceeds {MAX_SECTION_LENGTH}"
            end = pos + 3 + length
            if end > size:
                return (f"section {index} at byte {pos}: section_length {length} runs {end - size} bytes past "
                        f"the {size}-byte datagram")
            pos, index = end, index + 1
        return None
    return None


def screen(flag: int, datagrams: tuple[bytes, ...]) -> tuple[tuple[bytes, ...], int, str | None]:
    """Split one data_provision's datagrams: ``(the whole ones, how many failed, the first fault)``."""
    if flag == SectionTSpktFlag.BCAST:
        return datagrams, 0, None
    if len(datagrams) == 1:  # the usual shape: no list to build
        fault = format_fault(flag, datagrams[0])
        return (datagrams, 0, None) if fault is None else ((), 1, fault)
    good: list[bytes] = []
    first: str | None = None
    for datagram in datagrams:
        fault = format_fault(flag, datagram)
        if fault is None:
            good.append(datagram)
        elif first is None:
            first = fault
    return tuple(good), len(datagrams) - len(good), first


class StreamStatusEchoingDataId(m.StreamStatus):
    """A v1 stream_status carrying data_id, mirroring the v1 stream_setup with data_id it answers."""

    __slots__ = ()

    def encode(self) -> bytes:
        """Version byte 1, the v2 parameter layout (data_id included)."""
        fields = attrs.asdict(self, recurse=False)
        fields["protocol_version"] = 2
        return b"\x01" + m.StreamStatus(**fields).encode()[1:]


__all__ = [
    "StreamStatusEchoingDataId",
    "MAX_SECTION_LENGTH",
    "SYNC_BYTE",
    "TS_PACKET_SIZE",
    "describe_flag",
    "describe_flags",
    "format_fault",
    "route_fits",
    "screen",
]
