"""Tests for :mod:`bcast_sp4.tools.capture` (pcap/pcapng reading, writing, TCP reassembly)."""

import io
import random
import shutil
import struct
import subprocess

import pytest

from bcast_sp4.tools.capture import (CaptureError, PcapWriter, Segment, TcpFlow, TcpReassembler,
                               read_packets)

T0 = 1700000000.0
V4 = (("192.0.2.1", 40001), ("198.51.100.7", 2222))
V6 = (("2001:db8::1", 40001), ("2001:db8:0:1::7", 2222))


def write_capture(tmp_path, fill, linktype=1, name="cap.pcap"):
    """Run *fill(writer)* and return the path of the resulting pcap file."""
    path = tmp_path / name
    with open(path, "wb") as f:
        fill(PcapWriter(f, linktype))
    return path


def frames_of(fill, linktype=1):
    """Link-layer frames produced by *fill(writer)*, parsed independently of the reader."""
    buf = io.BytesIO()
    fill(PcapWriter(buf, linktype))
    data, pos, frames = buf.getvalue(), 24, []
    assert struct.unpack_from("<IHHiIII", data) == (0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)
    while pos < len(data):
        _, _, caplen, origlen = struct.unpack_from("<IIII", data, pos)
        assert caplen == origlen
        frames.append(data[pos + 16:pos + 16 + caplen])
        pos += 16 + caplen
    return frames


# --------------------------------------------------------------------------
# Writer -> reader round trip
# --------------------------------------------------------------------------

@pytest.mark.parametrize("linktype", [1, 0, 101, 113, 276, "raw-family"])
@pytest.mark.parametrize("ends", [V4, V6], ids=["ipv4", "ipv6"])
def test_round_trip_every_field(tmp_path, ends, linktype):
    if linktype == "raw-family":
        linktype = 228 if ends is V4 else 229
    cli, srv = ends
    big = random.Random(1).randbytes(60000)

    def fill(w):
        w.write_tcp(cli, srv, b"", seq=7, flags=0x02)
        w.write_tcp(srv, cli, b"", seq=0xFFFFFFFF, ack=8, flags=0x12, timestamp=T0 + 0.5)
        w.write_tcp(cli, srv, b"", seq=8, ack=0, flags=0x10)  # pure ACK: not yielded
        w.write_tcp(cli, srv, b"request", seq=8, ack=0)
        w.write_tcp(srv, cli, big, seq=0, ack=15, timestamp=1700000123.456789)
        w.write_udp(cli, srv, b"datagram")
        w.write_udp(srv, cli, b"")
        w.write_udp(srv, cli, b"x")  # odd length: checksum padding
        w.write_tcp(cli, srv, b"", seq=15, ack=60000, flags=0x04)

    expected = [
        Segment(T0, "tcp", cli, srv, b"", seq=7, flags=0x02),
        Segment(T0 + 0.5, "tcp", srv, cli, b"", seq=0xFFFFFFFF, flags=0x12),
        Segment(1700000000.502, "tcp", cli, srv, b"request", seq=8, flags=0x18),
        Segment(1700000123.456789, "tcp", srv, cli, big, seq=0, flags=0x18),
        Segment(1700000123.457789, "udp", cli, srv, b"datagram"),
        Segment(1700000123.458789, "udp", srv, cli, b""),
        Segment(1700000123.459789, "udp", srv, cli, b"x"),
        Segment(1700000123.460789, "tcp", cli, srv, b"", seq=15, flags=0x04),
    ]
    got = list(read_packets(write_capture(tmp_path, fill, linktype)))
    assert got == expected
    assert [s.timestamp for s in got] == [s.timestamp for s in expected]


@pytest.mark.parametrize("ends", [V4, V6], ids=["ipv4", "ipv6"])
def test_tcp_flow_sequence_numbers_and_splitting(tmp_path, ends):
    cli, srv = ends
    request, response = b"R" * 150000, bytes(range(256)) * 10

    def fill(w):
        flow = TcpFlow(w, cli, srv, client_isn=0xFFFFFF00, server_isn=77)
        flow.handshake()
        flow.send(request)
        flow.reply(response)
        flow.close()

    segs = list(read_packets(write_capture(tmp_path, fill)))
    summary = [(s.src, s.seq, s.flags, len(s.payload)) for s in segs]
    c0 = 0xFFFFFF00
    assert summary == [
        (cli, c0, 0x02, 0),
        (srv, 77, 0x12, 0),
        (cli, c0 + 1, 0x18, 65000),
        (cli, (c0 + 65001) & 0xFFFFFFFF, 0x18, 65000),
        (cli, (c0 + 130001) & 0xFFFFFFFF, 0x18, 20000),
        (srv, 78, 0x18, 2560),
        (cli, (c0 + 150001) & 0xFFFFFFFF, 0x11, 0),
        (srv, 78 + 2560, 0x11, 0),
    ]
    stamps = [s.timestamp for s in segs]
    assert stamps[0] == T0 and stamps == sorted(set(stamps))
    streams = {}
    reasm = TcpReassembler()
    for seg in segs:
        for key, data in reasm.feed(seg):
            streams[key] = streams.get(key, b"") + data
    assert streams == {(cli, srv): request, (srv, cli): response}
    assert reasm._dirs == {}  # both FINs seen: everything forgotten


def test_tcp_flow_acks_only_when_window_requires():
    def fill(w):
        flow = TcpFlow(w)
        flow.handshake()                # 3 frames
        flow.send(b"a" * 100000)        # 65000, server ACK, 35000
        flow.reply(b"b" * 10)           # 1 frame, acknowledges the client data
        flow.send(b"c" * 60000)         # fits the window again: 1 frame
        flow.close()                    # 3 frames

    frames = frames_of(fill)
    tcp_fields = [struct.unpack_from("!IIxB", f, 14 + 20 + 4) for f in frames]
    assert [(flags, len(f) - 54) for f, (_, _, flags) in zip(frames, tcp_fields)] == [
        (0x02, 0), (0x12, 0), (0x10, 0), (0x18, 65000), (0x10, 0), (0x18, 35000),
        (0x18, 10), (0x18, 60000), (0x11, 0), (0x11, 0), (0x10, 0)]
    assert tcp_fields[4][:2] == (500001, 1000 + 1 + 65000)  # server ACK: seq, ack
    assert tcp_fields[-1][:2] == (1000 + 1 + 160000 + 1, 500000 + 1 + 10 + 1)


def test_writer_is_reproducible(tmp_path):
    def fill(w):
        flow = TcpFlow(w)
        flow.handshake()
        flow.send(b"abc")
        w.write_udp(*V4, b"u")

    assert frames_of(fill) == frames_of(fill)
    a = write_capture(tmp_path, fill, name="a.pcap").read_bytes()
    assert a == write_capture(tmp_path, fill, name="b.pcap").read_bytes()


def test_writer_rejects_bad_input():
    w = PcapWriter(io.BytesIO())
    with pytest.raises(ValueError):
        w.write_udp(V4[0], V6[1], b"")
    with pytest.raises(ValueError):
        w.write_tcp(*V4, b"x" * 70000, seq=0)
    with pytest.raises(ValueError):
        PcapWriter(io.BytesIO(), linktype=105)
    with pytest.raises(ValueError):
        PcapWriter(io.BytesIO(), linktype=228).write_udp(*V6, b"")


def test_checksums_are_correct():
    """Verify IPv4/TCP/UDP checksums independently: a correct sum folds to zero."""
    def ones_sum(data):
        data += b"\0" * (len(data) % 2)
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return total

    def fill(w):
        w.write_tcp(*V4, b"hello, world!", seq=123, ack=456)
        w.write_udp(*V4, b"odd")

    # A payload that makes the UDP sum come out as zero must be sent as 0xFFFF.
    (zero_payload,) = frames_of(lambda w: w.write_udp(*V4, b"\0\0"))
    (wrap,) = frames_of(lambda w: w.write_udp(*V4, zero_payload[40:42]))
    assert wrap[40:42] == b"\xff\xff"

    for frame, proto in zip(frames_of(fill), (6, 17)):
        ip = frame[14:]
        assert ones_sum(ip[:20]) == 0xFFFF
        seg = ip[20:]
        pseudo = ip[12:20] + struct.pack("!xBH", proto, len(seg))
        assert ones_sum(pseudo + seg) == 0xFFFF


# --------------------------------------------------------------------------
# Link layers and IP details
# --------------------------------------------------------------------------

def raw_ip(fill):
    return frames_of(fill, linktype=101)


def test_stacked_vlan_tags(tmp_path):
    (packet,) = raw_ip(lambda w: w.write_udp(*V4, b"vlan"))
    frame = (b"\x02" * 6 + b"\x04" * 6 + b"\x88\xa8\x00\x64" + b"\x81\x00\x00\x0a"
             + b"\x08\x00" + packet + b"\0" * 20)  # trailing Ethernet padding is ignored
    segs = list(read_packets(write_capture(tmp_path, lambda w: w.write_frame(frame))))
    assert [(s.src, s.dst, s.payload) for s in segs] == [(V4[0], V4[1], b"vlan")]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("ends,family", [(V4, 2), (V6, 24), (V6, 28), (V6, 30)])
def test_null_loopback_either_byte_order(tmp_path, order, ends, family):
    (packet,) = raw_ip(lambda w: w.write_udp(*ends, b"lo"))
    frame = struct.pack(order + "I", family) + packet
    segs = list(read_packets(write_capture(tmp_path, lambda w: w.write_frame(frame), linktype=0)))
    assert [(s.src, s.payload) for s in segs] == [(ends[0], b"lo")]


def test_ipv4_options_and_fragments(tmp_path):
    (packet,) = raw_ip(lambda w: w.write_udp(*V4, b"opts"))
    # Insert a 4-byte option (NOP NOP NOP EOL) and fix IHL and total length.
    with_opts = bytearray(packet[:20] + b"\x01\x01\x01\x00" + packet[20:])
    with_opts[0] = 0x46
    struct.pack_into("!H", with_opts, 2, len(with_opts))
    later_fragment = bytearray(packet)
    struct.pack_into("!H", later_fragment, 6, 0x2000 | 3)  # MF, offset 24 bytes
    first_fragment = bytearray(packet)
    struct.pack_into("!H", first_fragment, 6, 0x2000)
    struct.pack_into("!H", first_fragment, 24, 100)  # UDP length of the whole datagram

    def fill(w):
        for p in (with_opts, later_fragment, first_fragment):
            w.write_frame(bytes(p))

    segs = list(read_packets(write_capture(tmp_path, fill, linktype=101)))
    assert [s.payload for s in segs] == [b"opts", b"opts"]


def test_ipv6_extension_headers(tmp_path):
    (packet,) = raw_ip(lambda w: w.write_udp(*V6, b"ext"))

    def with_headers(*headers):
        """headers: (type, body) in order; body length + 2 must be a multiple of 8."""
        types = [t for t, _ in headers] + [packet[6]]
        chain = b"".join(bytes([types[i + 1], (len(b) + 2) // 8 - 1]) + b
                         for i, (_, b) in enumerate(headers))
        out = bytearray(packet[:40] + chain + packet[40:])
        out[6] = types[0]
        struct.pack_into("!H", out, 4, len(out) - 40)
        return bytes(out)

    pad6 = b"\x01\x04\0\0\0\0"  # PadN option
    frames = [
        with_headers((0, pad6), (43, b"\0" * 6 + b"\0" * 16), (60, pad6 + b"\0" * 8)),
        with_headers((0, pad6), (44, b"\0\x01\0\0\0\x07")),  # fragment: skipped
        with_headers((60, pad6))[:-2],  # truncated: skipped
    ]
    path = write_capture(tmp_path, lambda w: [w.write_frame(f) for f in frames], linktype=229)
    assert [(s.src, s.payload) for s in read_packets(path)] == [(V6[0], b"ext")]


def test_garbage_raises_capture_error(tmp_path):
    for name, content in [("text", b"this is not a capture file at all"), ("empty", b""),
                          ("short", b"\xd4\xc3\xb2\xa1\x02\x00"),
                          ("badbom", b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x01\x02\x03\x04")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CaptureError, match="pcap"):
            read_packets(path)
    assert issubclass(CaptureError, ValueError)


def test_truncated_and_malformed_packets_are_skipped(tmp_path):
    (good,) = frames_of(lambda w: w.write_udp(*V4, b"good"))
    (tcp,) = frames_of(lambda w: w.write_tcp(*V4, b"tcp data", seq=1))
    bad_offset = bytearray(tcp)
    bad_offset[14 + 20 + 12] = 0xF0  # TCP data offset 60 > segment length
    bad_ihl = bytearray(good)
    bad_ihl[14] = 0x43
    arp = good[:12] + b"\x08\x06" + good[14:]

    def fill(w):
        w.write_frame(good[:30])  # snaplen-style cut inside the IP header
        w.write_frame(good[:-1])  # IP total length exceeds the captured bytes
        w.write_frame(tcp[:-1])
        w.write_frame(bytes(bad_offset))
        w.write_frame(bytes(bad_ihl))
        w.write_frame(arp)
        w.write_frame(good[:5])
        w.write_frame(b"")
        w.write_frame(good)

    path = write_capture(tmp_path, fill)
    # Cut the file in the middle of a final record too.
    with open(path, "ab") as f:
        f.write(struct.pack("<IIII", 1, 2, 100, 100) + good[:40])
    assert [s.payload for s in read_packets(path)] == [b"good"]


# --------------------------------------------------------------------------
# pcapng
# --------------------------------------------------------------------------

def ng_block(e, btype, body):
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack(e + "II", btype, length) + body + struct.pack(e + "I", length)


def ng_option(e, code, value):
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def build_pcapng(e, frames_eth, frames_raw):
    shb = ng_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)
                   + ng_option(e, 4, b"handmade") + ng_option(e, 0, b""))
    idb_ns = ng_block(e, 1, struct.pack(e + "HHI", 1, 0, 0) + ng_option(e, 2, b"eth0")
                      + ng_option(e, 9, b"\x09") + ng_option(e, 0, b""))
    idb_bin = ng_block(e, 1, struct.pack(e + "HHI", 101, 0, 65535)
                       + ng_option(e, 9, b"\x8a")  # 2**-10 s
                       + ng_option(e, 14, struct.pack(e + "q", 100)) + ng_option(e, 0, b""))
    out = shb + idb_ns + idb_bin
    out += ng_block(e, 5, b"\0" * 16)  # Interface Statistics Block: skipped
    out += ng_block(e, 0x0BAD, b"custom")  # unknown block: skipped
    ts_ns = 1700000000_123456789
    for frame in frames_eth:
        out += ng_block(e, 6, struct.pack(e + "5I", 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF,
                                          len(frame), len(frame)) + frame)
    ticks = (1700000000 * 1024 + 512)  # .5 s in 1/1024 units, before the +100 s offset
    for frame in frames_raw:
        out += ng_block(e, 2, struct.pack(e + "HH4I", 1, 0, ticks >> 32, ticks & 0xFFFFFFFF,
                                          len(frame), len(frame)) + frame)
    out += ng_block(e, 6, struct.pack(e + "5I", 9, 0, 0, 4, 4) + b"\0" * 4)  # unknown iface
    out += ng_block(e, 3, struct.pack(e + "I", len(frames_eth[0])) + frames_eth[0])  # SPB
    return out


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_both_byte_orders(tmp_path, endian):
    eth = frames_of(lambda w: (w.write_tcp(*V4, b"ng-tcp", seq=99, flags=0x18),
                               w.write_udp(*V6, b"ng-udp")))
    raw = raw_ip(lambda w: w.write_udp(*V4, b"raw"))
    data = build_pcapng(endian, eth, raw)
    # A second section in the other byte order restarts interface numbering.
    other = "<" if endian == ">" else ">"
    data += build_pcapng(other, eth[:1], [])
    path = tmp_path / "hand.pcapng"
    path.write_bytes(data + b"\x06\0\0\0\x40")  # truncated trailing block is ignored

    got = list(read_packets(path))
    ts_eth = (1700000000_123456789) / 10**9
    ts_raw = 1700000100 + 0.5
    tcp = Segment(ts_eth, "tcp", V4[0], V4[1], b"ng-tcp", seq=99, flags=0x18)
    expected = [
        tcp,
        Segment(ts_eth, "udp", V6[0], V6[1], b"ng-udp"),
        Segment(ts_raw, "udp", V4[0], V4[1], b"raw"),
        Segment(0.0, "tcp", V4[0], V4[1], b"ng-tcp", seq=99, flags=0x18),
        tcp,
        Segment(0.0, "tcp", V4[0], V4[1], b"ng-tcp", seq=99, flags=0x18),
    ]
    assert got == expected
    assert got[0].timestamp == pytest.approx(1700000000.123456789, abs=1e-6)


def test_classic_pcap_variants(tmp_path):
    """Big-endian and nanosecond classic pcap files written by hand."""
    (frame,) = frames_of(lambda w: w.write_udp(*V4, b"classic"))
    for endian, magic, frac, expect in [(">", 0xA1B2C3D4, 250000, 0.25),
                                        ("<", 0xA1B23C4D, 250000000, 0.25),
                                        (">", 0xA1B23C4D, 5, 5e-9)]:
        data = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)
        data += struct.pack(endian + "IIII", 1700000000, frac, len(frame), len(frame)) + frame
        path = tmp_path / "classic.pcap"
        path.write_bytes(data)
        (seg,) = read_packets(path)
        assert seg.payload == b"classic"
        assert seg.timestamp == pytest.approx(1700000000 + expect, abs=1e-7)


# --------------------------------------------------------------------------
# TCP reassembly
# --------------------------------------------------------------------------

CLI, SRV = V4


def tcp(seq, payload=b"", flags=0x18, src=CLI, dst=SRV):
    return Segment(0.0, "tcp", src, dst, payload, seq=seq & 0xFFFFFFFF, flags=flags)


def random_segments(rng, stream, isn, src=CLI, dst=SRV):
    """Cut *stream* into random, overlapping pieces (plus duplicates)."""
    segs, pos = [], 0
    while pos < len(stream):
        size = rng.randint(1, 3000)
        start = max(0, pos - rng.choice([0, 0, 0, rng.randint(0, 500)]))  # overlap
        segs.append(tcp(isn + start, stream[start:pos + size], src=src, dst=dst))
        pos += size
    segs += rng.sample(segs, len(segs) // 4)  # retransmissions
    rng.shuffle(segs)
    return segs


def collect(reasm, segments):
    streams = {}
    for seg in segments:
        for key, data in reasm.feed(seg):
            assert data
            streams[key] = streams.get(key, b"") + data
    return streams


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("isn", [12345, 2**32 - 40000, 2**32 - 1])
def test_reassembly_shuffled_duplicated_overlapping(seed, isn):
    rng = random.Random(seed)
    stream = rng.randbytes(rng.randint(50000, 200000))
    segments = [tcp(isn, flags=0x02)] + random_segments(rng, stream, isn + 1)
    reasm = TcpReassembler()
    assert collect(reasm, segments) == {(CLI, SRV): stream}
    assert reasm.gaps == 0


def test_reassembly_two_directions_interleaved():
    rng = random.Random(42)
    up, down = rng.randbytes(80000), rng.randbytes(120000)
    a = random_segments(rng, up, 2**32 - 5000)
    b = random_segments(rng, down, 900, src=SRV, dst=CLI)
    mixed = [tcp(2**32 - 5001, flags=0x02), tcp(899, flags=0x12, src=SRV, dst=CLI)]
    while a or b:
        mixed.append((a if a and (not b or rng.random() < 0.5) else b).pop())
    mixed.append(Segment(0.0, "udp", CLI, SRV, b"ignored"))
    assert collect(TcpReassembler(), mixed) == {(CLI, SRV): up, (SRV, CLI): down}


def test_reassembly_mid_connection_and_wraparound():
    reasm = TcpReassembler()
    start = 2**32 - 3
    assert reasm.feed(tcp(start, b"abcdef")) == [((CLI, SRV), b"abcdef")]  # crosses 2**32
    assert reasm.feed(tcp(start + 10, b"klm")) == []  # gap
    assert reasm.feed(tcp(start + 2, b"cdefgh")) == [((CLI, SRV), b"gh")]  # overlap
    assert reasm.feed(tcp(start + 8, b"ij")) == [((CLI, SRV), b"ijklm")]
    assert reasm.feed(tcp(start, b"abc")) == []  # old retransmission
    assert reasm.feed(tcp(start + 13, b"no", flags=0x19)) == [((CLI, SRV), b"no")]
    assert reasm._dirs == {}  # FIN delivered: direction forgotten
    assert reasm.feed(tcp(1, flags=0x11)) == []  # FIN of an unknown stream


def test_reassembly_fin_waits_for_missing_data_and_rst_forgets():
    reasm = TcpReassembler()
    reasm.feed(tcp(99, flags=0x02))
    assert reasm.feed(tcp(103, b"def", flags=0x11)) == []
    assert reasm.feed(tcp(100, b"abc")) == [((CLI, SRV), b"abcdef")]
    assert reasm._dirs == {}
    reasm.feed(tcp(5, b"xy"))
    reasm.feed(tcp(10, b"later"))
    assert reasm.feed(tcp(7, flags=0x04)) == []
    assert reasm._dirs == {}
    assert reasm.feed(tcp(7, b"new")) == [((CLI, SRV), b"new")]  # fresh stream


def test_reassembly_syn_retransmission_and_data_on_syn():
    reasm = TcpReassembler()
    assert reasm.feed(tcp(500, b"fast", flags=0x02)) == [((CLI, SRV), b"fast")]
    assert reasm.feed(tcp(500, b"fast", flags=0x02)) == []  # retransmitted SYN
    assert reasm.feed(tcp(505, b"open")) == [((CLI, SRV), b"open")]


def test_reassembly_buffer_limit_drops_oldest_gap():
    reasm = TcpReassembler()
    reasm.feed(tcp(0, flags=0x02))
    assert reasm.feed(tcp(1, b"A" * 10)) == [((CLI, SRV), b"A" * 10)]
    chunk = 60000
    base = 11 + 100  # 100 bytes missing after offset 10
    delivered = []
    for i in range(18):  # 18 * 60000 = 1,080,000 > 1 MiB
        pos = base + i * chunk + (500 if i >= 9 else 0)  # second hole of 500 bytes
        delivered += reasm.feed(tcp(pos, bytes([i]) * chunk))
    assert reasm.gaps == 1
    assert delivered == [((CLI, SRV), b"".join(bytes([i]) * chunk for i in range(9)))]
    assert reasm._dirs[(CLI, SRV)].buffered <= TcpReassembler.MAX_BUFFER
    # Filling the second hole releases the rest.
    (key, rest), = reasm.feed(tcp(base + 9 * chunk, b"h" * 500))
    assert rest == b"h" * 500 + b"".join(bytes([i]) * chunk for i in range(9, 18))
    assert reasm.gaps == 1


# --------------------------------------------------------------------------
# Wireshark
# --------------------------------------------------------------------------

TSHARK_OK = ("Connection establish request (SYN)", "Connection establish acknowledge (SYN+ACK)",
             "Connection finish (FIN)", "This frame initiates the connection closing",
             "This frame undergoes the connection closing")


def run_tshark(path, *fields):
    tshark = shutil.which("tshark") or shutil.which("/usr/bin/tshark")
    if tshark is None:
        pytest.fail("tshark is required for this test but was not found")
    args = [tshark, "-n", "-r", str(path), "-o", "tcp.check_checksum:TRUE",
            "-o", "udp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE", "-T", "fields"]
    for field in fields:
        args += ["-e", field]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [line.split("\t") for line in proc.stdout.splitlines()]


@pytest.mark.parametrize("ends", [(("127.0.0.1", 40000), ("127.0.0.1", 2222)), V6],
                         ids=["ipv4", "ipv6"])
def test_wireshark_accepts_written_capture(tmp_path, ends):
    cli, srv = ends
    big = random.Random(3).randbytes(140000)
    written = []  # (frame number, tcp payload, udp payload)

    def fill(w):
        flow = TcpFlow(w, cli, srv)
        flow.handshake()
        flow.send(b"hello ECMG")
        flow.reply(big)
        flow.send(b"bye")
        flow.close()
        w.write_udp(cli, (srv[0], 40002), b"\x00\x01odd-length")
        w.write_udp(cli, (srv[0], 40002), b"")

    path = write_capture(tmp_path, fill)
    rows = run_tshark(path, "frame.number", "_ws.expert.message")
    assert len(rows) == len(frames_of(fill))
    bad = [(num, msg) for num, msgs in rows for msg in filter(None, msgs.split(","))
           if not msg.startswith(TSHARK_OK)]
    assert bad == []

    payload_rows = run_tshark(path, "tcp.payload", "udp.payload")
    tcp_out = b"".join(bytes.fromhex(t.replace(":", "")) for t, _ in payload_rows)
    assert tcp_out == b"hello ECMG" + big + b"bye"
    assert [bytes.fromhex(u.replace(":", "")) for t, u in payload_rows[-2:]] == \
        [b"\x00\x01odd-length", b""]
    assert sum(1 for t, _ in payload_rows if t) == 1 + 3 + 1  # big reply split in 3
