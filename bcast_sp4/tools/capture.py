"""Minimal packet-capture reader and writer (standard library only).

Used by the SimulCrypt decode tooling to pull TCP/UDP payloads out of
captures, and by tests to produce captures that Wireshark accepts cleanly.

* :func:`read_packets` reads classic pcap (either byte order, micro- or
  nanosecond magic) and pcapng (sections of either byte order, per-interface
  link type, ``if_tsresol``/``if_tsoffset``; Enhanced, Simple and obsolete
  Packet blocks; other blocks are skipped).  Link types: Ethernet (1, stacked
  VLAN tags), BSD null/loopback (0, 108; either byte order), Linux SLL (113)
  and SLL2 (276), raw IP (101, 12, 14, 228, 229).  IPv4 options and IPv6
  hop-by-hop/routing/destination-options/AH headers are walked.  Fragments
  are **not** reassembled: non-first IPv4 fragments and all IPv6 fragments
  are skipped, a first IPv4 fragment yields the payload it carries.  TCP
  segments are yielded when they carry payload or SYN/FIN/RST (so
  :class:`TcpReassembler` sees connection starts and ends); pure ACKs are
  dropped.  Every UDP datagram is yielded, even empty ones.  Malformed or
  truncated packets are skipped silently.
* :class:`TcpReassembler` rebuilds in-order byte streams per direction.
* :class:`PcapWriter` writes little-endian microsecond pcap files of
  synthetic frames with correct IP/TCP/UDP checksums; :class:`TcpFlow`
  scripts a whole TCP conversation on top of it.
"""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import struct
from typing import BinaryIO, Iterator

__all__ = ["CaptureError", "Segment", "read_packets", "TcpReassembler",
           "PcapWriter", "TcpFlow"]

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_MASK32 = 0xFFFFFFFF
_PCAP_MAGICS = {  # first four file bytes -> (byte order, ticks per second)
    b"\xd4\xc3\xb2\xa1": ("<", 10**6), b"\xa1\xb2\xc3\xd4": (">", 10**6),
    b"\x4d\x3c\xb2\xa1": ("<", 10**9), b"\xa1\xb2\x3c\x4d": (">", 10**9),
}
_SHB = b"\x0a\x0d\x0d\x0a"
_BOM = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
_MAX_RECORD = 1 << 26  # larger records mean a corrupt file
_ETH_IPV4, _ETH_IPV6 = 0x0800, 0x86DD
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
_AF_INET6 = {10, 23, 24, 28, 30}  # Linux, Windows, NetBSD/OpenBSD, FreeBSD, macOS
_RAW_LINKTYPES = (101, 12, 14, 228, 229)
_IP_VERSIONS = ((4, _ETH_IPV4), (6, _ETH_IPV6), (4, None), (6, None))


class CaptureError(ValueError):
    """The file is not a pcap or pcapng capture."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """One TCP segment or UDP datagram found in a capture.

    :ivar timestamp: capture time, seconds since the epoch (0.0 for pcapng
        Simple Packet Blocks, which carry no time).
    :ivar transport: ``"tcp"`` or ``"udp"``.
    :ivar src: ``(ip, port)`` of the sender; IPv6 addresses in compressed form.
    :ivar dst: ``(ip, port)`` of the receiver.
    :ivar payload: transport payload (may be empty).
    :ivar seq: TCP sequence number (0 for UDP).
    :ivar flags: TCP flags byte (0 for UDP).
    :ivar frame: the packet's number in the file, counting from 1 as Wireshark does (0 when the
        segment was not read from a file); where, not what, so not part of equality.
    """

    timestamp: float
    transport: str
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes
    seq: int = 0
    flags: int = 0
    frame: int = dataclasses.field(default=0, compare=False)


# -- Reading -----------------------------------------------------------------

def read_packets(path) -> Iterator[Segment]:
    """Iterate over the TCP and UDP segments of a pcap or pcapng file.

    The file format is checked eagerly, so a bad file fails at call time.

    :param path: file name (``str`` or path-like).
    :raises CaptureError: the file is neither pcap nor pcapng.
    :returns: an iterator of :class:`Segment` in file order.
    """
    f = open(path, "rb")
    try:
        head = f.read(12)
        if head[:4] in _PCAP_MAGICS:
            rest = f.read(12)
            if len(rest) < 12:
                raise CaptureError(f"{path}: truncated pcap file header")
            frames = _pcap_frames(f, head + rest)
        elif head[:4] == _SHB:
            if head[8:12] not in _BOM:
                raise CaptureError(f"{path}: pcapng section header has a bad byte-order magic")
            f.seek(0)
            frames = _pcapng_frames(f)
        else:
            magic = head[:4].hex() or "none, empty file"
            raise CaptureError(f"{path}: not a pcap or pcapng file (magic: {magic})")
    except BaseException:
        f.close()
        raise
    return _segments(f, frames)


def _segments(f: BinaryIO, frames) -> Iterator[Segment]:
    with f:
        for number, (timestamp, linktype, frame) in enumerate(frames, 1):
            try:
                seg = _decode(timestamp, linktype, frame, number)
            except (struct.error, IndexError, ValueError):
                continue
            if seg is not None:
                yield seg


def _pcap_frames(f: BinaryIO, header: bytes):
    """Yield ``(timestamp, linktype, frame)`` from a classic pcap stream."""
    endian, ticks = _PCAP_MAGICS[header[:4]]
    linktype = struct.unpack(endian + "I", header[20:24])[0] & 0xFFFF
    rec = struct.Struct(endian + "IIII")
    while True:
        head = f.read(16)
        if len(head) < 16:
            return
        sec, frac, caplen, _origlen = rec.unpack(head)
        if caplen > _MAX_RECORD or len(data := f.read(caplen)) < caplen:
            return  # corrupt, or file cut short in the middle of a record
        yield (sec * ticks + frac) / ticks, linktype, data


def _pcapng_options(body: bytes, endian: str) -> dict[int, bytes]:
    opts, pos = {}, 0
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(endian + "HH", body, pos)
        if code == 0:
            break
        opts.setdefault(code, body[pos + 4:pos + 4 + length])
        pos += 4 + (length + 3) // 4 * 4
    return opts


def _pcapng_frames(f: BinaryIO):
    """Yield ``(timestamp, linktype, frame)`` from a pcapng stream."""
    endian = "<"
    ifaces: list[tuple[int, int, int, int]] = []  # linktype, snaplen, ticks/s, offset s
    while True:
        head = f.read(8)
        if len(head) < 8:
            return
        if head[:4] == _SHB:
            bom = f.read(4)
            if bom not in _BOM:
                return
            endian, ifaces = _BOM[bom], []
            length = struct.unpack(endian + "I", head[4:])[0]
            if not 28 <= length <= _MAX_RECORD or length % 4 \
                    or len(f.read(length - 12)) < length - 12:
                return
            continue
        btype, length = struct.unpack(endian + "II", head)
        if not 12 <= length <= _MAX_RECORD or length % 4 \
                or len(body := f.read(length - 8)) < length - 8:
            return
        body = body[:-4]  # drop the trailing copy of the block length
        try:
            if btype == 1:  # Interface Description Block
                linktype, _, snaplen = struct.unpack_from(endian + "HHI", body)
                opts = _pcapng_options(body[8:], endian)
                res = (opts.get(9) or b"\x06")[0]  # if_tsresol, default microseconds
                ticks = 2 ** (res & 0x7F) if res & 0x80 else 10**res
                tsoffset = opts.get(14, b"")  # if_tsoffset, whole seconds
                offset = struct.unpack(endian + "q", tsoffset)[0] if len(tsoffset) == 8 else 0
                ifaces.append((linktype, snaplen, ticks, offset))
            elif btype in (6, 2):  # Enhanced / obsolete Packet Block
                if btype == 6:
                    iface, hi, lo, caplen, _ = struct.unpack_from(endian + "5I", body)
                else:
                    iface, _, hi, lo, caplen, _ = struct.unpack_from(endian + "HH4I", body)
                if iface >= len(ifaces) or 20 + caplen > len(body):
                    continue
                linktype, _, ticks, offset = ifaces[iface]
                yield ((hi << 32 | lo) + offset * ticks) / ticks, linktype, body[20:20 + caplen]
            elif btype == 3 and ifaces:  # Simple Packet Block: interface 0, no time
                origlen = struct.unpack_from(endian + "I", body)[0]
                caplen = min(origlen, ifaces[0][1] or origlen, len(body) - 4)
                yield 0.0, ifaces[0][0], body[4:4 + caplen]
        except struct.error:
            continue


def _decode(timestamp: float, linktype: int, frame: bytes, number: int = 0) -> Segment | None:
    """Decode one link-layer frame down to a :class:`Segment` (or ``None``)."""
    packet = _strip_link(linktype, frame)
    if packet is None:
        return None
    parsed = _parse_ipv4(packet) if packet[0] >> 4 == 4 else _parse_ipv6(packet)
    if parsed is None:
        return None
    proto, src_ip, dst_ip, body, fragment = parsed
    if proto == 6 and len(body) >= 20:
        sport, dport, seq = struct.unpack_from("!HHI", body)
        offset, flags = (body[12] >> 4) * 4, body[13]
        if offset < 20 or offset > len(body):
            return None
        payload = body[offset:]
        if not payload and not flags & (SYN | FIN | RST):
            return None
        return Segment(timestamp, "tcp", (src_ip, sport), (dst_ip, dport), payload, seq, flags, number)
    if proto == 17 and len(body) >= 8:
        sport, dport, length = struct.unpack_from("!HHH", body)
        if length < 8 or (length > len(body) and not fragment):
            return None
        return Segment(timestamp, "udp", (src_ip, sport), (dst_ip, dport), body[8:length], frame=number)
    return None


def _strip_link(linktype: int, frame: bytes) -> bytes | None:
    """Return the IP packet inside *frame*, or ``None``."""
    if linktype == 1:
        pos, ethertype = 14, struct.unpack_from("!H", frame, 12)[0]
        while ethertype in _VLAN_TPIDS:
            ethertype = struct.unpack_from("!H", frame, pos + 2)[0]
            pos += 4
    elif linktype in (0, 108):
        families = struct.unpack_from("<I", frame)[0], struct.unpack_from(">I", frame)[0]
        pos, ethertype = 4, (_ETH_IPV4 if 2 in families else _ETH_IPV6
                             if set(families) & _AF_INET6 else -1)
    elif linktype == 113:
        pos, ethertype = 16, struct.unpack_from("!H", frame, 14)[0]
    elif linktype == 276:
        pos, ethertype = 20, struct.unpack_from("!H", frame, 0)[0]
    elif linktype in _RAW_LINKTYPES:
        pos, ethertype = 0, {228: _ETH_IPV4, 229: _ETH_IPV6}.get(linktype)
    else:
        return None
    packet = frame[pos:]
    if packet and (packet[0] >> 4, ethertype) in _IP_VERSIONS:
        return packet
    return None


def _parse_ipv4(p: bytes):
    """Return ``(proto, src, dst, transport bytes, is_fragment)`` or ``None``."""
    ihl = (p[0] & 0x0F) * 4
    if len(p) < 20 or ihl < 20:
        return None
    total, frag = struct.unpack_from("!H2xH", p, 2)
    if total == 0:  # TSO capture: length left for the NIC to fill in
        total = len(p)
    if total < ihl or total > len(p) or frag & 0x1FFF:
        return None  # malformed, truncated or a non-first fragment
    src, dst = str(ipaddress.IPv4Address(p[12:16])), str(ipaddress.IPv4Address(p[16:20]))
    return p[9], src, dst, p[ihl:total], bool(frag & 0x2000)


def _parse_ipv6(p: bytes):
    """Return ``(proto, src, dst, transport bytes, False)`` or ``None``."""
    end, proto, pos = 40 + struct.unpack_from("!H", p, 4)[0], p[6], 40
    if end > len(p):
        return None  # truncated
    while proto in (0, 43, 60, 51):  # hop-by-hop, routing, dest. options, AH
        if pos + 8 > end:
            return None
        step = (p[pos + 1] + 2) * 4 if proto == 51 else (p[pos + 1] + 1) * 8
        proto, pos = p[pos], pos + step
    if proto == 44 or pos > end:  # fragment header: not reassembled
        return None
    src, dst = str(ipaddress.IPv6Address(p[8:24])), str(ipaddress.IPv6Address(p[24:40]))
    return proto, src, dst, p[pos:end], False


# -- TCP reassembly ----------------------------------------------------------

def _signed32(value: int) -> int:
    return ((value + 0x80000000) & _MASK32) - 0x80000000


class _Direction:
    """Reassembly state of one direction of a TCP connection."""

    __slots__ = ("base", "delivered", "heap", "buffered", "fin")

    def __init__(self, base: int):
        self.base = base          # sequence number of stream offset 0
        self.delivered = 0        # stream offset of the next byte expected
        self.heap: list = []      # (offset, -len, data) waiting for a gap
        self.buffered = 0         # bytes held in heap
        self.fin: int | None = None  # stream offset of the FIN, once seen


class TcpReassembler:
    """Rebuild in-order TCP byte streams from captured segments.

    Each direction ``(src, dst)`` is tracked separately.  The stream starts at
    the SYN's sequence number + 1, or at the first segment seen when the
    capture starts mid-connection.  Retransmitted and overlapping bytes are
    delivered once; out-of-order segments wait for the gap to be filled.  At
    most :attr:`MAX_BUFFER` bytes wait per direction: beyond that the oldest
    gap is given up (counted in :attr:`gaps`) and delivery resumes at the next
    buffered segment.  Sequence numbers wrap modulo 2**32.  A direction is
    forgotten after an RST, or once every byte up to its FIN was delivered;
    a retransmission arriving after that starts a new stream.

    :ivar gaps: number of holes skipped because the buffer overflowed.
    """

    MAX_BUFFER = 1 << 20

    def __init__(self):
        self.gaps = 0
        self._dirs: dict[tuple, _Direction] = {}

    def feed(self, segment: Segment) -> list[tuple[tuple, bytes]]:
        """Process one segment.

        :returns: ``[((src, dst), data)]`` with the bytes that became available
            in order for that direction, or ``[]`` (UDP segments, nothing new).
        """
        if segment.transport != "tcp":
            return []
        key, flags, seq = (segment.src, segment.dst), segment.flags, segment.seq
        st = self._dirs.get(key)
        if flags & SYN:
            seq = (seq + 1) & _MASK32
            if st is None or st.base != seq:
                st = self._dirs[key] = _Direction(seq)
        elif st is None:
            if not segment.payload or flags & RST:
                return []
            st = self._dirs[key] = _Direction(seq)
        data, out = segment.payload, []
        offset = st.delivered + _signed32(seq - st.base - st.delivered)
        if offset + len(data) > st.delivered:
            if offset <= st.delivered:
                out.append(data[st.delivered - offset:])
                st.delivered = offset + len(data)
            else:
                heapq.heappush(st.heap, (offset, -len(data), data))
                st.buffered += len(data)
        if flags & FIN:
            st.fin = offset + len(data)
        self._drain(st, out)
        while st.buffered > self.MAX_BUFFER:
            st.delivered = st.heap[0][0]  # give up on the oldest hole
            self.gaps += 1
            self._drain(st, out)
        if flags & RST or (st.fin is not None and st.delivered >= st.fin):
            del self._dirs[key]
        return [(key, b"".join(out))] if out else []

    @staticmethod
    def _drain(st: _Direction, out: list[bytes]) -> None:
        while st.heap and st.heap[0][0] <= st.delivered:
            offset, _, data = heapq.heappop(st.heap)
            st.buffered -= len(data)
            if offset + len(data) > st.delivered:
                out.append(data[st.delivered - offset:])
                st.delivered = offset + len(data)


# -- Writing -----------------------------------------------------------------

def _checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071) of *data*."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class PcapWriter:
    """Write synthetic frames to a little-endian microsecond pcap file.

    :param fileobj: binary file object, written sequentially.
    :param linktype: 1 (Ethernet, default), 0 (BSD null), 101 (raw IP),
        228/229 (raw IPv4/IPv6), 113 (Linux SLL) or 276 (Linux SLL2).
    :param start: POSIX time of the fake clock's first frame.

    Frames without an explicit timestamp get one from a fake clock that
    starts at *start* (default 1700000000.0) and advances 1 ms per frame,
    so output is reproducible.
    """

    SNAPLEN = 262144
    LINKTYPES = (1, 0, 101, 228, 229, 113, 276)

    def __init__(self, fileobj: BinaryIO, linktype: int = 1, *, start: float = 1_700_000_000.0):
        if linktype not in self.LINKTYPES:
            raise ValueError(f"unsupported link type {linktype}")
        self._file, self.linktype = fileobj, linktype
        self._clock_us = round(start * 10**6)
        self._ip_id = 0
        fileobj.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, self.SNAPLEN, linktype))

    def write_frame(self, data: bytes, timestamp: float | None = None) -> None:
        """Write one link-layer frame verbatim.

        :raises ValueError: the frame is longer than :attr:`SNAPLEN`.
        """
        if len(data) > self.SNAPLEN:
            raise ValueError("frame longer than the snapshot length")
        micros = self._clock_us if timestamp is None else round(timestamp * 10**6)
        self._clock_us = max(self._clock_us, micros + 1000)
        sec, usec = divmod(micros, 10**6)
        self._file.write(struct.pack("<IIII", sec, usec, len(data), len(data)) + data)

    def write_tcp(self, src: tuple[str, int], dst: tuple[str, int], payload: bytes, *,
                  seq: int, ack: int = 0, flags: int = PSH | ACK,
                  timestamp: float | None = None) -> None:
        """Write one TCP segment (window 65535, no options)."""
        header = struct.pack("!HHIIBBHHH", src[1], dst[1], seq & _MASK32, ack & _MASK32,
                             5 << 4, flags, 65535, 0, 0)
        self._write_ip(src[0], dst[0], 6, header + bytes(payload), 16, timestamp)

    def write_udp(self, src: tuple[str, int], dst: tuple[str, int], payload: bytes, *,
                  timestamp: float | None = None) -> None:
        """Write one UDP datagram."""
        header = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0)
        self._write_ip(src[0], dst[0], 17, header + bytes(payload), 6, timestamp)

    def _write_ip(self, src: str, dst: str, proto: int, segment: bytes,
                  csum_at: int, timestamp: float | None) -> None:
        """Fill in the transport checksum at *csum_at*, add IP and link headers."""
        s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
        if len(s) != len(d):
            raise ValueError("source and destination address families differ")
        if len(segment) > 0xFFFF - (20 if len(s) == 4 else 0):
            raise ValueError("payload too large for one IP packet")
        n = len(segment)
        pseudo = struct.pack("!xBH", proto, n) if len(s) == 4 else struct.pack("!I3xB", n, proto)
        csum = _checksum(s + d + pseudo + segment)
        if proto == 17 and csum == 0:
            csum = 0xFFFF  # zero means "no checksum" for UDP
        segment = segment[:csum_at] + struct.pack("!H", csum) + segment[csum_at + 2:]
        if len(s) == 4:
            self._ip_id = (self._ip_id + 1) & 0xFFFF
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), self._ip_id,
                                 0x4000, 64, proto, 0, s, d)
            header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
            packet, ethertype = header + segment, _ETH_IPV4
        else:
            packet = struct.pack("!IHBB16s16s", 6 << 28, len(segment), proto, 64, s, d) + segment
            ethertype = _ETH_IPV6
        self.write_frame(self._link_header(ethertype, s, d) + packet, timestamp)

    def _link_header(self, ethertype: int, src: bytes, dst: bytes) -> bytes:
        lt = self.linktype
        if lt == 1:  # locally administered MACs derived from the IP addresses
            return b"\x02\x00" + dst[-4:] + b"\x02\x00" + src[-4:] + struct.pack("!H", ethertype)
        if lt == 0:
            return struct.pack("<I", 2 if ethertype == _ETH_IPV4 else 24)
        if lt in (228, 229) and (lt == 228) != (ethertype == _ETH_IPV4):
            raise ValueError(f"link type {lt} cannot carry this IP version")
        if lt == 113:
            return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00" + src[-4:], ethertype)
        if lt == 276:
            return struct.pack("!HHIHBB8s", ethertype, 0, 1, 1, 0, 6, b"\x02\x00" + src[-4:])
        return b""


class TcpFlow:
    """A scripted TCP connection written through a :class:`PcapWriter`.

    Sequence and acknowledgement numbers are kept consistent; data larger
    than :attr:`MAX_SEGMENT` is split, and the receiver ACKs whenever the
    sender would otherwise exceed the 65535-byte window.

    :param writer: destination writer.
    :param client: ``(ip, port)`` of the connecting side.
    :param server: ``(ip, port)`` of the listening side.
    :param client_isn: initial sequence number of the client.
    :param server_isn: initial sequence number of the server.
    """

    MAX_SEGMENT = 65000
    WINDOW = 65535

    def __init__(self, writer: PcapWriter, client: tuple[str, int] = ("127.0.0.1", 40000),
                 server: tuple[str, int] = ("127.0.0.1", 2222), *,
                 client_isn: int = 1000, server_isn: int = 500000):
        self.writer = writer
        self._ends = {"c": client, "s": server}
        self._next = {"c": client_isn & _MASK32, "s": server_isn & _MASK32}
        self._unacked = {"c": 0, "s": 0}

    def _segment(self, side: str, flags: int, payload: bytes = b"") -> None:
        peer = "s" if side == "c" else "c"
        ack = self._next[peer] if flags & ACK else 0
        self.writer.write_tcp(self._ends[side], self._ends[peer], payload,
                              seq=self._next[side], ack=ack, flags=flags)
        consumed = len(payload) + bool(flags & SYN) + bool(flags & FIN)
        self._next[side] = (self._next[side] + consumed) & _MASK32
        self._unacked[side] += len(payload)
        if flags & ACK:
            self._unacked[peer] = 0

    def handshake(self) -> None:
        """Write SYN, SYN-ACK and ACK."""
        self._segment("c", SYN)
        self._segment("s", SYN | ACK)
        self._segment("c", ACK)

    def _data(self, side: str, payload: bytes) -> None:
        peer = "s" if side == "c" else "c"
        for pos in range(0, len(payload), self.MAX_SEGMENT):
            chunk = payload[pos:pos + self.MAX_SEGMENT]
            if self._unacked[side] + len(chunk) > self.WINDOW:
                self._segment(peer, ACK)
            self._segment(side, PSH | ACK, chunk)

    def send(self, payload: bytes) -> None:
        """Write data from the client to the server."""
        self._data("c", payload)

    def reply(self, payload: bytes) -> None:
        """Write data from the server to the client."""
        self._data("s", payload)

    def close(self) -> None:
        """Write the FIN exchange: client FIN-ACK, server FIN-ACK, client ACK."""
        self._segment("c", FIN | ACK)
        self._segment("s", FIN | ACK)
        self._segment("c", ACK)
