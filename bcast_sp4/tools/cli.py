"""Command line: ``python -m bcast_sp4 decode ...`` (SimulCrypt messages from hex or a capture).

``decode [--json] [HEX ...]``: each argument (or each stdin line when there is none) is a byte
string holding one or more whole messages. ``decode [--json] --pcap FILE --port N [--port M]``:
TCP payloads on those ports are reassembled per direction and framed; each UDP datagram on them
is one message. Undecodable input gives one line on stderr naming the error_status, the other
messages are still printed, and the exit status is 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Iterator, TextIO

from .. import version_text
from .render import describe_error, to_json_dict, to_text
from ..wire import Framer, InvalidMessage, MessageTooLong, PeerProtocolError, decode, decode_datagram
from ..wire.message import MAX_MESSAGE_LENGTH

_HEX_NOISE = re.compile(r"[\s:]|0x", re.IGNORECASE)


class _Output:
    def __init__(self, as_json: bool, out: TextIO, err: TextIO) -> None:
        self.as_json, self.out, self.err = as_json, out, err
        self.messages = 0
        self.errors = 0

    def message(self, message, source: str = "", extra: dict | None = None) -> None:
        self.messages += 1
        if self.as_json:
            obj = to_json_dict(message)
            if extra:
                obj.update(extra)
            self.out.write(json.dumps(obj) + "\n")
        else:
            self.out.write(to_text(message, source) + "\n")

    def error(self, source: str, exc: PeerProtocolError | str) -> None:
        self.errors += 1
        if isinstance(exc, PeerProtocolError):
            what = f"error_status {exc.error_status:#06x} ({describe_error(exc.interface, exc.error_status)}): {exc.detail}"
        else:
            what = exc
        self.err.write(f"bcast-sp4 decode: {source}: {what}\n")


def _frames(data: bytes, max_length: int) -> Iterator[bytes | PeerProtocolError]:
    framer = Framer(max_length=max_length)
    yield from framer.feed(data)
    if framer.buffered:
        yield InvalidMessage(f"{framer.buffered} trailing bytes do not form a whole message")


def _decode_chunk(data: bytes, source: str, out: _Output, max_length: int) -> None:
    for index, item in enumerate(_frames(data, max_length)):
        where = f"{source} message {index + 1}"
        if isinstance(item, PeerProtocolError):
            out.error(where, item)
            continue
        try:
            out.message(decode(item), where)
        except PeerProtocolError as exc:
            out.error(where, exc)


def _decode_hex(args: argparse.Namespace, out: _Output) -> None:
    chunks = args.hex if args.hex else [line for line in sys.stdin.read().splitlines() if line.strip()]
    for number, text in enumerate(chunks, 1):
        source = f"input {number}"
        try:
            data = bytes.fromhex(_HEX_NOISE.sub("", text))
        except ValueError:
            out.error(source, f"not hexadecimal: {text[:40]!r}")
            continue
        _decode_chunk(data, source, out, args.max_length)


def _decode_pcap(args: argparse.Namespace, out: _Output) -> None:
    from .capture import CaptureError, TcpReassembler, read_packets

    ports = set(args.port)
    reassembler = TcpReassembler()
    framers: dict[tuple, Framer] = {}
    try:
        for segment in read_packets(args.pcap):
            if segment.src[1] not in ports and segment.dst[1] not in ports:
                continue
            source = f"{segment.transport} {segment.src[0]}:{segment.src[1]} -> {segment.dst[0]}:{segment.dst[1]}"
            extra = {
                "source": {
                    "transport": segment.transport,
                    "src": f"{segment.src[0]}:{segment.src[1]}",
                    "dst": f"{segment.dst[0]}:{segment.dst[1]}",
                    "time": segment.timestamp,
                }
            }
            if segment.transport == "udp":
                try:
                    out.message(decode_datagram(segment.payload, max_length=args.max_length), source, extra)
                except PeerProtocolError as exc:
                    out.error(source, exc)
                continue
            for direction, data in reassembler.feed(segment):
                framer = framers.setdefault(direction, Framer(max_length=args.max_length))
                for item in framer.feed(data):
                    if isinstance(item, MessageTooLong):
                        out.error(source, item)
                        continue
                    try:
                        out.message(decode(item), source, extra)
                    except PeerProtocolError as exc:
                        out.error(source, exc)
    except (CaptureError, OSError) as exc:
        out.error(args.pcap, str(exc))
    for (src, dst), framer in framers.items():
        if framer.buffered:
            out.error(
                f"tcp {src[0]}:{src[1]} -> {dst[0]}:{dst[1]}",
                InvalidMessage(f"capture ends inside a message ({framer.buffered} bytes buffered)"),
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcast-sp4", description="OMA BCAST SP-4 (DVB SimulCrypt) tools")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="validate configuration, lab, key and subscriber files (bcast-sp4 check --help)")
    dec = sub.add_parser(
        "decode",
        help="decode SimulCrypt ECMG<=>SCS / EMMG<=>MUX messages",
        description="Decode SimulCrypt messages given as hex (arguments, or stdin lines) or read from a "
        "pcap/pcapng capture (TCP reassembled per direction, one message per UDP datagram).",
    )
    dec.add_argument("--json", action="store_true", help="one JSON object per message")
    dec.add_argument("--pcap", metavar="FILE", help="read a pcap or pcapng capture")
    dec.add_argument("--port", type=int, action="append", default=[], metavar="N", help="SimulCrypt port (repeatable)")
    dec.add_argument(
        "--max-length", type=int, default=MAX_MESSAGE_LENGTH, metavar="BYTES", help="largest accepted message"
    )
    dec.add_argument("hex", nargs="*", help="message bytes in hex (whitespace and colons ignored)")
    return parser


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 when any input failed to decode)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check"]:  # parses its own arguments
        from .check import main as check

        return check(argv[1:], stdout, stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    out = _Output(getattr(args, "json", False), stdout or sys.stdout, stderr or sys.stderr)
    if args.command == "decode":
        if args.pcap and args.hex:
            parser.error("give either --pcap or hex input, not both")
        if args.pcap and not args.port:
            parser.error("--pcap needs at least one --port")
        if not 5 <= args.max_length <= MAX_MESSAGE_LENGTH:
            parser.error(f"--max-length must be 5..{MAX_MESSAGE_LENGTH}")
        (_decode_pcap if args.pcap else _decode_hex)(args, out)
    return 2 if out.errors else 0
