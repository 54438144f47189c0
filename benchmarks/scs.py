#!/usr/bin/env python3
"""SCS load: N STKM streams on D-second crypto-periods against a running ``bcast-ecmg`` process.

The ECMG runs as a separate ``twistd -n bcast-ecmg`` process (DRM Profile STKMs); the SCS runs in
this process on the real reactor: N services of one stream each, on C channels (N / C streams per
channel), crypto-period boundaries staggered over one period, TEKs handed to N scramblers (their
switch timers run; no content flows, so every switch is timer-driven) and STKMs to an in-process
recording sink. After a warm-up (the first period of every service plus --warmup seconds), for
--duration seconds it counts:

* late STKMs — submitted after their on-air instant T(n) + delay_start — plus periods skipped
  (no STKM at all), target 0;
* p99 CW-switch jitter — how long after T(n) the scrambler's switch timer ran, target <= 5 ms;
* SCS CPU % — this process's user + system CPU time over the wall time (the ECMG is elsewhere);
* the garbage collector's passes and longest pause in the window (``--no-gc-tuning`` shows why
  bcast-scs tunes it: one full pass over 10,000 services' state stops the reactor ~0.4 s).

``python3 benchmarks/scs.py`` (defaults: 10,000 streams, 10 s periods, 100 channels, 30 s).
Only 127.0.0.1; the run is bounded in time.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
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

from bcast_sp4.bcast.traffic import TrafficProtection  # noqa: E402
from bcast_sp4.machines.scs import ChannelSpec, LinkSpec, SCSCore, ServiceSpec, Timing  # noqa: E402
from bcast_sp4.roles.scs_client import FailoverEndpoint, SCSClientFactory, SCSRunner, retry_policy, tune_gc  # noqa: E402
from bcast_sp4.scrambler import Scrambler  # noqa: E402
from bcast_sp4.stkm_sink import RecordingSink  # noqa: E402

SCID = 0x00010001


def start_ecmg(directory: Path, streams: int) -> tuple[subprocess.Popen, int]:
    lines = ["format = 1", "[keys.sek]", "key_id = 1", 'key = "000102030405060708090a0b0c0d0e0f"',
             'authentication_key = "5341b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1"']
    for ecm_id in range(1, streams + 1):
        lines += ["[[streams]]", f"super_cas_id = {SCID}", f"ecm_id = {ecm_id}", 'keys = ["sek"]']
    (directory / "keys.toml").write_text("\n".join(lines) + "\n")
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


async def run(args, port: int) -> dict:
    endpoint = f"tcp:host=127.0.0.1:port={port}"
    per_channel = args.streams // args.channels
    channels = [ChannelSpec(name=f"ch{c}", endpoint=endpoint, backup_endpoint=None, super_CAS_id=SCID,
                            ECM_channel_id=c + 1) for c in range(args.channels)]
    services = [
        ServiceSpec(name=f"s{i}", crypto_period=round(args.period * 10), protection=TrafficProtection.SRTP,
                    links=(LinkSpec(channel=f"ch{i // per_channel}", super_CAS_id=SCID, ECM_stream_id=i % per_channel + 1,
                                    ECM_id=i + 1),),
                    phase=round(i * args.period / args.streams, 4))
        for i in range(per_channel * args.channels)
    ]
    timing = Timing(start_allowance=args.warmup, channel_test_interval=10.0)
    core = SCSCore(channels, services, timing)
    sink = RecordingSink(reactor.seconds, limit=10)
    scramblers = {s.name: Scrambler(s.name, s.protection, history=8) for s in services}
    endpoints = {c.name: FailoverEndpoint([(endpoint, clientFromString(reactor, endpoint))]) for c in channels}
    runner = SCSRunner(core, reactor, sink, scramblers, endpoints=endpoints, jitter_history=10_000_000)
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
    # warm-up: every service past its first switch, plus --warmup
    first_switch = max(s.period_start(s.first_period) for s in core.services.values())
    await deferLater(reactor, max(0.0, first_switch - reactor.seconds()) + args.warmup, lambda: None)
    if args.gc_tuning:  # what bcast-scs does once set up ([scs] gc_tuning)
        tune_gc()
        await deferLater(reactor, 1.0, lambda: None)
    before = {name: (s.stats.stkms_late, s.stats.periods_skipped, s.stats.periods_ready) for name, s in core.services.items()}
    marker = len(runner.switch_log)
    pauses = GCPauses()
    t0, cpu0 = reactor.seconds(), cpu_seconds()
    await deferLater(reactor, args.duration, lambda: None)
    t1, cpu1 = reactor.seconds(), cpu_seconds()
    gc.callbacks.remove(pauses)
    jitters = [s.jitter * 1000 for _, s in list(runner.switch_log)[marker:]]
    late = sum(s.stats.stkms_late - before[n][0] for n, s in core.services.items())
    skipped = sum(s.stats.periods_skipped - before[n][1] for n, s in core.services.items())
    ready = sum(s.stats.periods_ready - before[n][2] for n, s in core.services.items())
    runner.stopService()
    for client in clients:
        await client.stopService()
    jitters.sort()
    return {
        "streams": len(services), "channels": len(channels), "period_s": args.period, "window_s": round(t1 - t0, 1),
        "setup_s": round(first_switch - started, 1), "periods_ready": ready, "late_stkms": late,
        "skipped_periods": skipped, "switches": len(jitters),
        "jitter_p50_ms": round(statistics.median(jitters), 3) if jitters else None,
        "jitter_p99_ms": round(jitters[int(0.99 * (len(jitters) - 1))], 3) if jitters else None,
        "jitter_max_ms": round(jitters[-1], 3) if jitters else None,
        "scs_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "gc_passes_gen0_1_2": [len(pauses.pauses[g]) for g in (0, 1, 2)],
        "gc_max_pause_ms_gen0_1_2": [round(1000 * max(pauses.pauses[g], default=0.0), 1) for g in (0, 1, 2)],
        "gc_max_pause_ms": round(1000 * max((p for ps in pauses.pauses.values() for p in ps), default=0.0), 1),
        "gc_tuning": args.gc_tuning,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--period", type=float, default=10.0, help="crypto-period, s")
    parser.add_argument("--duration", type=float, default=30.0, help="measured window, s")
    parser.add_argument("--warmup", type=float, default=3.0, help="s after the last service's first switch")
    parser.add_argument("--gc-tuning", action=argparse.BooleanOptionalAction, default=True,
                        help="tune_gc() after set-up, as bcast-scs does ([scs] gc_tuning = true)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        proc, port = start_ecmg(Path(directory), args.streams)
        result: dict = {}
        try:
            d = __import__("twisted.internet.defer", fromlist=["Deferred"]).Deferred.fromCoroutine(run(args, port))
            d.addCallbacks(result.update, lambda f: (result.update(error=f.getTraceback()), None))
            d.addBoth(lambda _: reactor.stop())
            reactor.callLater(args.duration + 4 * args.period + 120, reactor.stop)  # hard bound
            reactor.run()
        finally:
            proc.terminate()
            proc.wait(10)
    if "error" in result:
        raise SystemExit(result["error"])
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(f"targets: late_stkms + skipped_periods == 0 -> {'OK' if result['late_stkms'] + result['skipped_periods'] == 0 else 'MISSED'}; "
          f"jitter_p99_ms <= 5 -> {'OK' if (result['jitter_p99_ms'] or 0) <= 5 else 'MISSED'}")


if __name__ == "__main__":
    main()
