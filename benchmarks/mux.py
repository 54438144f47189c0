#!/usr/bin/env python3
"""MUX throughput and pacing on loopback: ingest over TCP (Mbit/s) and UDP (datagrams/s), pacing error.

The MUX runs in a measuring process on the real reactor (``MuxServer``: the same adapters as
``twistd bcast-mux``); a separate sender process (this script with ``--sender``) drives it with
plain blocking sockets, so the two share no interpreter. Egress goes to a bound UDP sink socket.

* ``tcp``: one EMMG channel and stream set up over TCP, then pre-encoded data_provision messages
  as fast as the socket takes them, egress unthrottled (``[egress] unthrottled``: no pacing, no
  policing). Reported: datagram payload accepted by the MUX per second (Mbit/s), and every
  datagram also emitted on the play-out socket.
* ``udp``: the stream is set up over TCP, then data_provision datagrams over UDP at a fixed
  offered load (``--rate``); reported: UDP data_provisions the MUX processed per second
  (datagrams the kernel dropped before the MUX read them are not counted, and are reported).
* ``pacing``: a stream allocated ``--kbit`` (default 200) with its MUX queue pre-filled; a receiver
  socket measures the egress rate over ``--pace-seconds`` (default 10); reported: error in %.

Baselines, measured in the same run with the same sender process and message sizes:

* TCP: a bare Twisted ``Protocol`` that only cuts the byte stream into messages with
  ``bcast_sp4.wire.Framer`` and discards them (no decode, no MUX core, no egress; it answers the
  sender's three set-up messages with canned replies). Its Mbit/s are the datagram payload of the
  messages it framed, so the figure is in the MUX's unit.
* UDP: a bare Twisted ``DatagramProtocol`` that counts datagrams and discards them (the same
  maxPacketSize and receive buffer as the MUX's UDP port; the set-up goes to the bare TCP server).
  It cannot count more than the sender offers: when it reaches the offered load, the rate ratio is
  an upper bound of the MUX's share of the ceiling; the CPU ratio below is not capped so.
* UDP, second baseline ("relay"): the same bare ``DatagramProtocol``, but it also does the least
  the MUX must do with each datagram: it cuts off the 23-byte data_provision header and sends the
  payload with one ``send`` on a connected socket to a sink like the MUX's. Its CPU per datagram
  is the bare receive plus a naive per-datagram emission.

Is the comparison fair? The first baseline only counts: it parses nothing and emits nothing, so
its ratio charges the MUX with everything it does (decode, identity and limits checks, route
lookup, counters, emission). The issue's target (0.8x the bare DatagramProtocol) is judged on it.
The relay baseline shows what the emission alone costs a Python process datagram by datagram;
the MUX sends each route's batch with UDP GSO where the kernel has it (``roles/udp_gso.py``: runs
of equal-size datagrams as one ``sendmsg``, cut into the same datagrams by the kernel), so it can
spend less CPU per datagram than that relay. Egress goes to a bound sink socket that is not read
(4 KiB receive buffer): its kernel cost is that of a loopback delivery that drops at the sink,
for the MUX and the relay alike.

Kernel drops: the sender reports how many datagrams it sent; the measuring process reports how
many it processed and, before it exits, the ``drops`` counter of its UDP socket in
``/proc/net/udp`` (datagrams the kernel discarded because the receive buffer was full). Both are
printed; on a machine shared with other work, drops mostly mean the measuring process was not
scheduled for longer than its receive buffer lasts (``--rcvbuf``, by default what ``bcast-mux``
asks for: ``[mux] udp_receive_buffer``). Rates are also given as the share of the offered load
processed, per run, since the sender's achieved rate varies between runs on a busy machine; the
issue's "0.8x the bare DatagramProtocol at the same offered rate" is judged on that share. The
MUX's UDP port reads as ``bcast-mux`` does, each wake-up bounded by ``[limits] turn_time``
(``--turn-time``, default 1 ms; 0: no bound): the bound splits a wake-up into batches, which costs
the MUX CPU per datagram (about 0.5 µs in process at 1 ms).

Every figure is the median over ``--runs`` runs (min and max in brackets); MUX and baseline runs
rotate, each in its own process (a reactor runs once per process). Ratios are MUX / baseline:
of the rates, and of the measuring process's CPU time per message taken in (``x``).

Targets (issue #4), judged on the medians: >= 500 Mbit/s TCP, >= 100,000 datagrams/s UDP,
pacing within 1 % (median of |error|).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bcast_sp4 import wire  # noqa: E402
from bcast_sp4.machines.mux import ClientConfig, MuxConfig, MuxCore, RouteConfig, RouteKind  # noqa: E402
from bcast_sp4.config.limits import Limits  # noqa: E402
from bcast_sp4.config.mux import DEFAULT_UDP_RECEIVE_BUFFER  # noqa: E402
from bcast_sp4.wire import emmg_mux as m  # noqa: E402

CLIENT, DATA_ID = 0x00010001, 0x0100
IDS = dict(client_id=CLIENT, data_channel_id=1)
UDP_MAX_PACKET = 65536
HEADER = 23  # the usual UDP data_provision's header before its one datagram (roles/mux_server.py)
DEFAULT_SIZE = {"tcp": 1024, "udp": 200, "pacing": 500}


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
        elapsed = time.monotonic() - start
        time.sleep(0.5)  # keep the TCP control connection (and so the stream) while the MUX drains
        print(sent, elapsed, flush=True)
    else:  # pacing: fill the MUX queue once (the MUX paces, the sender does not)
        for k in range(args.count):
            payload = k.to_bytes(4, "big") * (args.size // 4)
            sock.sendall(m.DataProvision(**IDS, data_stream_id=1, data_id=DATA_ID, datagram=(payload,)).encode())
        time.sleep(args.seconds)
    sock.close()


# -- measuring process: the MUX or a baseline ------------------------------------------------------


_KEEP: list = []  # objects the measuring process must keep alive


def kernel_drops(port: int) -> int | None:
    """The ``drops`` counter of the UDP socket bound to 127.0.0.1:*port* (``/proc/net/udp``), if found."""
    local = f"0100007F:{port:04X}" if sys.byteorder == "little" else f"7F000001:{port:04X}"
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if fields[1] == local:
            return int(fields[-1])
    return None


def watch_udp(reactor, udp) -> dict:
    """The receive buffer granted to *udp* now, and its kernel drops when the reactor shuts down
    (before the port closes); the returned dict is filled in then."""
    port = udp.getHost().port
    last = {"rcvbuf": udp.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), "kernel_drops": None}
    reactor.addSystemEventTrigger("before", "shutdown", lambda: last.update(kernel_drops=kernel_drops(port)))
    return last


def make_sink(reactor):
    """A bound UDP socket nobody reads (4 KiB receive buffer): egress costs a loopback delivery that drops."""
    from twisted.internet.protocol import DatagramProtocol

    sink = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
    sink.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink.stopReading()
    _KEEP.append(sink)  # not reading: the reactor holds no reference, and a collected port closes its socket
    return sink


def build_mux(mode: str, reactor, rcvbuf: int, turn_time: float | None = None):
    """The MUX under test; returns (tcp port, udp port, started(), counts(), extra(), got)."""
    from twisted.internet.protocol import DatagramProtocol

    from bcast_sp4.roles.mux_server import MuxServer
    from bcast_sp4.roles.udp_batch import listen_udp_batch

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
    # as twistd bcast-mux listens: batches per wake-up within [limits] turn_time (--turn-time; roles/udp_batch.py)
    udp = listen_udp_batch(reactor, 0, server.udp_protocol, interface="127.0.0.1", maxPacketSize=UDP_MAX_PACKET,
                           receive_buffer=rcvbuf, turn_time=turn_time)
    c = core.counters
    counter = "udp_messages" if mode == "udp" else "data_provisions"

    def extra() -> dict:
        return {"emitted": c["datagrams_out"], "accepted": c["datagrams_in"], "dropped": dict(core.dropped),
                "processed": c["udp_messages"], **last}

    last = watch_udp(reactor, udp)

    # the sink port must outlive this function: it is not reading, so the reactor holds no
    # reference to it, and a collected port closes its socket (egress then meets ECONNREFUSED)
    _KEEP.append(sink)
    return (tcp.getHost().port, udp.getHost().port, lambda: c["datagrams_in"] > 0,
            lambda: (c["bytes_in"], c[counter]), extra, got)


def build_baseline(mode: str, reactor, payload: int, rcvbuf: int, relay: bool = False):
    """The baseline: bare Twisted reception, no decode, no MUX core, no egress (*relay*: UDP payloads
    sent on, one ``send`` each, header cut off)."""
    from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

    from bcast_sp4.roles.udp_batch import set_receive_buffer

    framed = [0]  # data messages framed over TCP (the set-up ones not counted)
    received = [0]  # UDP datagrams
    canned = [
        m.ChannelStatus(**IDS, section_TSpkt_flag=2).encode(),
        m.StreamStatus(**IDS, data_stream_id=1, data_id=DATA_ID, data_type=0).encode(),
        m.StreamBWAllocation(**IDS, data_stream_id=1, bandwidth=0xFFFF).encode(),
    ]

    class BareTCP(Protocol):
        def connectionMade(self):
            self.framer = wire.Framer()
            self.setup = list(canned)  # one canned reply to each of the sender's set-up messages

        def dataReceived(self, data):
            frames = self.framer.feed(data)
            if self.setup:
                answered, self.setup = self.setup[: len(frames)], self.setup[len(frames):]
                self.transport.write(b"".join(answered))
                framed[0] += len(frames) - len(answered)
            else:
                framed[0] += len(frames)

    class BareUDP(DatagramProtocol):
        noisy = False

        def datagramReceived(self, data, addr):
            received[0] += 1

    class RelayUDP(DatagramProtocol):
        noisy = False

        def __init__(self, send):
            self.send = send

        def datagramReceived(self, data, addr):
            received[0] += 1
            try:
                self.send(data[HEADER:])
            except OSError:
                pass

    factory = Factory.forProtocol(BareTCP)
    factory.noisy = False
    tcp = reactor.listenTCP(0, factory, interface="127.0.0.1")
    if relay:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.bind(("127.0.0.1", 0))
        out.connect(("127.0.0.1", make_sink(reactor).getHost().port))
        out.setblocking(False)
        _KEEP.append(out)
        protocol = RelayUDP(out.send)
    else:
        protocol = BareUDP()
    udp = reactor.listenUDP(0, protocol, interface="127.0.0.1", maxPacketSize=UDP_MAX_PACKET)
    set_receive_buffer(udp.getHandle(), rcvbuf)
    count = received if mode == "udp" else framed

    def extra() -> dict:
        return {"processed": received[0], **last}

    last = watch_udp(reactor, udp)

    return (tcp.getHost().port, udp.getHost().port, lambda: count[0] > 0,
            lambda: (count[0] * payload, count[0]), extra, [])


def measure(mode: str, target: str, args) -> dict:
    """One run of *mode* against *target* (``mux`` or ``baseline``), in this process."""
    from twisted.internet import reactor

    if target == "mux":
        tcp_port, udp_port, started, counts, extra, got = build_mux(mode, reactor, args.rcvbuf, args.turn_time or None)
    else:
        tcp_port, udp_port, started, counts, extra, got = build_baseline(
            mode, reactor, args.size * args.per_message, args.rcvbuf, relay=target == "relay")
    seconds = args.pace_seconds + 2.0 if mode == "pacing" else args.seconds
    cmd = [
        sys.executable, __file__, "--sender", mode, "--tcp-port", str(tcp_port),
        "--udp-port", str(udp_port), "--seconds", str(seconds), "--size", str(args.size),
        "--per-message", str(args.per_message), "--kbit", str(args.kbit if mode == "pacing" else 0xFFFF),
        "--count", str(int(args.kbit * 125 * (args.pace_seconds + 2.0) / args.size) + 10), "--rate", str(args.rate),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    marks: dict[str, tuple[float, int, int, float]] = {}

    def mark(name):
        marks[name] = (reactor.seconds(), *counts(), time.process_time())

    # Measure a steady window that starts when the sender's data does (the sender is a fresh
    # interpreter: its start-up is no part of the throughput) and ends before it stops. The
    # pacing run needs only its egress window (first egress + 1 s + --pace-seconds).
    stop_after = {"tcp": seconds + 0.3, "udp": seconds + 0.8, "pacing": args.pace_seconds + 1.4}[mode]

    def watch():
        if "start" not in marks and started():
            reactor.callLater(0.3, mark, "start")
            reactor.callLater(min(seconds - 0.5, stop_after - 0.1), mark, "end")
            reactor.callLater(stop_after, reactor.stop)
            marks["start"] = None
            return
        reactor.callLater(0.01, watch)

    reactor.callLater(0.01, watch)
    reactor.callLater(seconds + 15.0, reactor.stop)  # the sender never came: give up
    reactor.run()
    if mode == "pacing":
        proc.terminate()  # it only sleeps on its connection now
    out, _ = proc.communicate(timeout=30)
    if not marks.get("end"):
        raise SystemExit(f"{mode} {target}: the sender's data never arrived")
    (t0, b0, n0, c0), (t1, b1, n1, c1) = marks["start"], marks["end"]
    elapsed = t1 - t0
    result = {
        "seconds": elapsed,
        "mbit_s": (b1 - b0) * 8 / elapsed / 1e6,
        "messages_s": (n1 - n0) / elapsed,
        "cpu": (c1 - c0) / elapsed,
        **extra(),
    }
    if mode == "udp":
        sent, sending = out.split()
        result["sent"] = int(sent)
        result["offered_s"] = int(sent) / float(sending)
    if mode == "pacing":
        start = got[0][0] + 1.0
        window = sum(n for t, n in got if start < t <= start + args.pace_seconds)
        rate = window * 8 / args.pace_seconds / 1000
        result["pacing_kbit"] = rate
        result["pacing_error_pct"] = (rate - args.kbit) / args.kbit * 100
    return result


# -- orchestration ------------------------------------------------------------------------------


def spread(values: list[float], fmt: str) -> str:
    """``median [min-max]`` of *values*, each formatted with *fmt*."""
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)}..{format(max(values), fmt)}]"


def us(result: dict) -> float:
    """CPU µs the measuring process spent per message (data_provision or datagram) it took in."""
    return result["cpu"] / max(result["messages_s"], 1e-9) * 1e6


def share(result: dict) -> float:
    """Share of the datagrams the sender sent that the measuring process processed (UDP)."""
    return result["processed"] / max(result["sent"], 1)


def kernel_lost(result: dict) -> int:
    """Datagrams the kernel dropped at the measuring process's UDP socket (sent - processed if unknown)."""
    drops = result.get("kernel_drops")
    return drops if drops is not None else result["sent"] - result["processed"]


def udp_line(result: dict) -> str:
    return (f"{result['messages_s']:,.0f} datagrams/s ({us(result):.2f} µs CPU/datagram, {share(result):.0%} of "
            f"{result['offered_s']:,.0f}/s offered, kernel dropped {kernel_lost(result):,})")


def child(mode: str, target: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--target", target, "--seconds", str(args.seconds),
           "--rcvbuf", str(args.rcvbuf), "--turn-time", str(args.turn_time),
           "--per-message", str(args.per_message), "--kbit", str(args.kbit), "--pace-seconds", str(args.pace_seconds),
           "--rate", str(args.rate), "--size", str(args.size or DEFAULT_SIZE[mode])]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sender", choices=["tcp", "udp", "pacing"], help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["tcp", "udp", "pacing"], help=argparse.SUPPRESS)
    parser.add_argument("--target", choices=["mux", "baseline", "relay"], default="mux", help=argparse.SUPPRESS)
    parser.add_argument("--tcp-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--udp-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=150_000, help="UDP load offered, datagrams/s")
    parser.add_argument("--rcvbuf", type=int, default=DEFAULT_UDP_RECEIVE_BUFFER,
                        help="UDP receive buffer asked for, MUX and baselines alike (bytes; default: bcast-mux's)")
    parser.add_argument("--turn-time", type=float, default=Limits().turn_time,
                        help="the MUX's UDP wake-up time bound, s ([limits] turn_time; default bcast-mux's; 0: none)")
    parser.add_argument("--mode", choices=["tcp", "udp", "pacing", "all"], default="all")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (median reported)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    parser.add_argument("--size", type=int, default=None, help="datagram (LTKM) size in bytes")
    parser.add_argument("--per-message", type=int, default=1, help="datagrams per data_provision")
    parser.add_argument("--kbit", type=int, default=200, help="allocation of the pacing run, kbit/s")
    parser.add_argument("--pace-seconds", type=float, default=10.0, help="measurement window of the pacing run")
    args = parser.parse_args()
    if args.sender:
        args.mode = args.sender
        sender(args)
        return
    if args.child:
        print(json.dumps(measure(args.child, args.target, args)), flush=True)
        return

    import twisted

    modes = ["tcp", "udp", "pacing"] if args.mode == "all" else [args.mode]
    print(f"bcast-sp4 MUX benchmark (python {sys.version.split()[0]}, twisted {twisted.__version__}): "
          f"{args.runs} runs; throughput runs {args.seconds:g} s, pacing window {args.pace_seconds:g} s; "
          f"medians [min..max]", flush=True)
    summary, verdicts = [], []
    for mode in modes:
        size = args.size or DEFAULT_SIZE[mode]
        shape = f"{args.per_message} x {size}-byte datagram(s) per data_provision"
        ours: list[dict] = []
        base: list[dict] = []
        relay: list[dict] = []  # udp: the second baseline
        for run in range(args.runs):
            if mode == "pacing":
                ours.append(child(mode, "mux", args))
                r = ours[-1]
                print(f"  pacing run {run + 1}: {r['pacing_kbit']:.2f} kbit/s, error {r['pacing_error_pct']:+.3f} %",
                      flush=True)
                continue
            # rotate which goes first, so a drift of the machine does not favour any
            targets = ["mux", "baseline"] + (["relay"] if mode == "udp" else [])
            order = targets[run % len(targets):] + targets[: run % len(targets)]
            results = {target: child(mode, target, args) for target in order}
            ours.append(results["mux"])
            base.append(results["baseline"])
            o, b = results["mux"], results["baseline"]
            if mode == "tcp":
                print(f"  tcp run {run + 1}: MUX {o['mbit_s']:,.0f} Mbit/s ({us(o):.1f} µs CPU/message), baseline "
                      f"{b['mbit_s']:,.0f} Mbit/s ({us(b):.1f} µs CPU/message); MUX / baseline: rate "
                      f"{o['mbit_s'] / b['mbit_s']:.2f}, CPU per message {us(o) / us(b):.1f}x", flush=True)
            else:
                x = results["relay"]
                relay.append(x)
                print(f"  udp run {run + 1}: MUX {udp_line(o)}; baseline {udp_line(b)}; relay {udp_line(x)}; "
                      f"MUX / baseline: rate {o['messages_s'] / b['messages_s']:.2f}, share of offered "
                      f"{share(o) / share(b):.2f}, CPU per datagram {us(o) / us(b):.2f}x; MUX / relay: share "
                      f"{share(o) / share(x):.2f}, CPU per datagram {us(o) / us(x):.2f}x", flush=True)
        if mode in ("tcp", "udp"):
            med = lambda results, key: statistics.median(r[key] for r in results)  # noqa: E731
            ratio = lambda f, a, b: statistics.median(f(x) / f(y) for x, y in zip(a, b))  # noqa: E731, same-run
            cpu_ratio = ratio(us, ours, base)
            drops: dict[str, int] = {}
            for r in ours:
                for reason, n in r["dropped"].items():
                    drops[reason] = drops.get(reason, 0) + n
        if mode == "tcp":
            mbit, base_mbit = med(ours, "mbit_s"), med(base, "mbit_s")
            rate_ratio = ratio(lambda r: r["mbit_s"], ours, base)
            summary.append(
                f"TCP ingest, {shape}, egress unthrottled: MUX {spread([r['mbit_s'] for r in ours], ',.0f')} "
                f"Mbit/s of datagrams ({med(ours, 'messages_s'):,.0f} messages/s, CPU {med(ours, 'cpu'):.0%}, "
                f"{statistics.median(map(us, ours)):.1f} µs/message); baseline bare Protocol + Framer "
                f"{spread([r['mbit_s'] for r in base], ',.0f')} Mbit/s (CPU {med(base, 'cpu'):.0%}, "
                f"{statistics.median(map(us, base)):.1f} µs/message); MUX / baseline (median of same-run ratios) = "
                f"{rate_ratio:.2f} (rate), {cpu_ratio:.1f}x (CPU per message); emitted "
                f"{sum(r['emitted'] for r in ours):,} of {sum(r['accepted'] for r in ours):,}, drops {drops or 'none'}"
            )
            verdicts.append(f"TCP {mbit:.0f} Mbit/s >= 500: {'met' if mbit >= 500 else 'NOT met'}")
            verdicts.append(f"TCP {rate_ratio:.2f}x the bare Protocol + Framer >= 0.15x (issue #9): "
                            f"{'met' if rate_ratio >= 0.15 else 'NOT met'}")
        elif mode == "udp":
            rate, base_rate = med(ours, "messages_s"), med(base, "messages_s")
            offered = med(ours + base + relay, "offered_s")
            rate_ratio = ratio(lambda r: r["messages_s"], ours, base)
            share_ratio = ratio(share, ours, base)
            kernel = sum(kernel_lost(r) for r in ours)
            summary.append(
                f"UDP ingest, {shape}, egress unthrottled, offered {offered:,.0f} datagrams/s, receive buffer "
                f"{ours[0]['rcvbuf']:,} bytes granted: MUX {spread([r['messages_s'] for r in ours], ',.0f')} "
                f"datagrams/s (CPU {med(ours, 'cpu'):.0%}, {statistics.median(map(us, ours)):.2f} µs/datagram, "
                f"{statistics.median(map(share, ours)):.1%} of the offered load); baseline bare DatagramProtocol "
                f"{spread([r['messages_s'] for r in base], ',.0f')} datagrams/s (CPU {med(base, 'cpu'):.0%}, "
                f"{statistics.median(map(us, base)):.2f} µs/datagram, {statistics.median(map(share, base)):.1%}); "
                f"relay baseline (bare receive + one send each) {spread([r['messages_s'] for r in relay], ',.0f')} "
                f"datagrams/s (CPU {med(relay, 'cpu'):.0%}, {statistics.median(map(us, relay)):.2f} µs/datagram, "
                f"{statistics.median(map(share, relay)):.1%}). Medians of same-run ratios: MUX / baseline = "
                f"{rate_ratio:.2f} (rate), {share_ratio:.2f} (share of the offered load), {cpu_ratio:.2f}x (CPU per "
                f"datagram); MUX / relay = {ratio(share, ours, relay):.2f} (share), {ratio(us, ours, relay):.2f}x (CPU "
                f"per datagram). Kernel dropped (/proc/net/udp; sent - processed in brackets): MUX "
                f"{kernel:,} ({sum(r['sent'] - r['processed'] for r in ours):,}) of {sum(r['sent'] for r in ours):,}, "
                f"baseline {sum(kernel_lost(r) for r in base):,} ({sum(r['sent'] - r['processed'] for r in base):,}) of "
                f"{sum(r['sent'] for r in base):,}, relay {sum(kernel_lost(r) for r in relay):,} of "
                f"{sum(r['sent'] for r in relay):,}; MUX drops {drops or 'none'}"
            )
            verdicts.append(f"UDP {rate:,.0f} datagrams/s >= 100,000: {'met' if rate >= 100_000 else 'NOT met'}")
            verdicts.append(f"UDP {share_ratio:.2f}x the bare DatagramProtocol's share of the offered load >= 0.8x with no "
                            f"kernel drops (issue #9): {'met' if share_ratio >= 0.8 and kernel == 0 else 'NOT met'} "
                            f"({kernel:,} dropped)")
        else:
            errors = [r["pacing_error_pct"] for r in ours]
            worst = statistics.median(abs(e) for e in errors)
            summary.append(
                f"Pacing, allocation {args.kbit} kbit/s, {size}-byte LTKMs, {args.pace_seconds:g} s window: "
                f"{spread([r['pacing_kbit'] for r in ours], '.2f')} kbit/s, error {spread(errors, '+.3f')} %"
            )
            verdicts.append(f"pacing median |error| {worst:.3f} % within 1 %: {'met' if worst <= 1.0 else 'NOT met'}")
    for line in summary:
        print(line)
    print("targets (medians): " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
