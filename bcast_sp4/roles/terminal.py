"""Reference terminal role: UDP listeners feeding the pure terminal cores, a lab content source,
per-period progress and a final verdict.

Two cores receive everything: a DRM Profile terminal (device key; keys from broadcast LTKMs) and a
Smartcard Profile terminal (MSKs on its card). Each content datagram is decrypted by both, so one
run proves both profiles on every service. With ``[source]`` configured, the terminal is also the
lab's test set: once both cores hold TEKs for every service (plus one settling period, so the
scrambler is on a provisioned TEK too), it sends RTP at the configured rate to each service's SCS
input and counts every packet sent; the verdict after N periods is whether every packet sent came
back decrypted and intact in both profiles.
"""

from __future__ import annotations

import collections
import sys
from typing import Callable

from twisted.application.service import Service
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..media import content
from ..config.terminal import TerminalSettings
from ..media.terminal import Outcome, ReferenceTerminal, TerminalServiceSpec
from ..wire.sp4 import Profile

PROFILES = (Profile.DRM, Profile.SMARTCARD)
_READ_SIZE = 65536


class _Listener(DatagramProtocol):
    noisy = False  # no "Starting protocol <... object at 0x...>" line (the port logs where it listens)

    def __init__(self, handler: Callable[[bytes], None]) -> None:
        self.handler = handler

    def datagramReceived(self, data: bytes, addr) -> None:
        self.handler(data)


class TerminalService(Service):
    """The terminal (and optional content source) of the lab.

    :param periods: stop after this many reporting periods of content (0 = run until stopped).
    :param on_done: called with the exit status (0 = every packet decrypted in both profiles).
    :param out: where progress lines go (the console; twistd redirects ``sys.stdout`` into the log).
    :param autostart: start waiting for keys (``ready_timeout``) with the service; ``False``: when
        :meth:`begin` is called (the lab calls it once the first STKMs are out).
    """

    log = Logger()

    def __init__(self, settings: TerminalSettings, reactor, periods: int = 0, on_done: Callable[[int], None] | None = None,
                 out=None, autostart: bool = True) -> None:
        self.settings = settings
        self.autostart = autostart
        self.reactor = reactor
        self.periods = periods
        self.on_done = on_done
        self.out = out or sys.__stdout__
        specs = [TerminalServiceSpec(name=s.name, service_id=s.service_id, protection=s.protection,
                                     srtp_tag_length=s.srtp_tag_length)
                 for s in settings.services]
        self.cores = {
            Profile.DRM: ReferenceTerminal(specs, device_id=settings.device_id, device_key=settings.device_key),
            Profile.SMARTCARD: ReferenceTerminal(specs, smartcard_keys=settings.smartcard_keys),
        }
        self.ports: list = []
        self.sent: collections.Counter = collections.Counter()
        self.seq: collections.Counter = collections.Counter()
        self.counts: collections.Counter = collections.Counter()  # stkm/ltkm datagrams by kind
        self.period = 0
        self.state = "waiting for keys"
        self.status: int | None = None
        self._snapshot: dict = {}
        self._source = LoopingCall(self._send_content)
        self._source.clock = reactor
        self._reporter = LoopingCall(self._report)
        self._reporter.clock = reactor
        self._ready_check = LoopingCall(self._check_ready)
        self._ready_check.clock = reactor
        self._deadline = None

    # -- service -------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        s = self.settings
        if s.ltkm_listen is not None:
            self._listen(s.ltkm_listen, self._ltkm)
        for stream in s.stkm_streams:
            self._listen(stream.listen, lambda data, st=stream: self._stkm(st, data))
        for service in s.services:
            self._listen(service.listen, lambda data, name=service.name: self._content(name, data))
        self.send_socket = self.reactor.listenUDP(0, _Listener(lambda _data: None), interface="127.0.0.1") if s.source_rate else None
        if self.autostart:
            self.begin()

    def begin(self) -> None:
        """Wait for keys (at most ``ready_timeout``), then run the source and the reports."""
        if self._ready_check.running or self._deadline is not None or not self.running:
            return
        s = self.settings
        self._ready_check.start(0.1, now=False)
        self._deadline = self.reactor.callLater(s.ready_timeout, self._not_ready)
        self._line(f"terminal: {len(s.services)} services, {len(s.stkm_streams)} STKM streams, "
                   f"waiting for LTKMs and STKMs (timeout {s.ready_timeout:.0f} s)")

    def fail(self, reason: str, status: int) -> None:
        """Give up before any content (the lab's start-up failed): one line, then the verdict *status*."""
        self._line(reason)
        self._finish(status)

    def stopService(self):
        super().stopService()
        for loop in (self._source, self._reporter, self._ready_check):
            if loop.running:
                loop.stop()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        for port in self.ports + ([self.send_socket] if self.send_socket else []):
            port.stopListening()
        self.ports = []

    def _listen(self, where: tuple[int, str], handler: Callable[[bytes], None]) -> None:
        port, interface = where
        self.ports.append(self.reactor.listenUDP(port, _Listener(handler), interface=interface, maxPacketSize=_READ_SIZE))

    # -- input ---------------------------------------------------------------------------------

    def _ltkm(self, data: bytes) -> None:
        self.counts["ltkm"] += 1
        self.cores[Profile.DRM].ltkm(data)

    def _stkm(self, stream, data: bytes) -> None:
        self.counts[f"stkm_{stream.profile.name.lower()}"] += 1
        self.cores[stream.profile].stkm(stream.profile, data, list(stream.services))

    def _content(self, name: str, data: bytes) -> None:
        for core in self.cores.values():
            core.content(name, data)

    # -- readiness, source, reports --------------------------------------------------------------

    def ready(self) -> bool:
        """Both cores hold current and next TEKs for every service."""
        return all(stats.teks_learned >= 2 for core in self.cores.values() for stats in core.stats().values())

    def _check_ready(self) -> None:
        if not self.ready():
            return
        self._ready_check.stop()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self.state = "settling"
        self._line("terminal: keys for every service in both profiles; content starts after one settling period")
        self.reactor.callLater(self.settings.report_interval, self._start_content)

    def _not_ready(self) -> None:
        missing = [f"{p.name.lower()}:{name}" for p, core in self.cores.items() for name, st in core.stats().items()
                   if st.teks_learned < 2]
        self._line(f"terminal: no keys after {self.settings.ready_timeout:.0f} s for {', '.join(missing)}")
        self._finish(3)

    def _start_content(self) -> None:
        self.state = "running"
        self._snapshot = self._totals()
        if self.settings.source_rate:
            self._source.start(1.0 / self.settings.source_rate, now=True)
        self._reporter.start(self.settings.report_interval, now=False)

    def _send_content(self) -> None:
        now = self.reactor.seconds()
        for service in self.settings.services:
            seq = self.seq[service.name]
            packet = content.rtp_packet(service.service_id, service.ssrc, seq, int(now * 90_000), self.settings.source_size)
            self.send_socket.write(packet, service.source_destination)
            self.seq[service.name] = (seq + 1) & 0xFFFF
            self.sent[service.name] += 1

    def _totals(self) -> dict:
        totals = {"sent": sum(self.sent.values()), **{k: v for k, v in self.counts.items()}}
        for profile, core in self.cores.items():
            stats = core.stats().values()
            totals[f"ok_{profile.name}"] = sum(s.ok for s in stats)
            totals[f"failed_{profile.name}"] = sum(s.failed for s in stats)
        return totals

    def _report(self) -> None:
        self.period += 1
        now, before = self._totals(), self._snapshot
        self._snapshot = now
        d = {k: now.get(k, 0) - before.get(k, 0) for k in now}
        total = f"/{self.periods}" if self.periods else ""
        self._line(
            f"period {self.period:>3}{total} | services {len(self.settings.services)} | "
            f"STKMs on air drm {d.get('stkm_drm', 0)} smartcard {d.get('stkm_smartcard', 0)} | LTKMs {d.get('ltkm', 0)} | "
            f"content sent {d['sent']} | drm ok {d['ok_DRM']} failed {d['failed_DRM']} | "
            f"smartcard ok {d['ok_SMARTCARD']} failed {d['failed_SMARTCARD']}"
        )
        if self.periods and self.period >= self.periods:
            if self._source.running:
                self._source.stop()
            self._reporter.stop()
            self.reactor.callLater(0.5, self._summarise)  # let the last packets through

    def _summarise(self) -> None:
        failures = 0
        self._line("summary (content packets sent by the source / decrypted and intact at the terminal):")
        for service in self.settings.services:
            parts = []
            for profile in PROFILES:
                stats = self.cores[profile].stats()[service.name]
                lost = self.sent[service.name] - stats.ok
                failures += lost + stats.failed
                bad = ", ".join(f"{o.value} {n}" for o, n in stats.counts.items() if o is not Outcome.OK and n)
                parts.append(f"{profile.name.lower()} {stats.ok}/{self.sent[service.name]}" + (f" ({bad})" if bad else ""))
            self._line(f"  {service.name:<10} {service.protection.name.lower():<9} " + "  ".join(parts))
        verdict = "PASS" if failures == 0 and sum(self.sent.values()) > 0 else "FAIL"
        self._line(f"{verdict}: {self.period} periods, {sum(self.sent.values())} packets per profile, {failures} failures")
        self._finish(0 if verdict == "PASS" else 1)

    def _finish(self, status: int) -> None:
        self.status = status
        if self.on_done is not None:
            self.on_done(status)

    def _line(self, text: str) -> None:
        self.log.info("{line}", line=text)
        if self.out is not None:
            self.out.write(text + "\n")
            self.out.flush()
