#!/usr/bin/env python3
"""Codec speed: µs per decode and per encode, ours against a bare ``struct`` TLV walk and a naive
construct TLV codec.

Messages: the CW_provision of digest example E5 (two CP_CW_combinations, CP_duration,
access_criteria) and a data_provision carrying one 1 KiB datagram. Two baselines, measured in the
same run:

* the **bare struct walk**, the floor of any Python TLV codec: decode unpacks the header and walks
  the TLVs with ``struct.unpack_from`` into a list of ``(parameter_type, value bytes)`` — no
  checks, no names, no integers decoded, no object — and encode packs such a list back;
* the obvious construct schema (header + GreedyRange of TLVs), parsing to a container and
  building from one.

Target (issue #9): CW_provision decode + encode within 2 × the struct walk's decode + build.
The timings of ours and of the walk are interleaved (one timing run of each in turn), and the
ratio is the median of the per-run ratios, so a noisy neighbour on a shared machine moves both
sides of a ratio alike. Prints medians over --repeat runs of --number calls each.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import construct as c  # noqa: E402

from bcast_sp4 import wire  # noqa: E402
from bcast_sp4.wire import emmg_mux  # noqa: E402

CW_PROVISION = bytes.fromhex(
    "030201003c000e00020001000f000200010012000200050014000a000511223344556677880014000a000699aabbccdd"
    "eeff00001300020064000d0004c0ffee01"
)
DATA_PROVISION = emmg_mux.DataProvision(
    client_id=0x00010001, data_channel_id=1, data_stream_id=1, data_id=1, datagram=(bytes(range(256)) * 4,)
).encode()

# The naive baseline: what one writes first with construct.
NAIVE = c.Struct(
    "protocol_version" / c.Int8ub,
    "message_type" / c.Int16ub,
    "params" / c.Prefixed(c.Int16ub, c.GreedyRange(c.Struct("type" / c.Int16ub, "value" / c.Prefixed(c.Int16ub, c.GreedyBytes)))),
)

# The floor: a bare struct TLV walk and its inverse.
_unpack_header = struct.Struct(">BHH").unpack_from
_pack_header = struct.Struct(">BHH").pack
_unpack_tl = struct.Struct(">HH").unpack_from
_pack_tl = struct.Struct(">HH").pack


def walk(frame: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """Header fields and the (parameter_type, value) pairs of *frame*, nothing checked."""
    version, message_type, _length = _unpack_header(frame, 0)
    params = []
    pos, end = 5, len(frame)
    while pos < end:
        ptype, n = _unpack_tl(frame, pos)
        start = pos + 4
        pos = start + n
        params.append((ptype, frame[start:pos]))
    return version, message_type, params


def build(version: int, message_type: int, params: list[tuple[int, bytes]]) -> bytes:
    """The message of :func:`walk`'s output."""
    parts = []
    for ptype, value in params:
        parts.append(_pack_tl(ptype, len(value)))
        parts.append(value)
    body = b"".join(parts)
    return _pack_header(version, message_type, len(body)) + body


def timed_us(fn, number: int) -> float:
    return timeit.timeit(fn, number=number) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=15, help="timing runs (median reported)")
    args = parser.parse_args()
    n, r = args.number, args.repeat
    target = 2.0
    print(
        f"bcast-sp4 codec benchmark (python {sys.version.split()[0]}, construct {c.__version__});"
        f" medians of {r} x {n} calls, ours interleaved with the struct walk"
    )
    print(f"{'message':<34}{'op':<8}{'ours µs':>9}{'walk µs':>9}{'ours/walk':>10}{'construct µs':>14}{'construct/ours':>16}")
    cw_ratio = cw_ours = cw_walk = 0.0
    for label, frame in (("CW_provision (2 CP_CW, E5)", CW_PROVISION), ("data_provision (1 KiB datagram)", DATA_PROVISION)):
        message = wire.decode(frame)
        walked = walk(frame)
        container = NAIVE.parse(frame)
        assert message.encode() == frame and build(*walked) == frame and NAIVE.build(container) == frame
        ops = {
            "decode": (lambda: wire.decode(frame), lambda: walk(frame), lambda: NAIVE.parse(frame)),
            "encode": (message.encode, lambda: build(*walked), lambda: NAIVE.build(container)),
        }
        samples: dict[str, list[tuple[float, float]]] = {op: [] for op in ops}
        for _ in range(r):
            for op, (ours, floor, _naive) in ops.items():
                samples[op].append((timed_us(ours, n), timed_us(floor, n)))
        per_run_total = [(sd[0] + se[0], sd[1] + se[1]) for sd, se in zip(samples["decode"], samples["encode"])]
        for op, (_ours, _floor, naive) in ops.items():
            ours_us = statistics.median(s[0] for s in samples[op])
            walk_us = statistics.median(s[1] for s in samples[op])
            ratio = statistics.median(s[0] / s[1] for s in samples[op])
            naive_us = statistics.median(timeit.repeat(naive, number=max(n // 10, 100), repeat=max(r // 3, 3))) / max(n // 10, 100) * 1e6
            print(f"{label:<34}{op:<8}{ours_us:>9.2f}{walk_us:>9.2f}{ratio:>9.2f}x{naive_us:>14.2f}{naive_us / ours_us:>15.1f}x")
        if frame is CW_PROVISION:
            cw_ours = statistics.median(o for o, _w in per_run_total)
            cw_walk = statistics.median(w for _o, w in per_run_total)
            cw_ratio = statistics.median(o / w for o, w in per_run_total)
    verdict = "meets" if cw_ratio <= target else "MISSES"
    print(
        f"CW_provision decode + encode: {cw_ours:.2f} µs against the struct walk's {cw_walk:.2f} µs:"
        f" {cw_ratio:.2f}x ({verdict} the <= {target:.0f}x target)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
