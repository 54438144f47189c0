"""Lab content: RTP packets whose payload any receiver can check, without shared state.

The payload of packet *seq* of service *service_id* is a pure function of (service_id, ssrc, seq):
a 16-byte tag ``"bcast-sp4" || service_id (2) || ssrc (4) || pad`` followed by SHA-256 counter-mode
bytes of (service_id, ssrc, seq), so a terminal that decrypts a packet can tell whether it got
exactly what the source sent. Pure: no sockets, no clock.
"""

from __future__ import annotations

import hashlib
import struct

RTP_PAYLOAD_TYPE = 96  # dynamic
_TAG = b"bcast-sp4"


def payload(service_id: int, ssrc: int, seq: int, size: int) -> bytes:
    """The expected payload of one packet (*size* >= 16 bytes)."""
    head = _TAG + struct.pack(">HI", service_id, ssrc) + b"\x00"
    out = bytearray(head)
    block = 0
    while len(out) < size:
        out += hashlib.sha256(struct.pack(">HIIQ", service_id, ssrc, seq, block)).digest()
        block += 1
    return bytes(out[:size])


def rtp_packet(service_id: int, ssrc: int, seq: int, timestamp: int, size: int = 188) -> bytes:
    """An RTP packet (RFC 3550, version 2, no CSRC, no extension) carrying :func:`payload`."""
    header = struct.pack(">BBHII", 0x80, RTP_PAYLOAD_TYPE, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
    return header + payload(service_id, ssrc, seq & 0xFFFF, size)


def check_rtp(packet: bytes, service_id: int) -> tuple[bool, int]:
    """Whether *packet* is exactly what :func:`rtp_packet` sent for *service_id*: ``(ok, seq)``."""
    if len(packet) < 12 + 16 or packet[0] != 0x80:
        return False, -1
    seq, ssrc = struct.unpack_from(">H4xI", packet, 2)
    return packet[12:] == payload(service_id, ssrc, seq, len(packet) - 12), seq
