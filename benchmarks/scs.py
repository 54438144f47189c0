#!/usr/bin/env python3
"""SCS load: N STKM streams on D-second crypto-periods against a running ``bcast-ecmg`` process.

The ECMG runs as a separate ``twistd -n bcast-ecmg`` process (DRM Profile STKMs); the SCS runs in
this process on the real reactor: N services of one stream each, on C channels (N / C streams per
channel), crypto-period boundaries staggered over one period, TEKs handed to N scramblers (their
switch timers run; no content flows, so every switch is timer-driven) and STKMs to an in-process
recording sink. The schedulers start once every stream is open, as the lab starts its SCS
(``--no-start-with-setup-done``: at once, so provisioning overlaps the set-up of the streams: at
10,000 streams on a loaded machine the ECMG then falls behind, CW_provisions time out, their
retries add to its load and most periods are skipped). After a warm-up (the first period of every
service plus --warmup seconds), it
measures --runs consecutive windows of --duration seconds each (one SCS session: its set-up costs
~20 s at 10,000 streams, too much to repeat), and reports per window and as medians [min..max]:

* late STKMs — submitted after their on-air instant T(n) + delay_start — plus periods skipped
  (no STKM at all); target 0, judged on the total over all windows;
* p99 CW-switch jitter — how long after T(n) the scrambler's switch timer ran; target <= 5 ms,
  judged on the median of the windows' p99s;
* SCS CPU % — this process's user + system CPU time over the wall time (the ECMG is elsewhere);
* the garbage collector's passes and longest pause in the window (``--no-gc-tuning`` shows why
  bcast-scs tunes it: one full pass over 10,000 services' state stops the reactor ~0.4 s).

Baseline, measured in the same run: the timer floor of this machine. Before the SCS is set up,
the same process's reactor (idle otherwise; the ECMG already started and idle) runs one plain
``reactor.callLater`` timer per service at that service's switch instants (same phases and
period, each re-armed for the next period when it fires, so as many timers are pending as the
SCS has), for --runs windows of --baseline-seconds; reported: their lateness (p50 / p99 / max), and
the ratio SCS p99 jitter / timer-floor p99. With GC tuning on, the floor runs with the process's
state frozen too (``gc.freeze``, undone afterwards), as the SCS windows do.

``--profile``: where the SCS's CPU goes, per stream-period. A sampling profiler (SIGPROF every
ms of this process's CPU time, so idle time is never sampled) runs during the measured windows;
each sample goes to the category of the innermost frame it recognises (TEK generation, CW_provision
building, scrambler context set-up, the switch, message encoding, decoding and framing, the three
machines, the STKM hand-over, the role's executor, reactor timers, TCP I/O, logging, the young GC
collector); the automatic GC passes are timed by their callbacks. Reported as shares of the SCS's
CPU and as microseconds per stream-period (CPU time / periods ready in the windows). The sampler
costs about one per cent of CPU; sampled windows are not the ones to quote for CPU or jitter.

``python3 benchmarks/scs.py`` (defaults: 10,000 streams, 10 s periods, 100 channels, 3 windows of
10 s, timer floor 3 x 5 s; ~75 s). ``--quick``: 1,000 streams, 2 s periods, 10 channels, 3 windows
of 2 s, floor 3 x 1 s (~15 s). Only 127.0.0.1; the run is bounded in time.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twisted.application.internet import ClientService  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.endpoints import clientFromString  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402
from twisted.logger import (  # noqa: E402
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from bcast_sp4.bcast.traffic import TrafficProtection  # noqa: E402
from bcast_sp4.machines.scs_channel import SCSStreamState  # noqa: E402
from bcast_sp4.machines.scs_core import SCSCore  # noqa: E402
from bcast_sp4.machines.scs_records import ChannelSpec, LinkSpec, ServiceSpec, Timing  # noqa: E402
from bcast_sp4.roles.gc_tuning import tune_gc  # noqa: E402
from bcast_sp4.roles.scs_client import FailoverEndpoint, SCSClientFactory, SCSRunner, retry_policy  # noqa: E402
from bcast_sp4.media.scrambler import Scrambler  # noqa: E402
from bcast_sp4.roles.stkm_sink import RecordingSink  # noqa: E402

SCID = 0x00010001


def start_ecmg(directory: Path, streams: int) -> tuple[subprocess.Popen, int]:
    lines = ["format = 1", "[keys.sek]", "key_id = 1", 'key = "000102030405060708090a0b0c0d0e0f"',
             'authentication_key = "5341b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1"']
    for ecm_id in range(1, streams + 1):
        lines += ["[[streams]]", f"super_cas_id = {SCID}", f"ecm_id = {ecm_id}", 'keys = ["sek"]']
    (directory / "keys.toml").write_text("\n".join(lines) + "\n")
    (directory / "keys.toml").chmod(0o600)  # the ECMG refuses a key file others may read
    config = directory / "ecmg.toml"
    config.write_text(f"""[ecmg]
endpoint = "tcp:0:interface=127.0.0.1"
key_file = "keys.toml"
max_streams = {streams + 10}
[channel]
max_comp_time = 200
[[cas]]
super_CAS_id = {SCID:#010x}
mode = "drm"
""")
    log = open(directory / "ecmg.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                             "bcast-ecmg", "--config", str(config)], cwd=directory, stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = (directory / "ecmg.log").read_text()
        if "ECMGFactory starting on" in text:
            return proc, int(text.split("ECMGFactory starting on ")[1].split()[0])
        if proc.poll() is not None:
            raise SystemExit(f"ECMG exited:\n{text}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("ECMG did not start")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """CPU time of every thread of process *pid* so far (schedstat ns; /proc/<pid>/stat ticks where missing)."""
    try:
        return sum(int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
                   for task in os.listdir(f"/proc/{pid}/task")) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GCPauses:
    """Durations of the cyclic garbage collector's passes, per generation."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._start = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._start)


#: (path fragment of a frame's code file, function names or None for any, category), innermost match wins
PROFILE_RULES: list[tuple[str, frozenset | None, str]] = [
    ("bcast_sp4/bcast/traffic.py", frozenset({"encode_cw"}), "CW_provision build (CW layout, CW encryption)"),
    ("bcast_sp4/bcast/cw_encryption.py", None, "CW_provision build (CW layout, CW encryption)"),
    ("bcast_sp4/machines/scs_scheduler.py", frozenset({"_request"}), "CW_provision build (CW layout, CW encryption)"),
    ("bcast_sp4/bcast/traffic.py", None, "TEK generation (CWG)"),
    ("bcast_sp4/machines/scs_scheduler.py", frozenset({"_generate_tek", "_identifier", "tek"}), "TEK generation (CWG)"),
    ("bcast_sp4/media/scrambler.py", frozenset({"activate"}), "switch (scrambler activate, switch log)"),
    ("bcast_sp4/roles/scs_client.py", frozenset({"_switch"}), "switch (scrambler activate, switch log)"),
    ("bcast_sp4/media/scrambler.py", None, "scrambler context set-up (ProvideTEK)"),
    (".encode>", None, "message encode"),
    (".make>", None, "message encode"),
    ("bcast_sp4/wire/message.py", frozenset({"encode"}), "message encode"),
    (".decode>", None, "message decode + framing"),
    ("bcast_sp4/wire/", None, "message decode + framing"),
    ("bcast_sp4/machines/scs_channel.py", None, "channel machine"),
    ("bcast_sp4/machines/scs_channel_states.py", None, "channel machine"),
    ("bcast_sp4/machines/scs_scheduler.py", None, "scheduler bookkeeping (poll, periods, fetches)"),
    ("bcast_sp4/machines/scs_core.py", None, "core routing"),
    ("bcast_sp4/roles/stkm_sink.py", None, "STKM hand-over to the MUX sink"),
    ("twisted/logger/", None, "logging"),
    ("bcast_sp4/roles/gc_tuning.py", None, "GC: young collector passes"),
    ("bcast_sp4/roles/executor.py", frozenset({"start", "cancel", "run_due", "_arm", "_disarm", "_compact", "_due",
                                               "_run"}), "reactor timers (callLater, cancel, run)"),
    ("twisted/internet/base.py", None, "reactor timers (callLater, cancel, run)"),
    ("heapq", None, "reactor timers (callLater, cancel, run)"),
    ("twisted/internet/tcp.py", None, "TCP I/O (Twisted)"),
    ("twisted/internet/abstract.py", None, "TCP I/O (Twisted)"),
    ("twisted/internet/epollreactor.py", None, "TCP I/O (Twisted)"),
    ("twisted/internet/posixbase.py", None, "TCP I/O (Twisted)"),
    ("twisted/python/log.py", None, "TCP I/O (Twisted)"),
    ("bcast_sp4/roles/_stream.py", None, "role executor (outputs, dispatch)"),
    ("bcast_sp4/roles/executor.py", None, "role executor (outputs, dispatch)"),
    ("bcast_sp4/roles/scs_client.py", None, "role executor (outputs, dispatch)"),
]


class CPUSampler:
    """Samples this process's Python stack every *interval* s of its CPU time (``ITIMER_PROF``)."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.counts: collections.Counter[str] = collections.Counter()
        self._cache: dict[object, str | None] = {}
        self._previous = None

    def _category(self, code) -> str | None:
        try:
            return self._cache[code]
        except KeyError:
            pass
        filename, name = code.co_filename.replace(os.sep, "/"), code.co_name
        found = None
        for fragment, names, category in PROFILE_RULES:
            if fragment in filename and (names is None or name in names):
                found = category
                break
        self._cache[code] = found
        return found

    def _sample(self, signum, frame) -> None:
        while frame is not None:
            category = self._category(frame.f_code)
            if category is not None:
                self.counts[category] += 1
                return
            frame = frame.f_back
        self.counts["other"] += 1

    def start(self) -> None:
        self._previous = signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, self._previous or signal.SIG_DFL)


def percentile(values: list[float], q: float) -> float | None:
    """The *q*-th percentile of sorted *values* (same rule as before: index int(q/100 * (n-1)))."""
    if not values:
        return None
    return values[int(q / 100 * (len(values) - 1))]


def spread(values: list, fmt: str) -> str:
    """``median [min..max]`` of *values* (``None`` left out), each formatted with *fmt*."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    middle = statistics.median(values)
    if fmt.endswith("d"):  # integers: the median of an even count may fall between two
        middle = round(middle)
    return f"{format(middle, fmt)} [{format(min(values), fmt)}..{format(max(values), fmt)}]"


def service_phases(args) -> list[float]:
    """The phase of every service, as :func:`run` sets them up."""
    per_channel = args.streams // args.channels
    return [round(i * args.period / args.streams, 4) for i in range(per_channel * args.channels)]


async def timer_floor(args) -> list[dict]:
    """Lateness of plain callLater timers at the services' switch instants, in an idle reactor."""
    phases = service_phases(args)
    lateness: list[float] = []
    calls: dict[int, object] = {}

    def fire(index: int, at: float) -> None:
        now = reactor.seconds()
        lateness.append(now - at)
        calls[index] = reactor.callLater(max(0.0, at + args.period - now), fire, index, at + args.period)

    origin = reactor.seconds() + 0.5
    for index, phase in enumerate(phases):
        at = origin + phase
        calls[index] = reactor.callLater(max(0.0, at - reactor.seconds()), fire, index, at)
    if args.gc_tuning:  # the SCS windows run with the process's state frozen: so does the floor
        gc.collect()
        gc.freeze()
    await deferLater(reactor, max(0.0, origin - reactor.seconds()), lambda: None)
    windows = []
    for _ in range(args.runs):
        marker = len(lateness)
        pauses = GCPauses()
        t0, cpu0 = reactor.seconds(), cpu_seconds()
        await deferLater(reactor, args.baseline_seconds, lambda: None)
        t1, cpu1 = reactor.seconds(), cpu_seconds()
        gc.callbacks.remove(pauses)
        values = sorted(x * 1000 for x in lateness[marker:])
        windows.append({
            "timers": len(values), "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
            "max_ms": values[-1] if values else None, "cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
            "gc_max_pause_ms": 1000 * max((p for ps in pauses.pauses.values() for p in ps), default=0.0),
        })
    for call in calls.values():
        if call.active():
            call.cancel()
    calls.clear()
    if args.gc_tuning:
        gc.unfreeze()
    return windows


async def run(args, port: int, ecmg_pid: int) -> dict:
    endpoint = f"tcp:host=127.0.0.1:port={port}"
    per_channel = args.streams // args.channels
    channels = [ChannelSpec(name=f"ch{c}", endpoint=endpoint, backup_endpoint=None, super_CAS_id=SCID,
                            ECM_channel_id=c + 1) for c in range(args.channels)]
    services = [
        ServiceSpec(name=f"s{i}", crypto_period=round(args.period * 10), protection=TrafficProtection.SRTP,
                    links=(LinkSpec(channel=f"ch{i // per_channel}", super_CAS_id=SCID, ECM_stream_id=i % per_channel + 1,
                                    ECM_id=i + 1),),
                    phase=phase)
        for i, phase in enumerate(service_phases(args))
    ]
    timing = Timing(start_allowance=args.warmup, channel_test_interval=10.0)
    core = SCSCore(channels, services, timing)
    sink = RecordingSink(reactor.seconds, limit=10)
    scramblers = {s.name: Scrambler(s.name, s.protection, history=8) for s in services}
    endpoints = {c.name: FailoverEndpoint([(endpoint, clientFromString(reactor, endpoint))]) for c in channels}
    runner = SCSRunner(core, reactor, sink, scramblers, endpoints=endpoints, jitter_history=10_000_000,
                       autostart=not args.start_with_setup_done)
    clients = []
    for c in channels:
        machine = core.channels[c.name]
        client = ClientService(endpoints[c.name], SCSClientFactory(runner, c.name),
                               retryPolicy=retry_policy(0.1, 2.0, 1.5, 0.05, lambda m=machine: m.refusals),
                               clock=reactor, prepareConnection=lambda p: p.start_channel())
        clients.append(client)
    started = reactor.seconds()
    for client in clients:
        client.startService()
    runner.startService()
    streams_open_s = None
    if args.start_with_setup_done:  # as the lab does: the schedulers start once every stream is open
        deadline = reactor.seconds() + 120.0
        while reactor.seconds() < deadline and not all(
                stream.state is SCSStreamState.ST_OPEN for channel in core.channels.values()
                for stream in channel.streams.values()):
            await deferLater(reactor, 0.2, lambda: None)
        streams_open_s = reactor.seconds() - started
        runner.begin()
    # warm-up: every service past its first switch, plus --warmup
    first_switch = max(s.period_start(s.first_period) for s in core.services.values())
    await deferLater(reactor, max(0.0, first_switch - reactor.seconds()) + args.warmup, lambda: None)
    collector = None
    if args.gc_tuning:  # what bcast-scs does once set up ([scs] gc_tuning)
        collector = tune_gc(reactor)
        await deferLater(reactor, 1.0, lambda: None)
    windows = []
    sampler = CPUSampler() if args.profile else None
    tracer = cProfile.Profile() if args.cprofile else None
    for _ in range(args.runs):
        before = {name: (s.stats.stkms_late, s.stats.periods_skipped, s.stats.periods_ready, s.stats.stkms_received)
                  for name, s in core.services.items()}
        marker = len(runner.switch_log)
        pauses = GCPauses()
        t0, cpu0, ecmg0 = reactor.seconds(), cpu_seconds(), process_cpu_seconds(ecmg_pid)
        if sampler is not None:
            sampler.start()
        if tracer is not None:
            tracer.enable()
        await deferLater(reactor, args.duration, lambda: None)
        if sampler is not None:
            sampler.stop()
        if tracer is not None:
            tracer.disable()
        t1, cpu1, ecmg1 = reactor.seconds(), cpu_seconds(), process_cpu_seconds(ecmg_pid)
        gc.callbacks.remove(pauses)
        jitters = sorted(s.jitter * 1000 for _, s in list(runner.switch_log)[marker:])
        stkms = sum(s.stats.stkms_received - before[n][3] for n, s in core.services.items())
        windows.append({
            "window_s": t1 - t0,
            "periods_ready": sum(s.stats.periods_ready - before[n][2] for n, s in core.services.items()),
            "late_stkms": sum(s.stats.stkms_late - before[n][0] for n, s in core.services.items()),
            "skipped_periods": sum(s.stats.periods_skipped - before[n][1] for n, s in core.services.items()),
            "switches": len(jitters),
            "jitter_p50_ms": percentile(jitters, 50), "jitter_p99_ms": percentile(jitters, 99),
            "jitter_max_ms": jitters[-1] if jitters else None,
            "scs_cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
            "gc_passes_gen0_1_2": [len(pauses.pauses[g]) for g in (0, 1, 2)],
            "gc_max_pause_ms_gen0_1_2": [1000 * max(pauses.pauses[g], default=0.0) for g in (0, 1, 2)],
            "gc_max_pause_ms": 1000 * max((p for ps in pauses.pauses.values() for p in ps), default=0.0),
            "cpu_s": cpu1 - cpu0,
            "stkms_received": stkms,
            "ecmg_cpu_s": ecmg1 - ecmg0,
            "gc_s": sum(p for ps in pauses.pauses.values() for p in ps),
        })
    if tracer is not None:
        tracer.dump_stats(args.cprofile)
    runner.stopService()
    if collector is not None:
        collector.stop()
    for client in clients:
        await client.stopService()
    return {"streams": len(services), "channels": len(channels), "setup_s": first_switch - started,
            "streams_open_s": streams_open_s, "windows": windows,
            "profile": None if sampler is None else dict(sampler.counts)}


async def benchmark(args, port: int, ecmg_pid: int) -> dict:
    floor = await timer_floor(args)
    result = await run(args, port, ecmg_pid)
    result["floor"] = floor
    return result


QUICK = dict(streams=1000, channels=10, period=2.0, duration=2.0, warmup=1.0, baseline_seconds=1.0)
FULL = dict(streams=10_000, channels=100, period=10.0, duration=10.0, warmup=3.0, baseline_seconds=5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small defaults: " + ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in QUICK.items()))
    parser.add_argument("--streams", type=int, help=f"default {FULL['streams']}")
    parser.add_argument("--channels", type=int, help=f"default {FULL['channels']}")
    parser.add_argument("--period", type=float, help=f"crypto-period, s (default {FULL['period']:g})")
    parser.add_argument("--runs", type=int, default=3, help="measured windows (medians reported), default 3")
    parser.add_argument("--duration", type=float, help=f"length of each measured window, s (default {FULL['duration']:g})")
    parser.add_argument("--warmup", type=float, help=f"s after the last service's first switch (default {FULL['warmup']:g})")
    parser.add_argument("--baseline-seconds", type=float,
                        help=f"length of each timer-floor window, s (default {FULL['baseline_seconds']:g})")
    parser.add_argument("--gc-tuning", action=argparse.BooleanOptionalAction, default=True,
                        help="tune_gc() after set-up, as bcast-scs does ([scs] gc_tuning = true)")
    parser.add_argument("--profile", action="store_true",
                        help="sample where the SCS's CPU goes during the windows; report it per stream-period")
    parser.add_argument("--start-with-setup-done", action=argparse.BooleanOptionalAction, default=True,
                        help="start the schedulers once every stream is open, as the lab does (default); "
                             "--no-start-with-setup-done: at once, provisioning while the streams are set up")
    parser.add_argument("--logs", metavar="DIR",
                        help="keep the ECMG's log (ecmg.log) and write the SCS's (scs.log, info and up) in DIR")
    parser.add_argument("--cprofile", metavar="FILE",
                        help="trace the windows with cProfile into FILE (pstats); slows the SCS ~2x: "
                             "use fewer streams, read counts and relative costs, not the jitter")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    import twisted

    print(f"bcast-sp4 SCS benchmark (python {sys.version.split()[0]}, twisted {twisted.__version__}): "
          f"{args.streams} streams on {args.channels} channels, {args.period:g} s crypto-periods, GC tuning "
          f"{'on' if args.gc_tuning else 'off'}; {args.runs} windows of {args.duration:g} s in one SCS session; timer "
          f"floor {args.runs} x {args.baseline_seconds:g} s; medians [min..max]", flush=True)
    with tempfile.TemporaryDirectory() as directory:
        if args.logs:  # the ECMG logs into the run's directory: keep it where asked
            directory = args.logs
            Path(directory).mkdir(parents=True, exist_ok=True)
            log_file = open(Path(directory) / "scs.log", "w")
            globalLogBeginner.beginLoggingTo([FilteringLogObserver(textFileLogObserver(log_file), [
                LogLevelFilterPredicate(LogLevel.info)])], redirectStandardIO=False, discardBuffer=True)
        proc, port = start_ecmg(Path(directory), args.streams)
        result: dict = {}
        try:
            d = __import__("twisted.internet.defer", fromlist=["Deferred"]).Deferred.fromCoroutine(benchmark(args, port, proc.pid))
            d.addCallbacks(result.update, lambda f: (result.update(error=f.getTraceback()), None))
            d.addBoth(lambda _: reactor.stop())
            bound = args.runs * (args.duration + args.baseline_seconds) + 4 * args.period + 120
            reactor.callLater(bound, reactor.stop)  # hard bound
            reactor.run()
        finally:
            proc.terminate()
            proc.wait(10)
    if "error" in result:
        raise SystemExit(result["error"])
    if "windows" not in result:
        raise SystemExit("the run did not finish in time")
    floor, windows = result["floor"], result["windows"]
    for i, w in enumerate(floor, 1):
        print(f"  timer floor window {i}: {w['timers']:,} callLater timers, lateness p50 {w['p50_ms']:.3f} ms, "
              f"p99 {w['p99_ms']:.3f} ms, max {w['max_ms']:.3f} ms; CPU {w['cpu_percent']:.1f} %, "
              f"GC max pause {w['gc_max_pause_ms']:.1f} ms")
    print(f"  SCS set-up: {result['streams']:,} services on {result['channels']} channels, "
          f"{result['setup_s']:.1f} s to the last first switch"
          + ("" if result["streams_open_s"] is None else
             f" (every stream open after {result['streams_open_s']:.1f} s, the schedulers started then)"))
    for i, w in enumerate(windows, 1):
        print(f"  SCS window {i} ({w['window_s']:.1f} s): {w['periods_ready']:,} periods ready, late STKMs "
              f"{w['late_stkms']}, skipped periods {w['skipped_periods']}; {w['switches']:,} switches, jitter p50 "
              f"{_ms(w['jitter_p50_ms'])} ms, p99 {_ms(w['jitter_p99_ms'])} ms, max {_ms(w['jitter_max_ms'])} ms; "
              f"CPU {w['scs_cpu_percent']:.1f} %; GC passes gen0/1/2 {w['gc_passes_gen0_1_2']}, max pause "
              f"{w['gc_max_pause_ms']:.1f} ms")
    late = sum(w["late_stkms"] for w in windows)
    skipped = sum(w["skipped_periods"] for w in windows)
    p99 = statistics.median([w["jitter_p99_ms"] for w in windows if w["jitter_p99_ms"] is not None] or [math.inf])
    floor_p99 = statistics.median([w["p99_ms"] for w in floor if w["p99_ms"] is not None] or [math.nan])
    print(f"late STKMs per window {spread([w['late_stkms'] for w in windows], 'd')} (total {late}); skipped periods "
          f"per window {spread([w['skipped_periods'] for w in windows], 'd')} (total {skipped})")
    print(f"CW-switch jitter p99: SCS {spread([w['jitter_p99_ms'] for w in windows], '.3f')} ms; timer floor "
          f"{spread([w['p99_ms'] for w in floor], '.3f')} ms; SCS / floor = {p99 / floor_p99:.1f}x")
    print(f"CW-switch jitter p50: SCS {spread([w['jitter_p50_ms'] for w in windows], '.3f')} ms; timer floor "
          f"{spread([w['p50_ms'] for w in floor], '.3f')} ms; max: SCS {spread([w['jitter_max_ms'] for w in windows], '.1f')} "
          f"ms, floor {spread([w['max_ms'] for w in floor], '.1f')} ms")
    print(f"SCS CPU {spread([w['scs_cpu_percent'] for w in windows], '.1f')} % (timer floor "
          f"{spread([w['cpu_percent'] for w in floor], '.1f')} %); GC max pause per window "
          f"{spread([w['gc_max_pause_ms'] for w in windows], '.1f')} ms")
    # CPU per stream-period (each window: SCS CPU / periods ready), against the ECMG's CPU per STKM
    # in the same windows (its process's CPU / ECM_responses the SCS received)
    scs_us = [w["cpu_s"] / w["periods_ready"] * 1e6 for w in windows if w["periods_ready"]]
    ecmg_us = [w["ecmg_cpu_s"] / w["stkms_received"] * 1e6 for w in windows if w["stkms_received"]]
    cpu_ratios = [w["cpu_s"] / w["periods_ready"] / (w["ecmg_cpu_s"] / w["stkms_received"])
                  for w in windows if w["periods_ready"] and w["stkms_received"] and w["ecmg_cpu_s"] > 0]
    cpu_ratio = statistics.median(cpu_ratios) if cpu_ratios else float("nan")
    print(f"CPU per stream-period: SCS {spread(scs_us, '.1f')} µs; ECMG CPU per STKM in the same windows "
          f"{spread(ecmg_us, '.1f')} µs; SCS / ECMG = {spread(cpu_ratios, '.2f')}x")
    jitter_ratio = p99 / floor_p99
    print(f"targets: late STKMs + skipped periods == 0 (total) -> {'OK' if late + skipped == 0 else 'MISSED'}; "
          f"jitter p99 <= 5 ms (median) -> {'OK' if p99 <= 5 else 'MISSED'}; jitter p99 <= 2 x timer floor p99 -> "
          f"{'OK' if jitter_ratio <= 2 else 'MISSED'} ({jitter_ratio:.2f}x); CPU per stream-period <= 3 x ECMG CPU "
          f"per STKM -> {'OK' if cpu_ratio <= 3 else 'MISSED'} ({cpu_ratio:.2f}x)")
    if result.get("profile"):
        print_profile(result["profile"], windows)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def print_profile(counts: dict[str, int], windows: list[dict]) -> None:
    """The sampled CPU breakdown, per stream-period (the automatic GC passes from their callbacks)."""
    cpu = sum(w["cpu_s"] for w in windows)
    gc_s = sum(w["gc_s"] for w in windows)
    periods = sum(w["periods_ready"] for w in windows)
    samples = sum(counts.values())
    sampled_cpu = cpu - gc_s
    print(f"CPU profile of the windows ({samples:,} samples, {cpu:.2f} s CPU, {periods:,} stream-periods: "
          f"{cpu / periods * 1e6:.1f} us CPU per stream-period):")
    rows = [(n / samples * sampled_cpu, name) for name, n in counts.items()] + [(gc_s, "GC: automatic passes (timed)")]
    for seconds, name in sorted(rows, reverse=True):
        print(f"  {name:<48} {100 * seconds / cpu:5.1f} %  {seconds / periods * 1e6:7.1f} us / stream-period")


if __name__ == "__main__":
    main()
