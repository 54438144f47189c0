#!/usr/bin/env python3
"""Codec speed: µs per decode and per encode, ours against a naive construct TLV codec.

Messages: the CW_provision of digest example E5 (two CP_CW_combinations, CP_duration,
access_criteria) and a data_provision carrying one 1 KiB datagram. The baseline is the obvious
construct schema (header + GreedyRange of TLVs), parsing to a container and building from one,
measured in the same run. Target (issue #2): decode + encode of the CW_provision <= 5 µs.

Prints medians over --repeat runs of --number calls each, and ratios baseline / ours.
"""

from __future__ import annotations

import argparse
import statistics
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


def median_us(fn, number: int, repeat: int) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=15, help="timing runs (median reported)")
    args = parser.parse_args()
    n, r = args.number, args.repeat
    target = 5.0
    print(f"bcast-sp4 codec benchmark (python {sys.version.split()[0]}, construct {c.__version__}); medians of {r} x {n}")
    print(f"{'message':<34}{'op':<8}{'ours µs':>10}{'construct µs':>14}{'ratio':>8}")
    total_cw = 0.0
    for label, frame in (("CW_provision (2 CP_CW, E5)", CW_PROVISION), ("data_provision (1 KiB datagram)", DATA_PROVISION)):
        message = wire.decode(frame)
        container = NAIVE.parse(frame)
        assert message.encode() == frame and NAIVE.build(container) == frame
        rows = (
            ("decode", lambda: wire.decode(frame), lambda: NAIVE.parse(frame)),
            ("encode", message.encode, lambda: NAIVE.build(container)),
        )
        for op, ours, theirs in rows:
            ours_us = median_us(ours, n, r)
            base_us = median_us(theirs, max(n // 10, 100), r)
            if frame is CW_PROVISION:
                total_cw += ours_us
            print(f"{label:<34}{op:<8}{ours_us:>10.2f}{base_us:>14.2f}{base_us / ours_us:>7.1f}x")
    verdict = "meets" if total_cw <= target else "MISSES"
    print(f"CW_provision decode + encode: {total_cw:.2f} µs ({verdict} the {target:.0f} µs target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
