"""Records shared by the SCS machines: configuration, ECMG parameters, events and outputs.

TS 103 197 §5 (digest ``simulcrypt.md`` §3, §5.1, §6.2); OMA BCAST SP-4 seed §14.1.1.3.3. The
machines themselves are :mod:`.scs_channel` (one ECMG connection), :mod:`.scs_scheduler` (one
encrypted service's crypto-periods) and :mod:`.scs_core` (the whole SCS, routing between them).

Outputs of the SCS besides :class:`~.outputs.Send` / :class:`~.outputs.Close` /
:class:`~.outputs.Notify` / :class:`~.outputs.StartTimer` / :class:`~.outputs.CancelTimer`:
:class:`ChannelOutput` (a Send or Close addressed to one ECMG connection), :class:`ProvideTEK`
(scrambler: here is TEK(n), from ``at`` on), :class:`SwitchTEK` (scrambler: T(n) has come, switch)
and :class:`SubmitSTKM` (MUX: air this STKM from ``on_air_from``, every ``repetition_ms``).
"""

from __future__ import annotations

from typing import Any

import attrs

from ..bcast import cw_encryption, traffic
from ..wire import ecmg_scs as m
from ..wire.params import CPCWCombination
from .outputs import Close, Send

#: CP_number is the period number n modulo 2^16 (digest §3.4)
CP_MODULUS = 0x10000
#: ``n & CP_NUMBER_MASK`` is CP_number(n)
CP_NUMBER_MASK = CP_MODULUS - 1


# ---------------------------------------------------------------------------------------------
# Output records (besides Send / Close / Notify)
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class ProvideTEK:
    """Scrambler: protect *service*'s traffic with *material* from instant *at* (= T(n)) on.

    Given ahead of T(n), so the scrambler prepares its context off the switch path; the switch
    itself is :class:`SwitchTEK` (or the first datagram at or after *at*, whichever comes first).
    """

    service: str
    cp_number: int  # 16-bit, as on the wire
    material: traffic.TrafficKeyMaterial = attrs.field(repr=False)
    at: float


@attrs.frozen
class SwitchTEK:
    """Scrambler: T(n) has come, make TEK(n) (given by :class:`ProvideTEK`) current now."""

    service: str
    cp_number: int  # 16-bit, as on the wire
    at: float


@attrs.frozen
class SubmitSTKM:
    """MUX: air *stkm* for (super_cas_id, ecm_id) from *on_air_from*, every *repetition_ms* ms,
    until the next STKM of the same pair replaces it."""

    super_cas_id: int
    ecm_id: int
    cp_number: int  # 16-bit, as on the wire
    stkm: bytes = attrs.field(repr=False)
    on_air_from: float
    repetition_ms: int


@attrs.frozen
class ChannelOutput:
    """A :class:`Send` or :class:`Close` for the connection of ECMG channel *channel*."""

    channel: str
    output: Send | Close


# ---------------------------------------------------------------------------------------------
# Configuration records (built by bcast_sp4.config.scs)
# ---------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CWEncryptionSpec:
    """TEK protection on the ECMG link (:mod:`bcast_sp4.bcast.cw_encryption`)."""

    algorithm: cw_encryption.CWAlgorithm
    key_id: int
    key: bytes = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class ChannelSpec:
    """One ECMG channel: one TCP connection (to *endpoint*, else *backup_endpoint*)."""

    name: str
    endpoint: str
    backup_endpoint: str | None
    super_CAS_id: int
    ECM_channel_id: int
    protocol_version: int = 3
    #: section_TSpkt_flag values accepted in the ECMG's channel_status: 0x02 (STKMs) by default;
    #: 0x00 / 0x01 (a classic DVB ECMG) only when configured, its ECMs carried opaque to the MUX
    section_TSpkt_flags: frozenset[int] = frozenset({0x02})


@attrs.frozen(kw_only=True)
class LinkSpec:
    """One STKM stream of a service on one ECMG channel."""

    channel: str
    super_CAS_id: int
    ECM_stream_id: int
    ECM_id: int
    access_criteria: bytes | None = None
    cw_encryption: CWEncryptionSpec | None = None


@attrs.frozen(kw_only=True)
class ServiceSpec:
    """One encrypted service (one SCS instance in the seed's words).

    :param crypto_period: D in units of 100 ms (the stream's nominal_CP_duration).
    :param tek_params: passed to :func:`bcast_sp4.bcast.traffic.generate` besides the identifier
        (IPsec ``authenticated``; SRTP ``mki_length``; ISMACryp ``key_indicator_length``).
    :param phase: seconds; T(n) = phase + n x D.
    """

    name: str
    crypto_period: int
    protection: traffic.TrafficProtection
    links: tuple[LinkSpec, ...]
    tek_params: dict[str, Any] = attrs.field(factory=dict)
    phase: float = 0.0

    @property
    def period_seconds(self) -> float:
        return self.crypto_period / 10.0


@attrs.frozen(kw_only=True)
class Timing:
    """SCS timing policy (seconds)."""

    channel_test_interval: float = 10.0  # 0 = never
    setup_timeout: float = 5.0  # channel_setup / stream_setup / channel_test answers
    setups_in_flight: int = 8  # per channel at channel open: stream_setups awaiting their answer (0 = all at once)
    response_timeout_floor: float = 0.25  # ECM_response timeout is max(2 x max_comp_time, this)
    provision_lead: float | None = None  # None: half a crypto-period
    max_attempts: int = 3  # CW_provisions per period and ECMG
    retry_delay: float = 0.05  # after a stream_error answering a CW_provision
    stream_retry_delay: float = 1.0  # after a refused stream_setup (doubles per refusal)
    start_allowance: float = 0.5  # first scrambled period: time to connect and set up
    close_timeout: float = 5.0  # at shutdown: wait for the stream_close_responses, then channel_close


@attrs.frozen(kw_only=True)
class ECMGParams:
    """What a channel_status announced, in seconds where the wire says ms."""

    delay_start: float
    transition_delay_start: float | None
    ECM_rep_period: int  # ms
    lead_CW: int
    CW_per_msg: int
    max_comp_time: float
    min_CP_duration: int  # x 100 ms
    section_TSpkt_flag: int

    @classmethod
    def from_status(cls, status: m.ChannelStatus) -> "ECMGParams":
        tds = status.transition_delay_start
        return cls(
            delay_start=status.delay_start / 1000.0,
            transition_delay_start=None if tds is None else tds / 1000.0,
            ECM_rep_period=status.ECM_rep_period,
            lead_CW=status.lead_CW,
            CW_per_msg=status.CW_per_msg,
            max_comp_time=status.max_comp_time / 1000.0,
            min_CP_duration=status.min_CP_duration,
            section_TSpkt_flag=status.section_TSpkt_flag,
        )

    def cp_window(self, n: int) -> range:
        """The CPs a CW_provision for CP *n* carries (digest §3.4)."""
        first = n - (self.CW_per_msg - 1 - self.lead_CW)
        return range(first, first + self.CW_per_msg)


# ---------------------------------------------------------------------------------------------
# Channel machine events consumed by the core
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class ChannelUp:
    channel: str
    params: ECMGParams


@attrs.frozen
class StreamUp:
    channel: str
    stream_id: int


@attrs.frozen
class StreamDown:
    channel: str
    stream_id: int
    reason: str


@attrs.frozen
class ECMArrived:
    channel: str
    stream_id: int
    cp_number: int
    datagram: bytes = attrs.field(repr=False)


@attrs.frozen
class ProvisionFailed:
    """A CW_provision was answered with stream_error *error_status* (``None``: never sent)."""

    channel: str
    stream_id: int
    cp_number: int
    error_status: int | None


@attrs.frozen
class RequestCWProvision:
    """Scheduler -> core: send this CW_provision on the link's stream."""

    service: str
    link: int
    stream_id: int
    cp_number: int
    combinations: tuple[CPCWCombination, ...] = attrs.field(repr=False)
    cw_encryption: bytes | None = attrs.field(repr=False)
    access_criteria: bytes | None


__all__ = [
    "CP_MODULUS",
    "CP_NUMBER_MASK",
    "ChannelOutput",
    "ChannelSpec",
    "ChannelUp",
    "CWEncryptionSpec",
    "ECMArrived",
    "ECMGParams",
    "LinkSpec",
    "ProvideTEK",
    "ProvisionFailed",
    "RequestCWProvision",
    "ServiceSpec",
    "StreamDown",
    "StreamUp",
    "SubmitSTKM",
    "SwitchTEK",
    "Timing",
]
