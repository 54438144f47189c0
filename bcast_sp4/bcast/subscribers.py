"""Subscribers: devices, their unique keys and entitlements -> DRM Profile LTKMs (PROV-LTKM-1).

Spec clause: SP-4 CR §14.1.1.3.4 (the LTKM generator feeds DRM Profile LTKMs to the MUX);
bcast-keys.md §1.2/§4.1 (an LTKM delivers SEK/PEK with SAK/PAK and validity to a device). The
subscriber file format is project design; the LTKM bytes are the PROVISIONAL layout of :mod:`.ltkm_drm`.

The subscriber file (TOML) is read by :mod:`bcast_sp4.config.subscribers`; this module holds the
devices and makes their LTKMs, and does no I/O.

A device's LTKM carries each entitled key with validity = key validity ∩ subscription window; a
key whose intersection is empty is left out, and a device left with no key gets no LTKM (counted
by :meth:`Subscribers.skipped`). Key bytes are never echoed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import attrs

from .keys import ServiceKey, Timeish
from .ltkm_drm import build_ltkm

__all__ = ["Device", "Subscribers", "IssuedLTKM"]


@attrs.frozen(kw_only=True)
class Device:
    """One receiving device and what it is entitled to."""

    device_id: bytes
    device_key: bytes = attrs.field(repr=False)
    entitlements: tuple[ServiceKey, ...] = attrs.field(repr=False)
    not_before: datetime | None = None
    not_after: datetime | None = None

    def grants(self) -> list[tuple[ServiceKey, datetime | None, datetime | None]]:
        """``(key, not_before, not_after)`` for each entitled key whose window is not empty."""
        out = []
        for key in self.entitlements:
            starts = [t for t in (key.not_before, self.not_before) if t is not None]
            ends = [t for t in (key.not_after, self.not_after) if t is not None]
            start = max(starts) if starts else None
            end = min(ends) if ends else None
            if start is not None and end is not None and end <= start:
                continue
            out.append((key, start, end))
        return out


@attrs.frozen(kw_only=True)
class IssuedLTKM:
    """One generated LTKM."""

    device_id: bytes
    sequence: int
    data: bytes = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class Subscribers:
    """The parsed subscriber file."""

    devices: tuple[Device, ...]
    path: str = ""

    def ltkms(self, issued_at: Timeish, first_sequence: int) -> Iterator[IssuedLTKM]:
        """One LTKM per device with at least one valid entitlement, sequence numbers counting up.

        :param issued_at: the issue time written in every LTKM.
        :param first_sequence: sequence of the first LTKM (wraps at 2**32).
        :raises LTKMError: a device's LTKM cannot be built (see :meth:`ltkm_for` to skip it instead).
        """
        sequence = first_sequence
        for device in self.devices:
            issued = self.ltkm_for(device, issued_at, sequence)
            if issued is not None:
                sequence += 1
                yield issued

    def ltkm_for(self, device: Device, issued_at: Timeish, sequence: int) -> IssuedLTKM | None:
        """The LTKM of one device (``None`` when no entitlement is valid in its window).

        :raises LTKMError: it cannot be built (e.g. a time outside the 32-bit range).
        """
        grants = device.grants()
        if not grants:
            return None
        seq = sequence & 0xFFFFFFFF
        return IssuedLTKM(
            device_id=device.device_id,
            sequence=seq,
            data=build_ltkm(device.device_id, device.device_key, grants, issued_at=issued_at, sequence=seq),
        )

    def skipped(self) -> int:
        """How many devices get no LTKM (no entitlement valid in their window)."""
        return sum(1 for d in self.devices if not d.grants())

    def device_keys(self) -> dict[bytes, bytes]:
        """device_id -> device key (for a terminal simulator's ``parse_ltkm`` lookup)."""
        return {d.device_id: d.device_key for d in self.devices}
