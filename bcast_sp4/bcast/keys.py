"""Service and programme keys (SEK/PEK) and a per-stream key store.

Spec clause: bcast-keys.md §1.2 (DRM Profile: SEK/PEK 128 bits, SAK/PAK for the STKM MAC), §1.3
(Smartcard Profile: SEK/PEK = MSK, 128 bits; Key Domain ID 24 bits; SEK/PEK ID = MSK ID 32 bits)
and SP-4 CR §14.1.1.3.1 (``super_CAS_id`` + ``ECM_id`` identify one STKM stream; the first two bytes of
``super_CAS_id`` are 0x0001 for the DRM Profile and 0x0002 for the Smartcard Profile).

Confidence: medium for key sizes and ids; the store's rules are project
design. Design decisions on the [R]/[?] points:

* ``key_id`` is one 32-bit number whose meaning depends on the profile: the DRM Profile finds the
  key by the STKM's 32-bit ``service_CID_extension``/``programme_CID_extension`` (§1.4 step 3), so
  ``key_id`` is that extension; the Smartcard Profile names the key by Key Domain ID (3 bytes,
  ``key_domain_id``) + SEK/PEK ID (``key_id``, the MSK ID), RFC 4563 Key ID types 0 and 1.
* Authentication key: the DRM Profile MAC key (SAK/PAK) arrives with the SEK/PEK in the LTKM; its size
  is [?] (128 or 160 bits), so 16-64 bytes are accepted and it is **required** for keys used on DRM
  streams. The Smartcard Profile has no separate authentication key: MIKEY derives the MAC key from
  the SEK/PEK with the RFC 3830 PRF (stkm_mikey.py), so ``authentication_key`` stays ``None``.
* Validity is the half-open interval ``not_before <= t < not_after``; either end may be open
  (``None``). Bounds are timezone-aware datetimes; ints are POSIX seconds (UTC); naive datetimes are
  rejected because they are ambiguous.
* ``KeyStore.lookup`` with several valid keys of the same role returns the one with the latest
  ``not_before`` (key roll-over: the new key wins as soon as it starts). The store answers from a
  per-stream index of the validity boundaries (microsecond integers, built on first use and dropped
  by :meth:`KeyStore.add`); the answer is the linear scan's, evaluated once per interval between
  boundaries, and POSIX-second times are rounded to microseconds exactly as ``to_datetime`` rounds.
* :class:`PerKeyCache` holds state derived from a key (cipher contexts, MAC states) for the STKM
  codecs, keyed on the identity of the (immutable) :class:`ServiceKey` and dropped with it.

The key file (TOML) that fills a :class:`KeyStore` is read by :mod:`bcast_sp4.config.keyfile`;
this module holds the keys and the store, and does no I/O.
"""

from __future__ import annotations

import enum
import math
import weakref
from bisect import bisect_right
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, TypeVar, Union

import attrs

from .status import KeyNotValidError, NoKeyError

__all__ = [
    "KmsProfile",
    "KeyRole",
    "ServiceKey",
    "KeyRef",
    "KeyLookup",
    "KeyStore",
    "PerKeyCache",
    "as_key_lookup",
    "to_datetime",
    "NoKeyError",
    "KeyNotValidError",
]

#: SEK/PEK (MSK) size in bytes
KEY_SIZE = 16
#: Smartcard Profile Key Domain ID size in bytes (MCC || MNC)
KDI_SIZE = 3
#: accepted DRM Profile SAK/PAK sizes in bytes ([?] 128 or 160 bits in the spec)
AUTH_KEY_SIZES = range(16, 65)


class KmsProfile(enum.IntEnum):
    """KMS profile, as the first two bytes of ``super_CAS_id`` (SP-4 CR §14.1.1.3.1)."""

    DRM = 0x0001
    SMARTCARD = 0x0002

    @classmethod
    def from_super_cas_id(cls, super_cas_id: int) -> "KmsProfile":
        """Profile of a ``super_CAS_id``.

        :param super_cas_id: the 32-bit ``super_CAS_id``.
        :returns: the profile.
        :raises ValueError: if the high 16 bits are neither 0x0001 nor 0x0002.
        """
        if not 0 <= super_cas_id <= 0xFFFFFFFF:
            raise ValueError(f"super_CAS_id {super_cas_id} is not a uint32")
        try:
            return cls(super_cas_id >> 16)
        except ValueError:
            raise ValueError(
                f"super_CAS_id {super_cas_id:#010x}: high 16 bits must be 0x0001 (DRM) or 0x0002 (Smartcard)"
            ) from None


class KeyRole(enum.Enum):
    """Service-level (SEK/SAK) or programme-level (PEK/PAK) key."""

    SERVICE = "service"
    PROGRAMME = "programme"


Timeish = Union[datetime, int, float]


def to_datetime(value: Timeish) -> datetime:
    """Normalise a time to an aware UTC datetime.

    :param value: an aware datetime, or POSIX seconds (int or float).
    :returns: the UTC datetime.
    :raises ValueError: for a naive datetime or another type.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: give a timezone (UTC) or POSIX seconds")
        return value.astimezone(timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, timezone.utc)
    raise ValueError(f"expected a datetime or POSIX seconds, got {type(value).__name__}")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
# POSIX seconds handled without a datetime: far inside datetime's range on every platform.
_FAST_SECONDS = (0, 10_000_000_000)


def _posix_us(value: object) -> int | None:
    """``to_datetime(value)`` as integer microseconds since the epoch, or ``None`` (use to_datetime).

    Only plain ints and floats in ``_FAST_SECONDS`` are converted. A float is split and its fraction
    rounded half-to-even to microseconds as CPython's ``datetime.fromtimestamp`` does
    (``_PyTime_DoubleToDenominator``), so both give the same microsecond.
    """
    kind = type(value)
    if kind is float:
        if not _FAST_SECONDS[0] <= value < _FAST_SECONDS[1]:  # type: ignore[operator]  # NaN: False
            return None
        frac, whole = math.modf(value)  # type: ignore[arg-type]
        us = round(frac * 1e6)
        if us >= 1_000_000:
            return (int(whole) + 1) * 1_000_000 + us - 1_000_000
        return int(whole) * 1_000_000 + us
    if kind is int and _FAST_SECONDS[0] <= value < _FAST_SECONDS[1]:  # type: ignore[operator]
        return value * 1_000_000  # type: ignore[operator]
    return None


def _datetime_us(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _opt_datetime(value: Timeish | None) -> datetime | None:
    return None if value is None else to_datetime(value)


def _opt_bytes(value: object) -> bytes | None:
    return None if value is None else _bytes(value)


def _check_key(_inst: object, _attr: attrs.Attribute, value: bytes) -> None:
    if len(value) != KEY_SIZE:
        raise ValueError(f"key must be {KEY_SIZE} bytes, got {len(value)}")


def _check_auth_key(_inst: object, _attr: attrs.Attribute, value: bytes | None) -> None:
    if value is not None and len(value) not in AUTH_KEY_SIZES:
        raise ValueError(f"authentication_key must be 16-64 bytes, got {len(value)}")


def _check_kdi(_inst: object, _attr: attrs.Attribute, value: bytes) -> None:
    if len(value) not in (0, KDI_SIZE):
        raise ValueError(f"key_domain_id must be {KDI_SIZE} bytes (or empty), got {len(value)}")


def _check_u32(_inst: object, attr: attrs.Attribute, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{attr.name} must be a uint32")


def _bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected bytes, got {type(value).__name__}")


@attrs.frozen(kw_only=True)
class ServiceKey:
    """One SEK or PEK with its identity, MAC key and validity (see the module docstring).

    :ivar key_id: DRM CID extension, or Smartcard SEK/PEK (MSK) ID; uint32.
    :ivar key: the 16-byte SEK/PEK.
    :ivar authentication_key: DRM SAK/PAK (16-64 bytes) or ``None`` (Smartcard: derived by MIKEY).
    :ivar role: :class:`KeyRole`.
    :ivar key_domain_id: Smartcard Key Domain ID (3 bytes) or empty.
    :ivar not_before: start of validity (inclusive) or ``None``.
    :ivar not_after: end of validity (exclusive) or ``None``.
    :ivar name: a label for messages and logs.
    """

    key_id: int = attrs.field(validator=_check_u32)
    key: bytes = attrs.field(converter=_bytes, validator=_check_key, repr=False)
    authentication_key: bytes | None = attrs.field(
        default=None, converter=_opt_bytes, validator=_check_auth_key, repr=False
    )
    role: KeyRole = attrs.field(default=KeyRole.SERVICE, converter=KeyRole)
    key_domain_id: bytes = attrs.field(default=b"", converter=_bytes, validator=_check_kdi)
    not_before: datetime | None = attrs.field(default=None, converter=_opt_datetime)
    not_after: datetime | None = attrs.field(default=None, converter=_opt_datetime)
    name: str = ""

    def __attrs_post_init__(self) -> None:
        if self.not_before is not None and self.not_after is not None and self.not_after <= self.not_before:
            raise ValueError("not_after must be later than not_before")

    @property
    def label(self) -> str:
        """``name`` if set, else ``<role> key <key_id>``: safe for messages (no key bytes)."""
        return self.name or f"{self.role.value} key {self.key_id:#010x}"

    def is_valid_at(self, at_time: Timeish) -> bool:
        """Whether ``not_before <= at_time < not_after``.

        :param at_time: aware datetime or POSIX seconds.
        :returns: True inside the validity window.
        """
        t = to_datetime(at_time)
        if self.not_before is not None and t < self.not_before:
            return False
        return self.not_after is None or t < self.not_after

    def matches(self, ref: "KeyRef") -> bool:
        """Whether this key is the one ``ref`` names (a ``None`` in ``ref`` matches anything)."""
        return (
            self.key_id == ref.key_id
            and (ref.role is None or ref.role is self.role)
            and (ref.key_domain_id is None or ref.key_domain_id == self.key_domain_id)
        )


@attrs.frozen
class KeyRef:
    """What a received STKM says about its key: id, and where known the role and Key Domain ID."""

    key_id: int
    role: KeyRole | None = None
    key_domain_id: bytes | None = None


#: ``lookup(ref) -> ServiceKey | None``: how a parser finds the key an STKM names.
KeyLookup = Callable[[KeyRef], Union[ServiceKey, None]]


_RAISE: Any = object()


class KeyStore:
    """Keys per STKM stream ``(super_CAS_id, ECM_id)``, for the ECMG; also a :data:`KeyLookup`.

    The store is filled once (by :func:`bcast_sp4.config.load_keyfile` or :meth:`add`) and then only read; to reload,
    build a new store and swap the reference.
    """

    def __init__(self) -> None:
        self._streams: dict[tuple[int, int], list[ServiceKey]] = {}
        # (super_CAS_id, ECM_id, role) -> (boundaries in µs, answer per interval); see lookup().
        self._index: dict[tuple[int, int, KeyRole], tuple[list[int], list[ServiceKey | None]]] = {}

    def add(self, super_cas_id: int, ecm_id: int, key: ServiceKey) -> None:
        """Make ``key`` usable on the stream ``(super_cas_id, ecm_id)``.

        :raises ValueError: on an invalid ``super_cas_id`` (see :class:`KmsProfile`) or ``ecm_id``.
        """
        KmsProfile.from_super_cas_id(super_cas_id)
        if not 0 <= ecm_id <= 0xFFFF:
            raise ValueError(f"ECM_id {ecm_id} is not a uint16")
        self._streams.setdefault((super_cas_id, ecm_id), []).append(key)
        self._index.clear()

    def streams(self) -> tuple[tuple[int, int], ...]:
        """All configured ``(super_CAS_id, ECM_id)`` pairs."""
        return tuple(self._streams)

    def keys(self) -> tuple[ServiceKey, ...]:
        """Every distinct key in the store."""
        seen: dict[int, ServiceKey] = {}
        for keys in self._streams.values():
            for key in keys:
                seen.setdefault(id(key), key)
        return tuple(seen.values())

    def lookup(
        self,
        super_cas_id: int,
        ecm_id: int,
        at_time: Timeish,
        *,
        role: KeyRole = KeyRole.SERVICE,
        default: Any = _RAISE,
        reference: bool = False,
    ) -> ServiceKey:
        """The key to use on a stream at a time.

        :param super_cas_id: SimulCrypt ``super_CAS_id``.
        :param ecm_id: SimulCrypt ``ECM_id`` (= stkmstream).
        :param at_time: when the STKM applies (crypto-period start): aware datetime or POSIX seconds.
        :param role: SERVICE (SEK) or PROGRAMME (PEK).
        :param default: if given, returned instead of raising :class:`NoKeyError` or
            :class:`KeyNotValidError` (an optional key costs no exception).
        :param reference: answer by scanning the stream's keys (the definition the index is tested
            against) instead of from the index.
        :returns: the valid key with the latest ``not_before``.
        :raises NoKeyError: no key of that role is configured for the stream.
        :raises KeyNotValidError: keys exist but none is valid at ``at_time``.
        """
        if not reference:
            index = self._index.get((super_cas_id, ecm_id, role))
            if index is None and (super_cas_id, ecm_id) in self._streams:
                index = self._build_index(super_cas_id, ecm_id, role)
            if index is not None:
                us = _posix_us(at_time)
                if us is not None:
                    key = index[1][bisect_right(index[0], us)]
                    if key is not None:
                        return key
                    if default is not _RAISE:  # no key of the role, or none valid then
                        return default
        if default is _RAISE:
            return self._scan(super_cas_id, ecm_id, at_time, role)
        try:
            return self._scan(super_cas_id, ecm_id, at_time, role)
        except (NoKeyError, KeyNotValidError):
            return default

    def lookup_span(self, super_cas_id: int, ecm_id: int, at_time: float, role: KeyRole = KeyRole.SERVICE):
        """The indexed answer of :meth:`lookup` with the interval on which it holds.

        :returns: ``(key or None, start_us, end_us)``: ``lookup`` gives the same answer for every
            POSIX time whose microseconds (rounded as :func:`_posix_us` rounds) lie in
            ``[start_us, end_us)``; ``None`` when *at_time* is outside the indexed range or the
            stream is unknown (then call :meth:`lookup`, which raises the right error).
        """
        index = self._index.get((super_cas_id, ecm_id, role))
        if index is None:
            if (super_cas_id, ecm_id) not in self._streams:
                return None
            index = self._build_index(super_cas_id, ecm_id, role)
        us = _posix_us(at_time)
        if us is None:
            return None
        bounds, answers = index
        i = bisect_right(bounds, us)
        start = bounds[i - 1] if i else _FAST_SECONDS[0] * 1_000_000
        end = bounds[i] if i < len(bounds) else _FAST_SECONDS[1] * 1_000_000
        return answers[i], start, end

    def _candidates(self, super_cas_id: int, ecm_id: int, role: KeyRole) -> list[ServiceKey]:
        return [k for k in self._streams.get((super_cas_id, ecm_id), ()) if k.role is role]

    def _scan(self, super_cas_id: int, ecm_id: int, at_time: Timeish, role: KeyRole) -> ServiceKey:
        """The reference answer (and every error) of :meth:`lookup`."""
        candidates = self._candidates(super_cas_id, ecm_id, role)
        if not candidates:
            raise NoKeyError(
                f"no {role.value} key for super_CAS_id {super_cas_id:#010x} ECM_id {ecm_id}"
            )
        t = to_datetime(at_time)
        chosen = _select(candidates, t)
        if chosen is None:
            names = ", ".join(k.label for k in candidates)
            raise KeyNotValidError(
                f"no {role.value} key valid at {t.isoformat()} for super_CAS_id {super_cas_id:#010x}"
                f" ECM_id {ecm_id} (configured: {names})"
            )
        return chosen

    def _build_index(
        self, super_cas_id: int, ecm_id: int, role: KeyRole
    ) -> tuple[list[int], list[ServiceKey | None]]:
        # Which keys are valid changes only at a not_before / not_after, so the scan's answer is
        # constant on each interval between consecutive boundaries: evaluate it once per interval,
        # at its first instant inside _FAST_SECONDS (only such times reach the index). ``None`` =
        # no valid key, or no fast time in the interval: lookup() then runs the scan, which raises.
        candidates = self._candidates(super_cas_id, ecm_id, role)
        bounds = sorted(
            {_datetime_us(b) for k in candidates for b in (k.not_before, k.not_after) if b is not None}
        )
        lowest, highest = _FAST_SECONDS[0] * 1_000_000, _FAST_SECONDS[1] * 1_000_000
        answers: list[ServiceKey | None] = []
        for i in range(len(bounds) + 1):
            # interval i = [bounds[i-1], bounds[i]); any instant in it gives the same answer
            at = max(bounds[i - 1], lowest) if i else lowest
            end = bounds[i] if i < len(bounds) else highest
            if at >= min(end, highest):
                answers.append(None)  # no fast time falls in this interval
            else:
                answers.append(_select(candidates, _EPOCH + at * _MICROSECOND))
        self._index[(super_cas_id, ecm_id, role)] = (bounds, answers)
        return bounds, answers

    def find(self, ref: KeyRef) -> ServiceKey | None:
        """A key matching ``ref`` in any stream (the terminal's view), or ``None``."""
        for key in self.keys():
            if key.matches(ref):
                return key
        return None

    __call__ = find


_DATETIME_MIN = datetime.min.replace(tzinfo=timezone.utc)


def _select(candidates: list[ServiceKey], t: datetime) -> ServiceKey | None:
    """The valid key with the latest ``not_before`` (the first such in ``candidates``), or ``None``."""
    valid = [k for k in candidates if k.is_valid_at(t)]
    if not valid:
        return None
    return max(valid, key=lambda k: k.not_before or _DATETIME_MIN)


_T = TypeVar("_T")


class PerKeyCache(Generic[_T]):
    """State derived from a key object, computed once and kept only while that object lives.

    Entries are keyed on the identity of the :class:`ServiceKey` (frozen, so the derived state
    never goes stale) and held through a weak reference: when the key object is collected, its
    entry goes too. Two equal key objects get separate entries; no entry is ever shared between
    different objects. ``derive(key)`` must depend on the key's fields only.

    :param derive: computes the state for one key.
    """

    __slots__ = ("_derive", "_entries")

    def __init__(self, derive: Callable[[ServiceKey], _T]) -> None:
        self._derive = derive
        self._entries: dict[int, tuple[weakref.ref, _T]] = {}

    def __repr__(self) -> str:
        return f"<PerKeyCache of {getattr(self._derive, '__name__', 'derive')}: {len(self._entries)} keys>"

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, key: ServiceKey) -> _T:
        """The state for ``key`` (derived on first use).

        :param key: the key object.
        :returns: ``derive(key)``, cached.
        """
        entry = self._entries.get(id(key))
        if entry is not None and entry[0]() is key:
            return entry[1]
        value = self._derive(key)
        ident, entries = id(key), self._entries

        def forget(ref: weakref.ref, ident: int = ident, entries: dict = entries) -> None:
            current = entries.get(ident)
            if current is not None and current[0] is ref:
                del entries[ident]

        entries[ident] = (weakref.ref(key, forget), value)
        return value


def as_key_lookup(keys: ServiceKey | Iterable[ServiceKey] | KeyStore | KeyLookup) -> KeyLookup:
    """Normalise what a caller gives a parser into a :data:`KeyLookup`.

    :param keys: one key, an iterable of keys, a :class:`KeyStore`, or a lookup callable.
    :returns: ``lookup(ref) -> ServiceKey | None``.
    """
    if isinstance(keys, ServiceKey):
        keys = (keys,)
    if isinstance(keys, KeyStore):
        return keys.find
    if callable(keys):
        return keys
    pool = tuple(keys)

    def lookup(ref: KeyRef) -> ServiceKey | None:
        return next((k for k in pool if k.matches(ref)), None)

    return lookup
