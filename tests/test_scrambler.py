"""The scrambler: every protection decrypts with an implementation independent of ours, and TEKs
switch exactly at T(n).

Independent receivers (also used by the SCS integration test): libsrtp inbound sessions for SRTP
(after taking the MKI out), an RFC 3711 AES-CM / HMAC-SHA1 receiver written here on AES-ECB
(checked against the RFC's key-derivation test vector), and ESP / ISMACryp receivers built from
``cryptography`` primitives (AES-ECB keystreams, AES-CBC, HMAC) — not from our encryptors.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct

import pylibsrtp
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bcast_sp4.bcast import traffic
from bcast_sp4.media.scrambler import (
    ESPContext,
    ISMACrypContext,
    Scrambler,
    ScramblerError,
    SRTPContext,
    SRTPProfile,
    esp_encapsulate,
    ipv4_udp,
    rtp_header_length,
    srtp_policy,
)

P = traffic.TrafficProtection


def rtp(seq: int, payload: bytes, ssrc: int = 0x1234ABCD, ts: int = 0) -> bytes:
    return struct.pack(">BBHII", 0x80, 96, seq & 0xFFFF, ts, ssrc) + payload


# -- independent receivers ----------------------------------------------------------------------


def _aes_ecb(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def _keystream(key: bytes, iv: int, length: int) -> bytes:
    """AES counter-mode keystream built block by block from AES-ECB (RFC 3711 §4.1.1)."""
    out = b""
    counter = 0
    while len(out) < length:
        out += _aes_ecb(key, ((iv + counter) % (1 << 128)).to_bytes(16, "big"))
        counter += 1
    return out[:length]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def srtp_session_keys(master_key: bytes, master_salt: bytes) -> tuple[bytes, bytes, bytes]:
    """RFC 3711 §4.3 key derivation with key_derivation_rate 0: (k_e, k_a, k_s)."""

    def derive(label: int, length: int) -> bytes:
        x = int.from_bytes(master_salt, "big") ^ (label << 48)
        return _keystream(master_key, x << 16, length)

    return derive(0, 16), derive(1, 20), derive(2, 14)


def srtp_unprotect_rfc3711(material: traffic.SRTPMaterial, packet: bytes, tag_length: int = 10, roc: int = 0) -> bytes:
    """Verify and decrypt one SRTP packet (AES-CM, HMAC-SHA1, MKI of the material's length)."""
    k_e, k_a, k_s = srtp_session_keys(material.master_key, material.master_salt)
    mki_length = len(material.mki)
    tag = packet[-tag_length:]
    mki = packet[-tag_length - mki_length : -tag_length] if mki_length else b""
    assert mki == material.mki, "MKI does not name this TEK"
    authenticated = packet[: len(packet) - tag_length - mki_length]
    expected = hmac.new(k_a, authenticated + roc.to_bytes(4, "big"), hashlib.sha1).digest()[:tag_length]
    assert hmac.compare_digest(tag, expected), "SRTP authentication tag mismatch"
    header = rtp_header_length(authenticated)
    seq, ssrc = struct.unpack_from(">H", authenticated, 2)[0], struct.unpack_from(">I", authenticated, 8)[0]
    index = (roc << 16) | seq
    iv = (int.from_bytes(k_s, "big") << 16) ^ (ssrc << 64) ^ (index << 16)
    body = authenticated[header:]
    return authenticated[:header] + _xor(body, _keystream(k_e, iv, len(body)))


class LibSRTPReceiver:
    """libsrtp inbound sessions, one per TEK, selected by the packet's MKI."""

    def __init__(self, profile: SRTPProfile = SRTPProfile.AES128_CM_SHA1_80) -> None:
        self.profile = profile
        self.sessions: dict[bytes, pylibsrtp.Session] = {}

    def unprotect(self, material: traffic.SRTPMaterial, packet: bytes) -> bytes:
        tag, mki_length = self.profile.tag_length, len(material.mki)
        assert packet[len(packet) - tag - mki_length : len(packet) - tag] == material.mki
        session = self.sessions.get(material.mki)
        if session is None:
            policy = pylibsrtp.Policy(key=material.master_key + material.master_salt,
                                      ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=self.profile.libsrtp)
            session = self.sessions[material.mki] = pylibsrtp.Session(policy)
        without_mki = packet[: len(packet) - tag - mki_length] + packet[len(packet) - tag :]
        return session.unprotect(without_mki)


def esp_decapsulate(material: traffic.IPsecMaterial, packet: bytes) -> tuple[int, bytes]:
    """Verify and decrypt one ESP packet: ``(sequence number, inner IPv4 packet)``."""
    spi, sequence = struct.unpack_from(">II", packet)
    assert spi == material.spi, "SPI does not name this SA"
    if material.authenticated:
        packet, icv = packet[:-12], packet[-12:]
        assert hmac.compare_digest(icv, hmac.new(material.authentication_key, packet, hashlib.sha1).digest()[:12])
    iv, ciphertext = packet[8:24], packet[24:]
    assert len(ciphertext) % 16 == 0
    plain, previous = b"", iv
    for i in range(0, len(ciphertext), 16):  # CBC by hand on AES-ECB decryption
        block = ciphertext[i : i + 16]
        dec = Cipher(algorithms.AES(material.encryption_key), modes.ECB()).decryptor()
        plain += _xor(dec.update(block) + dec.finalize(), previous)
        previous = block
    pad_length, next_header = plain[-2], plain[-1]
    assert next_header == 4  # IPv4 (tunnel mode)
    assert plain[-2 - pad_length : -2] == bytes(range(1, pad_length + 1))  # RFC 4303 §2.4 default padding
    return sequence, plain[: -2 - pad_length]


def parse_ipv4_udp(inner: bytes) -> tuple[str, int, str, int, bytes]:
    assert inner[0] == 0x45 and inner[9] == 17
    total = struct.unpack_from(">H", inner, 2)[0]
    assert total == len(inner)
    header = inner[:20]
    assert sum(struct.unpack(">10H", header)) % 0xFFFF == 0  # header checksum verifies
    sport, dport, length, _ = struct.unpack_from(">HHHH", inner, 20)
    assert length == len(inner) - 20
    return socket.inet_ntoa(inner[12:16]), sport, socket.inet_ntoa(inner[16:20]), dport, inner[28:]


def ismacryp_decrypt(material: traffic.ISMACrypMaterial, packet: bytes) -> tuple[int, bytes]:
    """``(IV = byte stream offset, RTP header || decrypted AU)`` of one ISMACryp datagram."""
    header = rtp_header_length(packet)
    ki_length = len(material.key_indicator)
    assert packet[header : header + ki_length] == material.key_indicator
    bso = int.from_bytes(packet[header + ki_length : header + ki_length + 8], "big")
    au = packet[header + ki_length + 8 :]
    counter = int.from_bytes(material.salt + (bso // 16).to_bytes(8, "big"), "big")
    stream = _keystream(material.key, counter, bso % 16 + len(au))[bso % 16 :]
    return bso, packet[:header] + _xor(au, stream)


def open_datagram(material, packet: bytes, libsrtp: LibSRTPReceiver | None = None) -> bytes:
    """The datagram that went into the scrambler, recovered from the protected one."""
    if isinstance(material, traffic.SRTPMaterial):
        plain = (libsrtp or LibSRTPReceiver()).unprotect(material, packet)
        assert plain == srtp_unprotect_rfc3711(material, packet)
        return plain
    if isinstance(material, traffic.ISMACrypMaterial):
        return ismacryp_decrypt(material, packet)[1]
    _, inner = esp_decapsulate(material, packet)
    return parse_ipv4_udp(inner)[4]


# -- tests ----------------------------------------------------------------------------------------


def test_rfc3711_key_derivation_vector():
    # RFC 3711 Appendix B.3
    k_e, k_a, k_s = srtp_session_keys(bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139"),
                                      bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6"))
    assert k_e.hex().upper() == "C61E7A93744F39EE10734AFE3FF7A087"
    assert k_s.hex().upper() == "30CBBC08863D8C85D49DB34A9AE1"
    assert k_a.hex().upper() == "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"


@pytest.mark.parametrize("profile", list(SRTPProfile))
@pytest.mark.parametrize("mki_length", [0, 1, 4])
def test_srtp_decrypts_with_libsrtp_and_an_independent_receiver(profile, mki_length):
    material = traffic.generate(P.SRTP, mki_length=mki_length)
    context = SRTPContext(material, profile)
    receiver = LibSRTPReceiver(profile)
    for seq in range(100, 110):
        payload = bytes([seq]) * (seq % 17 + 20)
        packet = context.protect(rtp(seq, payload))
        assert len(packet) == 12 + len(payload) + mki_length + profile.tag_length
        assert packet[12:-mki_length - profile.tag_length] != payload  # encrypted
        assert receiver.unprotect(material, packet) == rtp(seq, payload)
        assert srtp_unprotect_rfc3711(material, packet, profile.tag_length) == rtp(seq, payload)
    tampered = bytearray(context.protect(rtp(200, b"x" * 30)))
    tampered[15] ^= 1
    with pytest.raises(pylibsrtp.Error):
        receiver.unprotect(material, bytes(tampered))


@pytest.mark.parametrize("profile", list(SRTPProfile))
def test_srtp_contexts_sharing_one_policy_each_keep_their_own_tek(profile):
    """A scrambler reuses one libsrtp policy for every TEK: each session still protects with its own key."""
    policy = srtp_policy(profile)
    materials = [traffic.generate(P.SRTP, mki_length=4) for _ in range(3)]
    contexts = [SRTPContext(material, profile, policy) for material in materials]
    assert policy.key is None  # the shared policy holds no TEK once a session is made
    receiver = LibSRTPReceiver(profile)
    for seq, (material, context) in enumerate(zip(materials, contexts), 300):
        packet = context.protect(rtp(seq, b"payload %d" % seq))
        assert srtp_unprotect_rfc3711(material, packet, profile.tag_length) == rtp(seq, b"payload %d" % seq)
        assert receiver.unprotect(material, packet) == rtp(seq, b"payload %d" % seq)
    other = next(p for p in SRTPProfile if p is not profile)
    with pytest.raises(ValueError):
        SRTPContext(materials[0], other, policy)


def test_srtp_needs_rtp():
    context = SRTPContext(traffic.generate(P.SRTP))
    for bad in (b"", b"\x40" + bytes(20), b"\x80" * 5):
        with pytest.raises(ScramblerError):
            context.protect(bad)
    with_csrc_and_extension = struct.pack(">BBHII", 0x91, 96, 1, 0, 7) + b"\0\0\0\1" + b"\xbe\xde\x00\x01" + b"abcd" + b"PAY"
    assert rtp_header_length(with_csrc_and_extension) == 12 + 4 + 8
    material = traffic.generate(P.SRTP, mki_length=2)
    packet = SRTPContext(material).protect(with_csrc_and_extension)
    assert srtp_unprotect_rfc3711(material, packet) == with_csrc_and_extension
    assert packet[:24] == with_csrc_and_extension[:24]  # the header stays in clear


@pytest.mark.parametrize("authenticated", [True, False])
def test_esp_decapsulates_with_cryptography_primitives(authenticated):
    material = traffic.generate(P.IPSEC, authenticated=authenticated)
    context = ESPContext(material, ("239.1.2.3", 5000), rng=__import__("os").urandom)
    for sequence in range(1, 6):
        payload = bytes(range(sequence * 7))
        packet = context.protect(payload, ("10.0.0.1", 4000))
        assert struct.unpack_from(">II", packet) == (material.spi, sequence)
        seq, inner = esp_decapsulate(material, packet)
        assert seq == sequence
        assert parse_ipv4_udp(inner) == ("10.0.0.1", 4000, "239.1.2.3", 5000, payload)
    if authenticated:
        bad = bytearray(packet)
        bad[30] ^= 1
        with pytest.raises(AssertionError):
            esp_decapsulate(material, bytes(bad))


def test_esp_known_answer():
    material = traffic.IPsecMaterial(spi=0x1000, encryption_key=bytes(16), authentication_key=bytes(20),
                                     authentication_algorithm=traffic.IPsecAuthentication.HMAC_SHA1_96)
    packet = esp_encapsulate(material, 1, b"A" * 14, bytes(16))
    # 14 bytes + 2 trailer bytes: one block, no padding; ICV 12 bytes
    assert len(packet) == 8 + 16 + 16 + 12
    assert esp_decapsulate(material, packet) == (1, b"A" * 14)
    inner = ipv4_udp(("1.2.3.4", 1), ("5.6.7.8", 2), b"hi")
    assert inner.hex() == "4500001e000040004011" + inner[10:12].hex() + "0102030405060708" + "00010002000a0000" + "6869"


def test_ismacryp_byte_stream_offset_and_independent_decryption():
    material = traffic.generate(P.ISMACRYP, key_indicator_length=2)
    context = ISMACrypContext(material)
    offset = 0
    for seq, size in enumerate([5, 16, 33, 1, 100]):
        au = bytes([seq]) * size
        packet = context.protect(rtp(seq, au))
        bso, plain = ismacryp_decrypt(material, packet)
        assert bso == offset and plain == rtp(seq, au)
        assert packet[12:14] == material.key_indicator and packet[22:] != au
        offset += size


def test_scrambler_switches_exactly_at_T():
    scrambler = Scrambler("svc", P.SRTP)
    teks = {n: traffic.generate(P.SRTP, mki=bytes([n])) for n in (10, 11, 12)}
    scrambler.provide(11, teks[11], 11.0)
    scrambler.provide(10, teks[10], 10.0)  # out of order is fine
    assert scrambler.protect(rtp(1, b"early"), 9.999) is None and scrambler.stats.dropped_no_key == 1
    cases = [(10.0, 10), (10.5, 10), (10.999999, 10), (11.0, 11), (11.7, 11)]
    for seq, (now, n) in enumerate(cases, start=2):
        packet = scrambler.protect(rtp(seq, b"data"), now)
        assert packet[-11:-10] == bytes([n]), (now, n)  # MKI names the TEK in use
        assert srtp_unprotect_rfc3711(teks[n], packet)[12:] == b"data"
    # a timer at T(12) switches even without traffic, and measures its lateness
    scrambler.provide(12, teks[12], 12.0)
    assert scrambler.activate(11.9) == []
    (switch,) = scrambler.activate(12.0004)
    assert (switch.cp_number, switch.at) == (12, 12.0) and switch.jitter == pytest.approx(0.0004)
    assert [s.cp_number for s in scrambler.switches] == [10, 11, 12]
    assert scrambler.stats.sent == len(cases)


def test_scrambler_refuses_the_wrong_material_and_drops_bad_input():
    scrambler = Scrambler("svc", P.ISMACRYP)
    with pytest.raises(ValueError):
        scrambler.provide(1, traffic.generate(P.SRTP), 0.0)
    scrambler.provide(1, traffic.generate(P.ISMACRYP), 0.0)
    assert scrambler.protect(b"\x00not rtp", 1.0) is None and scrambler.stats.dropped_invalid == 1
    esp = Scrambler("ip", P.IPSEC, inner_destination=("239.0.0.1", 1234))
    material = traffic.generate(P.IPSEC, authenticated=True)
    esp.provide(1, material, 0.0)
    packet = esp.protect(b"any bytes at all", 1.0, ("127.0.0.1", 999))
    assert parse_ipv4_udp(esp_decapsulate(material, packet)[1]) == ("127.0.0.1", 999, "239.0.0.1", 1234, b"any bytes at all")
