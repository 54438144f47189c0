"""What an ECM / STKM is computed from, and what its producer may answer (TS 103 197 §5.4, SP-4 seed §14.1.1.3.1).

The ECMG machine (:mod:`bcast_sp4.machines.ecmg`) builds an :class:`ECMRequest` from each accepted
CW_provision and hands it to an :class:`ECMSource`; :class:`bcast_sp4.bcast.ecm.STKMSource` is the
real source. These records live here, below both, so that the payload code never imports a
machine (imports flow wire <- bcast <- machines).
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol

from ..wire.params import CPCWCombination, SectionTSpktFlag


class CasMode(enum.Enum):
    """What the ECMG produces for a Super_CAS_id, and the section_TSpkt_flag announcing it."""

    DRM_PROFILE = "drm"  # BCAST DRM Profile STKM (0x0001xxxx)
    SMARTCARD_PROFILE = "smartcard"  # BCAST Smartcard Profile MIKEY STKM (0x0002xxxx)
    DVB_SECTIONS = "dvb-sections"  # classic DVB: one ECM section per ECM_datagram
    DVB_TS_PACKETS = "dvb-ts"  # classic DVB: that section in 188-byte TS packets

    # Members are singletons compared by identity: hashed by identity too (Enum's own __hash__
    # hashes the name in Python, once per STKM where the source counts what it made).
    __hash__ = object.__hash__

    @property
    def section_TSpkt_flag(self) -> int:
        if self is CasMode.DVB_SECTIONS:
            return SectionTSpktFlag.SECTIONS
        if self is CasMode.DVB_TS_PACKETS:
            return SectionTSpktFlag.TS_PACKETS
        return SectionTSpktFlag.BCAST


class ECMRequest(NamedTuple):
    """Everything an ECM / STKM is computed from (CWs ordered by CP_number, oldest first).

    A NamedTuple rather than an attrs class: one is built per STKM on the ECMG's hot path.
    """

    super_CAS_id: int
    mode: CasMode
    ECM_id: int | None
    channel_id: int
    stream_id: int
    CP_number: int
    CP_CW_combination: tuple[CPCWCombination, ...]
    CP_duration: int  # x 100 ms: the message's CP_duration, else the stream's nominal one
    access_criteria: bytes | None
    CW_encryption: bytes | None
    now: float

    def __repr__(self) -> str:  # the CWs (and their encryption header) stay out of logs
        return (
            f"ECMRequest(super_CAS_id={self.super_CAS_id:#010x}, ECM_id={self.ECM_id}, channel_id={self.channel_id}, "
            f"stream_id={self.stream_id}, CP_number={self.CP_number}, {len(self.CP_CW_combination)} CWs)"
        )


class ECMGenerationError(Exception):
    """The source cannot produce this ECM; *error_status* goes into a stream_error."""

    def __init__(self, error_status: int, detail: str) -> None:
        super().__init__(detail)
        self.error_status = error_status
        self.detail = detail


class ECMSource(Protocol):
    """Computes ECM_datagrams. Implemented by :class:`bcast_sp4.bcast.ecm.STKMSource`."""

    def check_stream(self, super_cas_id: int, ecm_id: int | None, now: float) -> None:
        """Raise :class:`ECMGenerationError` when no ECM could be made for this stream."""

    def generate(self, request: ECMRequest) -> bytes:
        """The ECM_datagram, or :class:`ECMGenerationError`."""


__all__ = ["CasMode", "ECMGenerationError", "ECMRequest", "ECMSource"]
