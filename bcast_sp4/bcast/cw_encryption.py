"""TEK protection on the ECMG<=>SCS link: the CW_encryption parameter (TS 103 197 §5.4, v2+).

SP-4 seed §14.1.1.3.3: "Sending of TEKs in the CW_provision message can be optionally encrypted
with a selectable algorithm." TS 103 197 leaves the parameter's content to the operator
(digest ``simulcrypt.md`` §3.4, [UNCONFIRMED]); this is bcast-sp4's definition, version 1.

CW_encryption value::

    byte  size  field
    0     1     algorithm      0x01 AES-128 key wrap with padding (RFC 5649)
                               0x02 AES-128-CBC, PKCS#7 padding
    1     2     key_id         which shared key (uimsbf), configured on both SCS and ECMG
    3     16    iv             algorithm 0x02 only: base IV

When CW_encryption is present, the CW of *every* CP_CW_combination of that CW_provision is
encrypted (its CP_number stays in clear):

* 0x01: ``CW' = AES-KWP(key, CW)`` (RFC 5649; integrity-checked on unwrap);
* 0x02: ``CW' = AES-128-CBC(key, iv XOR (0..0 || CP_number), PKCS7(CW))`` — the CP_number is
  folded into the last two IV bytes so no two CWs of a message share an IV.

A wrong key, a corrupt wrap or bad padding raise :class:`CWEncryptionError`.

Decryption on the ECMG (:class:`CWDecryptor`) keeps one AES-128-ECB decryption context per key and
does the block chaining itself: AES-CBC as ``P_j = D(C_j) xor C_(j-1)`` (``C_0`` = the CW's IV) for
all CWs of a message in one call, and RFC 5649 unwrap of a one-block wrap (a CW of up to 8 bytes,
wrapped in 16: ``A || P = D(C)``) the same way; longer wraps go to ``cryptography``'s own unwrap.
Same results as the one-shot objects (tests/bcast/test_bcast_fast_paths.py checks against them).
"""

from __future__ import annotations

import enum
import hmac
import os
import struct
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding, aes_key_wrap_with_padding

from .status import BcastError, BcastStatus


class CWEncryptionError(BcastError, ValueError):
    """CW_encryption cannot be undone (unknown algorithm or key id, bad wrap, bad padding)."""

    status = BcastStatus.INVALID_TRAFFIC_KEY_MATERIAL


class CWAlgorithm(enum.IntEnum):
    AES128_KEY_WRAP = 0x01
    AES128_CBC = 0x02


def _cbc_iv(iv: bytes, cp_number: int) -> bytes:
    return iv[:14] + bytes([iv[14] ^ (cp_number >> 8), iv[15] ^ (cp_number & 0xFF)])


def encrypt(
    algorithm: CWAlgorithm, key_id: int, key: bytes, cws: list[tuple[int, bytes]], rng=os.urandom
) -> tuple[bytes, list[bytes]]:
    """Protect the CWs of one CW_provision.

    :param cws: ``(CP_number, CW)`` pairs.
    :returns: the CW_encryption value and the encrypted CWs, in order.
    """
    if len(key) != 16:
        raise ValueError("CW encryption keys are AES-128 keys (16 bytes)")
    algorithm = CWAlgorithm(algorithm)
    if algorithm is CWAlgorithm.AES128_KEY_WRAP:
        return struct.pack(">BH", algorithm, key_id), [aes_key_wrap_with_padding(key, cw) for _, cw in cws]
    iv = rng(16)
    out = []
    for cp, cw in cws:
        padder = padding.PKCS7(128).padder()
        enc = Cipher(algorithms.AES(key), modes.CBC(_cbc_iv(iv, cp))).encryptor()
        out.append(enc.update(padder.update(cw) + padder.finalize()) + enc.finalize())
    return struct.pack(">BH", algorithm, key_id) + iv, out


def key_id_of(cw_encryption: bytes) -> int:
    """The key_id named by a CW_encryption value."""
    if len(cw_encryption) < 3:
        raise CWEncryptionError(f"CW_encryption of {len(cw_encryption)} bytes is too short")
    return struct.unpack_from(">H", cw_encryption, 1)[0]


def decrypt(cw_encryption: bytes, keys: dict[int, bytes], cws: list[tuple[int, bytes]]) -> list[bytes]:
    """Undo :func:`encrypt` (one-off: an ECMG keeps a :class:`CWDecryptor`).

    :param keys: key_id -> 16-byte key.
    :raises CWEncryptionError: unknown algorithm or key id, wrong length, failed unwrap or padding.
    """
    return CWDecryptor().decrypt(cw_encryption, keys, cws)


_KWP_AIV = b"\xa6\x59\x59\xa6"  # RFC 5649 §3: the alternative initial value's constant half
_BLOCK = 16


class CWDecryptor:
    """:func:`decrypt` with an AES decryption context kept per key (see the module docstring).

    The contexts follow the *keys* passed on each call: a key_id whose key changed gets a new one.
    """

    __slots__ = ("_contexts",)

    def __init__(self) -> None:
        self._contexts: dict[int, tuple[bytes, Any]] = {}  # key_id -> (key, AES-ECB decryptor)

    def __repr__(self) -> str:
        return f"<CWDecryptor: {len(self._contexts)} keys>"

    def _ecb(self, key_id: int, key: bytes) -> Any:
        entry = self._contexts.get(key_id)
        if entry is None or not (entry[0] is key or hmac.compare_digest(entry[0], key)):
            entry = self._contexts[key_id] = (key, Cipher(algorithms.AES(key), modes.ECB()).decryptor())
        return entry[1]

    def decrypt(self, cw_encryption: bytes, keys: dict[int, bytes], cws: list[tuple[int, bytes]]) -> list[bytes]:
        """Undo :func:`encrypt`.

        :param keys: key_id -> 16-byte key.
        :raises CWEncryptionError: unknown algorithm or key id, wrong length, failed unwrap or padding.
        """
        key_id = key_id_of(cw_encryption)
        try:
            algorithm = CWAlgorithm(cw_encryption[0])
        except ValueError:
            raise CWEncryptionError(f"CW_encryption algorithm {cw_encryption[0]:#04x} unknown") from None
        key = keys.get(key_id)
        if key is None:
            raise CWEncryptionError(f"CW_encryption key_id {key_id} not configured")
        if len(key) != 16:  # what AES itself would refuse, said here once for both algorithms
            raise CWEncryptionError(f"CW_encryption key_id {key_id} is not an AES-128 key")
        if algorithm is CWAlgorithm.AES128_KEY_WRAP:
            if len(cw_encryption) != 3:
                raise CWEncryptionError("CW_encryption for key wrap is 3 bytes")
            return self._unwrap(key_id, key, cws)
        if len(cw_encryption) != 19:
            raise CWEncryptionError("CW_encryption for AES-128-CBC is 19 bytes")
        return self._cbc(key_id, key, cw_encryption[3:], cws)

    def _unwrap(self, key_id: int, key: bytes, cws: list[tuple[int, bytes]]) -> list[bytes]:
        if any(len(cw) != _BLOCK for _, cw in cws):  # several semiblocks: the library's loop is in Rust
            out = []
            for _, cw in cws:
                try:
                    out.append(aes_key_unwrap_with_padding(key, cw))
                except (InvalidUnwrap, ValueError):
                    raise CWEncryptionError("CW key unwrap failed (wrong key or corrupted CW)") from None
            return out
        plain = self._ecb(key_id, key).update(b"".join([cw for _, cw in cws]))
        out = []
        for pos in range(0, len(plain), _BLOCK):
            # A = AIV (0xA65959A6 || 32-bit length), then the CW zero-padded to 8 bytes (RFC 5649 §4.2)
            size = int.from_bytes(plain[pos + 4 : pos + 8], "big")
            if (
                not hmac.compare_digest(plain[pos : pos + 4], _KWP_AIV)
                or not 0 < size <= 8
                or plain[pos + 8 + size : pos + _BLOCK].count(0) != 8 - size
            ):
                raise CWEncryptionError("CW key unwrap failed (wrong key or corrupted CW)")
            out.append(plain[pos + 8 : pos + 8 + size])
        return out

    def _cbc(self, key_id: int, key: bytes, iv: bytes, cws: list[tuple[int, bytes]]) -> list[bytes]:
        for _, cw in cws:
            if not cw or len(cw) % _BLOCK:
                raise CWEncryptionError("AES-128-CBC CW is not a whole number of blocks")
        decrypted = self._ecb(key_id, key).update(b"".join([cw for _, cw in cws]))
        out, pos = [], 0
        for cp, cw in cws:
            n = len(cw)
            chained = int.from_bytes(_cbc_iv(iv, cp) + cw[:-_BLOCK], "big")
            plain = (int.from_bytes(decrypted[pos : pos + n], "big") ^ chained).to_bytes(n, "big")
            pos += n
            pad = plain[-1]
            if not 0 < pad <= _BLOCK or plain[-pad:].count(pad) != pad:  # PKCS#7
                raise CWEncryptionError("CW padding check failed (wrong key or corrupted CW)")
            out.append(plain[:-pad])
        return out
