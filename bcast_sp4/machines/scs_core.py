"""The whole SimulCrypt Synchroniser (SCS): its ECMG channels and its services' schedulers, linked.

TS 103 197 §5 (digest ``simulcrypt.md`` §3, §5.1, §6); OMA BCAST SP-4 seed §14.1.1.2 and
§14.1.1.3.3. Three pure machines make the SCS, none of which touches a reactor, socket or logger;
every input takes ``now`` (seconds) and returns a list of frozen output records:

* :class:`~.scs_channel.SCSChannel` — one per ECMG TCP connection: the channel and its streams.
* :class:`~.scs_scheduler.ServiceScheduler` — one per encrypted service: crypto-period numbering,
  the TEK generator (CWG), CW_provision timing, ECM_response matching, retries, STKM submission to
  the MUX and TEK hand-over to the scrambler.
* :class:`SCSCore` (here) — the whole SCS: routes channel events to schedulers and provisioning
  requests to channels, timer keys to their machine, and addresses connection outputs
  (:class:`~.scs_records.ChannelOutput`).

Outputs of the core: :class:`~.scs_records.ChannelOutput` (a :class:`~.outputs.Send` or
:class:`~.outputs.Close` for one connection), :class:`~.outputs.Notify`,
:class:`~.outputs.StartTimer` / :class:`~.outputs.CancelTimer` (keys:
:class:`~.scs_channel.ChannelTimer`, :class:`~.scs_scheduler.PeriodTimer`,
:class:`~.scs_scheduler.TEKSwitchTimer`; the adapter hands a fired key back to :meth:`SCSCore.timer`),
:class:`~.scs_records.ProvideTEK` (scrambler: TEK(n) from ``at``), :class:`~.scs_records.SwitchTEK`
(scrambler: switch now) and :class:`~.scs_records.SubmitSTKM` (MUX: air this STKM from
``on_air_from``, repeated every ``repetition_ms``).
"""

from __future__ import annotations

import os
from typing import Callable, Hashable, Iterable

from ..bcast import traffic
from ..wire import Message, PeerProtocolError
from .channel import internal_error
from .outputs import Close, Send, StartTimer
from .scs_channel import ChannelTimer, SCSChannel
from .scs_records import (
    ChannelOutput,
    ChannelSpec,
    ChannelUp,
    ECMArrived,
    ProvisionFailed,
    RequestCWProvision,
    ServiceSpec,
    StreamDown,
    StreamUp,
    Timing,
)
from .scs_scheduler import PeriodTimer, ServiceScheduler, TEKSwitchTimer


#: the outputs :meth:`SCSCore._route` acts on (every other one is the core's output as it is)
_ROUTED = frozenset({Send, Close, RequestCWProvision, ECMArrived, ProvisionFailed, StreamUp, StreamDown, ChannelUp})

#: s before a service's poll timer runs again after its poll raised (e.g. the TEK source failed)
TIMER_RETRY = 1.0


class SCSCore:
    """All channels and services of one SCS process, linked in memory.

    Inputs name a channel (by :attr:`ChannelSpec.name`) or a timer key; outputs are those of the
    module docstring.
    """

    def __init__(
        self,
        channels: Iterable[ChannelSpec],
        services: Iterable[ServiceSpec],
        timing: Timing = Timing(),
        tek_factory: Callable[[str, int], traffic.TrafficKeyMaterial] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.timing = timing
        self.channel_specs = {c.name: c for c in channels}
        self.services: dict[str, ServiceScheduler] = {}
        members: dict[str, list] = {name: [] for name in self.channel_specs}
        self._links: dict[tuple[str, int], tuple[str, int]] = {}  # (channel, stream id) -> (service, link)
        self._members: dict[str, list[tuple[str, int]]] = {name: [] for name in self.channel_specs}
        for spec in services:
            factory = None if tek_factory is None else (lambda n, _s=spec.name: tek_factory(_s, n))
            self.services[spec.name] = ServiceScheduler(spec, timing, factory, rng)
            for index, link in enumerate(spec.links):
                if link.channel not in members:
                    raise ValueError(f"service {spec.name}: unknown channel {link.channel!r}")
                if self.channel_specs[link.channel].super_CAS_id != link.super_CAS_id:
                    raise ValueError(f"service {spec.name}: link super_CAS_id differs from channel {link.channel!r}")
                members[link.channel].append((spec.name, link, spec.crypto_period))
                self._links[(link.channel, link.ECM_stream_id)] = (spec.name, index)
                self._members[link.channel].append((spec.name, index))
        self.channels: dict[str, SCSChannel] = {
            name: SCSChannel(spec, members[name], timing) for name, spec in self.channel_specs.items()
        }

    # -- inputs ------------------------------------------------------------------------------------

    def start(self, now: float) -> list:
        """Start every service's scheduler (choose its first period, arm its timer)."""
        out: list = []
        for scheduler in self.services.values():
            out += scheduler.start(now)
        return out

    def stop(self, now: float) -> list:
        """Shut down: close every channel, disarm every timer."""
        out: list = []
        for name, channel in self.channels.items():
            out += self._route(name, channel.close(now), now)
        for scheduler in self.services.values():
            out += scheduler.stop(now)
        return out

    def connection_made(self, channel: str, now: float) -> list:
        return self._route(channel, self.channels[channel].connection_made(now), now)

    def receive(self, channel: str, item: Message | PeerProtocolError, now: float) -> list:
        machine = self.channels[channel]
        try:
            return self._route(channel, machine.receive(item, now), now)
        except Exception as exc:  # our bug (or a scheduler's): 0x7000 to that ECMG, the channel stays
            return self._route(channel, machine.internal_error(item, exc), now)

    def connection_lost(self, channel: str, now: float) -> list:
        return self._route(channel, self.channels[channel].connection_lost(now), now)

    def timer(self, key: Hashable, now: float) -> list:
        """The timer *key* (from one of our :class:`~.outputs.StartTimer` outputs) fired.

        An exception from the service or channel (a failing TEK source, our bug) is notified as
        ``internal_error``; a service's poll timer is then armed again ``TIMER_RETRY`` s later, so
        that service retries and the others never notice.

        :raises ValueError: *key* is not one of ours (the caller's bug).
        """
        if type(key) not in (PeriodTimer, TEKSwitchTimer, ChannelTimer):
            raise ValueError(f"not an SCS timer key: {key!r}")
        try:
            return self._timer(key, now)
        except Exception as exc:
            out: list = [internal_error("timer", exc, key=repr(key))]
            if type(key) is PeriodTimer:
                out.append(StartTimer(key, TIMER_RETRY))
            return out

    def _timer(self, key: Hashable, now: float) -> list:
        kind = type(key)
        if kind is PeriodTimer:
            return self._route(None, self.services[key.service].poll(now), now)
        if kind is TEKSwitchTimer:
            return self._route(None, self.services[key.service].switch(key.n, now), now)
        if kind is ChannelTimer:
            return self._route(key.channel, self.channels[key.channel].timer(key, now), now)
        raise ValueError(f"not an SCS timer key: {key!r}")

    # -- routing -----------------------------------------------------------------------------------

    def _route(self, source: str | None, outputs: list, now: float) -> list:
        for output in outputs:
            if type(output) in _ROUTED:
                break
        else:  # nothing to route (a poll's timer, a switch): the outputs as they are
            return outputs
        # a FIFO of (origin, output) in two lists: what routing an output yields goes to the end
        result: list = []
        items = list(outputs)
        origins = [source] * len(items)
        i = 0
        while i < len(items):
            origin, output = origins[i], items[i]
            i += 1
            kind = type(output)
            if kind is Send or kind is Close:
                result.append(ChannelOutput(origin, output))
                continue
            if kind is RequestCWProvision:
                channel = self.services[output.service].spec.links[output.link].channel
                outs, origin = self.channels[channel].provision(output, now), channel
            elif kind is ECMArrived:
                svc, index = self._links[(output.channel, output.stream_id)]
                outs, origin = self.services[svc].ecm_arrived(index, output.cp_number, output.datagram, now), None
            elif kind is ProvisionFailed:
                svc, index = self._links[(output.channel, output.stream_id)]
                outs, origin = self.services[svc].provision_failed(index, output.cp_number, output.error_status, now), None
            elif kind is StreamUp:
                svc, index = self._links[(output.channel, output.stream_id)]
                params = self.channels[output.channel].params
                outs, origin = self.services[svc].link_up(index, params, now), None
            elif kind is StreamDown:
                svc, index = self._links[(output.channel, output.stream_id)]
                outs, origin = self.services[svc].link_down(index, now), None
            elif kind is ChannelUp:
                outs, origin = [], None
                for svc, index in self._members[output.channel]:
                    outs += self.services[svc].link_params(index, output.params, now)
            else:
                result.append(output)
                continue
            items += outs
            origins += [origin] * len(outs)
        return result


__all__ = ["SCSCore"]
