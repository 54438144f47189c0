#!/usr/bin/env python3
"""Cost of the classic-data format check in the MUX (bcast_sp4/machines/mux/classic.py).

Pure core, no sockets: one data channel and stream per case on a :class:`MuxCore` (unthrottled, so
every accepted datagram is emitted at once), then ``--messages`` data_provisions of
``--datagrams`` datagrams each, ingested through :meth:`MuxConnection.receive`. The same bytes
(whole TS packets, or sections) go once on a channel set up with section_TSpkt_flag 0x02 (the
baseline: BCAST datagrams are opaque, not checked) and once on a channel with flag 0x01 / 0x00 (each
datagram checked). Reported: the median over ``--runs`` runs of the time per data_provision, and
the ratio classic / baseline, both measured in this run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bcast_sp4.machines.mux import ClientConfig, MuxConfig, MuxConnection, MuxCore, RouteConfig, RouteKind  # noqa: E402
from bcast_sp4.wire import emmg_mux as m  # noqa: E402

CLIENT, DATA_ID = 0x4ADC0001, 1
IDS = dict(client_id=CLIENT, data_channel_id=1)


def datagrams(kind: str, count: int, packets: int) -> tuple[bytes, ...]:
    if kind == "ts":
        one = b"".join(b"\x47" + bytes([k]) * 187 for k in range(packets))
    else:  # sections: `packets` sections of 180 bytes back to back
        one = b"".join(bytes([0x82, 0x70, 177]) + bytes(177) for _ in range(packets))
    return (one,) * count


def run(flag: int, payload: tuple[bytes, ...], messages: int) -> float:
    route = RouteConfig(kind=RouteKind.DATA, data_id=DATA_ID, destination=("127.0.0.1", 9), max_bandwidth=0xFFFF)
    client = ClientConfig(client_id=CLIENT, routes={DATA_ID: route}, section_TSpkt_flags=frozenset({0, 1, 2}),
                          max_bandwidth=100_000)
    core = MuxCore(MuxConfig(clients={CLIENT: client}, unthrottled=True))
    connection = MuxConnection(core)
    connection.receive(m.ChannelSetup(**IDS, section_TSpkt_flag=flag), 0.0)
    connection.receive(m.StreamSetup(**IDS, data_stream_id=1, data_id=DATA_ID, data_type=0), 0.0)
    message = m.DataProvision(**IDS, data_stream_id=1, data_id=DATA_ID, datagram=payload)
    receive = connection.receive
    start = time.perf_counter()
    for _ in range(messages):
        receive(message, 0.0)
    elapsed = time.perf_counter() - start
    assert core.counters["datagrams_out"] == messages * len(payload) and not core.dropped, core.dropped
    return elapsed / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--datagrams", type=int, default=4, help="datagrams per data_provision")
    parser.add_argument("--packets", type=int, default=7, help="TS packets (or sections) per datagram")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    for kind, flag in (("ts", 1), ("sections", 0)):
        payload = datagrams(kind, args.datagrams, args.packets)
        base, classic = [], []
        for _ in range(args.runs):  # alternate, so drift hits both alike
            base.append(run(2, payload, args.messages))
            classic.append(run(flag, payload, args.messages))
        b, c = statistics.median(base), statistics.median(classic)
        print(f"{kind:8s} {args.datagrams} x {len(payload[0])} bytes per data_provision: baseline (flag 2) "
              f"{b * 1e6:.2f} us, checked (flag {flag}) {c * 1e6:.2f} us, ratio {c / b:.2f}x "
              f"(medians of {args.runs} runs)")


if __name__ == "__main__":
    main()
