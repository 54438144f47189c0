#!/usr/bin/env python3
"""MUX throughput and pacing on loopback: ingest over TCP (Mbit/s) and UDP (datagrams/s), pacing error.

The MUX runs in this process on the real reactor (``MuxServer``: the same adapters as ``twistd
bcast-mux``); a separate sender process (this script with ``--sender``) drives it with plain
blocking sockets, so the two share no interpreter. Egress goes to a bound UDP sink socket.

* ``tcp``: one EMMG channel and stream set up over TCP, then pre-encoded data_provision messages
  as fast as the socket takes them, egress unthrottled (``[egress] unthrottled``: no pacing, no
  policing). Reported: datagram payload accepted by the MUX per second (Mbit/s), and every
  datagram also emitted on the play-out socket.
* ``udp``: the stream is set up over TCP, then data_provision datagrams over UDP as fast as the
  sender can; reported: UDP data_provisions the MUX processed per second (datagrams the kernel
  dropped before the MUX read them are not counted, and are reported).
* ``pacing``: a stream allocated ``--kbit`` (default 200) with its MUX queue pre-filled; a receiver
  socket measures the egress rate over ``--pace-seconds`` (default 10); reported: error in %.

Targets (issue #4): >= 500 Mbit/s TCP, >= 100,000 datagrams/s UDP, pacing within 1 %.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bcast_sp4 import wire  # noqa: E402
from bcast_sp4.machines.mux import ClientConfig, MuxConfig, MuxCore, RouteConfig, RouteKind  # noqa: E402
from bcast_sp4.wire import emmg_mux as m  # noqa: E402

CLIENT, DATA_ID = 0x00010001, 0x0100
IDS = dict(client_id=CLIENT, data_channel_id=1)


# -- sender process -----------------------------------------------------------------------------


def _setup(sock: socket.socket, kbit: int) -> None:
    sock.sendall(
        m.ChannelSetup(**IDS, section_TSpkt_flag=2).encode()
        + m.StreamSetup(**IDS, data_stream_id=1, data_id=DATA_ID, data_type=0).encode()
        + m.StreamBWRequest(**IDS, data_stream_id=1, bandwidth=kbit).encode()
    )
    framer, replies = wire.Framer(), []
    while len(replies) < 3:
        replies += framer.feed(sock.recv(65536))
    kinds = [type(wire.decode(r, wire.Interface.EMMG_MUX)).__name__ for r in replies]
    assert kinds == ["ChannelStatus", "StreamStatus", "StreamBWAllocation"], kinds


def sender(args) -> None:
    sock = socket.create_connection(("127.0.0.1", args.tcp_port))
    _setup(sock, args.kbit)
    datagrams = tuple(bytes([k % 251]) * args.size for k in range(args.per_message))
    deadline = time.monotonic() + args.seconds
    if args.mode == "tcp":
        message = m.DataProvision(**IDS, data_stream_id=1, data_id=DATA_ID, datagram=datagrams).encode()
        chunk = message * max(1, (256 * 1024) // len(message))
        while time.monotonic() < deadline:
            sock.sendall(chunk)
    elif args.mode == "udp":
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.connect(("127.0.0.1", args.udp_port))
        message = m.DataProvision(client_id=CLIENT, data_id=DATA_ID, datagram=datagrams).encode()
        send = udp.send
        sent = 0
        # offer a fixed load (--rate datagrams/s), in bursts of 500: a sender flat out on a
        # 2-core machine takes CPU the MUX needs and measures the machine, not the MUX
        start = time.monotonic()
        while time.monotonic() < deadline:
            for _ in range(500):
                send(message)
            sent += 500
            ahead = sent / args.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        time.sleep(1.0)  # keep the TCP control connection (and so the stream) while the MUX drains
        print(sent, flush=True)
    else:  # pacing: fill the MUX queue once (the MUX paces, the sender does not)
        for k in range(args.count):
            payload = k.to_bytes(4, "big") * (args.size // 4)
            sock.sendall(m.DataProvision(**IDS, data_stream_id=1, data_id=DATA_ID, datagram=(payload,)).encode())
        time.sleep(args.seconds)
    sock.close()


# -- MUX process --------------------------------------------------------------------------------


def run_mux(mode: str, args) -> dict:
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    from bcast_sp4.roles.mux_server import MuxServer

    got: list[tuple[float, int]] = []

    class Sink(DatagramProtocol):
        noisy = False

        def datagramReceived(self, data, addr):
            if mode == "pacing":
                got.append((reactor.seconds(), len(data)))

    sink = reactor.listenUDP(0, Sink(), interface="127.0.0.1")
    if mode != "pacing":  # nobody reads the sink fast enough: keep its cost at the kernel's
        sink.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sink.stopReading()
    route = RouteConfig(
        kind=RouteKind.LTKM, data_id=DATA_ID, destination=("127.0.0.1", sink.getHost().port), max_bandwidth=0xFFFF
    )
    core = MuxCore(
        MuxConfig(
            clients={CLIENT: ClientConfig(client_id=CLIENT, max_bandwidth=0xFFFF, routes={DATA_ID: route})},
            max_bandwidth=0xFFFF,
            unthrottled=mode != "pacing",
            queue_datagrams=100_000,
            queue_bytes=1 << 30,
            overrun_limit=10**9,
        )
    )
    server = MuxServer(core, reactor, interface="127.0.0.1", max_message_length=wire.MAX_MESSAGE_LENGTH)
    server.play_out.startService()
    tcp = reactor.listenTCP(0, server.factory, interface="127.0.0.1")
    udp = reactor.listenUDP(0, server.udp_protocol, interface="127.0.0.1", maxPacketSize=65536)
    udp.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    seconds = args.pace_seconds + 2.0 if mode == "pacing" else args.seconds
    cmd = [
        sys.executable, __file__, "--sender", mode, "--tcp-port", str(tcp.getHost().port),
        "--udp-port", str(udp.getHost().port), "--seconds", str(seconds), "--size", str(args.size),
        "--per-message", str(args.per_message), "--kbit", str(args.kbit if mode == "pacing" else 0xFFFF),
        "--count", str(int(args.kbit * 125 * (args.pace_seconds + 2.0) / args.size) + 10), "--rate", str(args.rate),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    marks: dict[str, tuple[float, int, int, float]] = {}

    def mark(name):
        c = core.counters
        marks[name] = (reactor.seconds(), c["bytes_in"], c["udp_messages"] if mode == "udp" else c["data_provisions"],
                       time.process_time())

    # Measure a steady window that starts when the sender's data does (the sender is a fresh
    # interpreter: its start-up is no part of the MUX's throughput) and ends before it stops.
    def watch():
        if "start" not in marks and core.counters["datagrams_in"]:
            reactor.callLater(0.3, mark, "start")
            reactor.callLater(seconds - 0.5, mark, "end")
            reactor.callLater(seconds + (1.3 if mode == "udp" else 0.3), reactor.stop)
            marks["start"] = None
            return
        reactor.callLater(0.01, watch)

    reactor.callLater(0.01, watch)
    reactor.callLater(seconds + 15.0, reactor.stop)  # the sender never came: give up
    reactor.run()
    out, _ = proc.communicate(timeout=30)
    (t0, b0, n0, c0), (t1, b1, n1, c1) = marks["start"], marks["end"]
    elapsed = t1 - t0
    result = {
        "seconds": elapsed,
        "mbit_s": (b1 - b0) * 8 / elapsed / 1e6,
        "messages_s": (n1 - n0) / elapsed,
        "cpu": (c1 - c0) / elapsed,
        "emitted": core.counters["datagrams_out"],
        "accepted": core.counters["datagrams_in"],
        "dropped": dict(core.dropped),
    }
    if mode == "udp":
        result["sent"] = int(out.strip() or 0)
        result["processed"] = core.counters["udp_messages"]
    if mode == "pacing":
        start = got[0][0] + 1.0
        window = sum(n for t, n in got if start < t <= start + args.pace_seconds)
        rate = window * 8 / args.pace_seconds / 1000
        result["pacing_kbit"] = rate
        result["pacing_error_pct"] = (rate - args.kbit) / args.kbit * 100
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sender", choices=["tcp", "udp", "pacing"], help=argparse.SUPPRESS)
    parser.add_argument("--tcp-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--udp-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=150_000, help="UDP load offered, datagrams/s")
    parser.add_argument("--mode", choices=["tcp", "udp", "pacing", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each throughput run")
    parser.add_argument("--size", type=int, default=None, help="datagram (LTKM) size in bytes")
    parser.add_argument("--per-message", type=int, default=1, help="datagrams per data_provision")
    parser.add_argument("--kbit", type=int, default=200, help="allocation of the pacing run, kbit/s")
    parser.add_argument("--pace-seconds", type=float, default=10.0, help="measurement window of the pacing run")
    args = parser.parse_args()
    if args.sender:
        args.mode = args.sender
        sender(args)
        return
    modes = ["tcp", "udp", "pacing"] if args.mode == "all" else [args.mode]
    for mode in modes:
        # Each mode in its own process: a reactor runs once per process.
        if len(modes) > 1:
            cmd = [sys.executable, __file__, "--mode", mode, "--seconds", str(args.seconds), "--per-message",
                   str(args.per_message), "--kbit", str(args.kbit), "--pace-seconds", str(args.pace_seconds),
                   "--rate", str(args.rate)]
            if args.size:
                cmd += ["--size", str(args.size)]
            subprocess.run(cmd, check=True)
            continue
        if args.size is None:
            args.size = {"tcp": 1024, "udp": 200, "pacing": 500}[mode]
        r = run_mux(mode, args)
        if mode == "tcp":
            print(
                f"TCP ingest, {args.per_message} x {args.size}-byte datagram(s) per data_provision, egress unthrottled: "
                f"{r['mbit_s']:.0f} Mbit/s of datagrams ({r['messages_s']:,.0f} messages/s, MUX CPU {r['cpu']:.0%}); "
                f"target >= 500 Mbit/s; emitted {r['emitted']:,} of {r['accepted']:,}, drops {r['dropped'] or 'none'}"
            )
        elif mode == "udp":
            lost = r["sent"] - r["processed"]
            print(
                f"UDP ingest, {args.per_message} x {args.size}-byte datagram(s) per data_provision, egress unthrottled: "
                f"{r['messages_s']:,.0f} datagrams/s (MUX CPU {r['cpu']:.0%}); target >= 100,000; "
                f"sender sent {r['sent']:,}, MUX processed {r['processed']:,} (kernel dropped {lost:,}), "
                f"emitted {r['emitted']:,}, drops {r['dropped'] or 'none'}"
            )
        else:
            print(
                f"Pacing, allocation {args.kbit} kbit/s, {args.size}-byte LTKMs, {args.pace_seconds:.0f} s window: "
                f"{r['pacing_kbit']:.2f} kbit/s, error {r['pacing_error_pct']:+.3f} % (target within 1 %)"
            )


if __name__ == "__main__":
    main()
