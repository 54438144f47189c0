"""``bcast-sp4 decode``: SimulCrypt ECMG<=>SCS / EMMG<=>MUX messages from hex or a capture, for lab work.

Input: hex arguments (each one or more whole messages), hex lines on stdin, or ``--pcap FILE``
(pcap or pcapng; TCP reassembled per direction, each UDP datagram one message). Without
``--port`` the SimulCrypt connections of a capture are found by content (:mod:`.sniff`).

Output: one text block per message (``--json``: one object per line), with the capture frame and
time (relative to the capture's first TCP/UDP packet, and absolute UTC); ``--payloads`` reads STKMs, LTKMs and TEK
CWs field by field (:mod:`.payloads`), ``--keys``/``--subscribers`` verify and decrypt them.
Filters (``--type``, ``--channel``, ``--stream``) choose which messages are shown; errors are
always reported.

Exit status: 0 when at least one message was shown and nothing failed; 1 when nothing was shown
(no SimulCrypt message found, on the ports given, or matching the filters) and nothing failed;
2 on a usage error, unreadable input, or any message or payload that failed to decode or verify.
A reader that closes the pipe early (``| head``) ends the run quietly with the status so far.
Errors, warnings (tolerated deviations) and hints go to stderr, one line each.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
from collections.abc import Hashable, Iterator
from datetime import datetime, timezone
from typing import Any, TextIO

import attrs

from ..wire import (
    MESSAGE_CLASSES,
    Deviation,
    Framer,
    Interface,
    InvalidMessage,
    Message,
    MessageTooLong,
    PeerProtocolError,
    decode,
    decode_datagram,
)
from ..wire import ecmg_scs, emmg_mux
from ..wire.message import HEADER, HEADER_SIZE, MAX_MESSAGE_LENGTH
from ..wire.sp4 import profile_of
from .payloads import PayloadContext, PayloadView, Secrets, payload_views
from .render import describe_error, to_json_dict, to_text

__all__ = ["add_parser", "run", "EXIT_OK", "EXIT_NOTHING", "EXIT_ERRORS"]

EXIT_OK, EXIT_NOTHING, EXIT_ERRORS = 0, 1, 2
_PROG = "bcast-sp4 decode"
_HEX_NOISE = re.compile(r"[\s:]|0x", re.IGNORECASE)
_NOT_HEX = re.compile(r"[^0-9a-fA-F]")
_TIME_MODES = ("both", "relative", "absolute", "none")

_EXAMPLES = """\
examples:
  bcast-sp4 decode 030201003c000e0002...                 hex messages as arguments
  echo 0300020006000e00020001 | bcast-sp4 decode         hex lines on stdin
  bcast-sp4 decode --pcap cap.pcapng                     SimulCrypt found by content
  bcast-sp4 decode --pcap cap.pcapng --port 2222         only TCP/UDP port 2222
  bcast-sp4 decode --pcap cap.pcap --type ECM_response --channel 1 --payloads
  bcast-sp4 decode --pcap cap.pcap --keys etc/lab/keys.toml     decrypt and verify STKMs
  bcast-sp4 decode --json --pcap cap.pcap | jq .type

exit status: 0 messages shown, 1 nothing shown, 2 usage error or something failed to decode"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``decode`` on the ``bcast-sp4`` sub-command parsers."""
    dec = subparsers.add_parser(
        "decode",
        help="decode SimulCrypt ECMG<=>SCS / EMMG<=>MUX messages (hex or pcap/pcapng)",
        description="Decode SimulCrypt messages given as hex (arguments, or stdin lines) or read from a\n"
        "pcap/pcapng capture (TCP reassembled per direction, one message per UDP datagram).",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = dec.add_argument_group("input")
    src.add_argument("hex", nargs="*", help="message bytes in hex (whitespace, colons and 0x ignored)")
    src.add_argument("--pcap", metavar="FILE", help="read a pcap or pcapng capture")
    src.add_argument("--port", type=_port, action="append", default=[], metavar="N",
                     help="SimulCrypt TCP/UDP port (repeatable); without it SimulCrypt is found by content")
    src.add_argument("--max-length", type=int, default=MAX_MESSAGE_LENGTH, metavar="BYTES",
                     help=f"largest accepted message (default {MAX_MESSAGE_LENGTH})")
    src.add_argument("--strict", action="store_true",
                     help="refuse known deviations from TS 103 197 (e.g. data_id in EMMG<=>MUX v1) "
                     "instead of decoding them with a warning")
    sel = dec.add_argument_group("filters (errors are always reported)")
    sel.add_argument("--type", action="append", default=[], metavar="NAME",
                     help="message type: name (CW_provision), wildcard (stream_*) or code (0x0201); "
                     "repeatable or comma-separated")
    sel.add_argument("--channel", type=int, action="append", default=[], metavar="ID",
                     help="ECM_channel_id / data_channel_id (repeatable)")
    sel.add_argument("--stream", type=int, action="append", default=[], metavar="ID",
                     help="ECM_stream_id / data_stream_id (repeatable)")
    out = dec.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="one JSON object per message")
    out.add_argument("--time", choices=_TIME_MODES, default="both",
                     help="capture timestamps in text output: relative to the first TCP/UDP packet, "
                     "absolute UTC, both (default) or none")
    out.add_argument("--payloads", action="store_true",
                     help="decode STKMs, LTKMs and TEK CWs field by field")
    out.add_argument("--keys", metavar="FILE",
                     help="key file (etc/keys.example.toml format): verify and decrypt STKMs (implies --payloads)")
    out.add_argument("--subscribers", metavar="FILE",
                     help="subscriber file (device keys): verify LTKMs and unwrap their keys (implies --payloads)")
    out.add_argument("--show-keys", action="store_true",
                     help="print TEK and delivered key bytes, CWs included (hidden otherwise; implies --payloads)")
    dec.set_defaults(command_run=run, command_parser=dec)
    return dec


def _port(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"port {value} outside 1..65535")
    return value


# --- filters -------------------------------------------------------------------------------------

_KNOWN_NAMES = sorted({cls.NAME for cls in MESSAGE_CLASSES.values()}, key=str.lower)


def _type_matcher(specs: list[str]) -> tuple[frozenset[int], list[str]] | str:
    """``(codes, patterns)`` from ``--type`` values, or an error text."""
    codes: set[int] = set()
    patterns: list[str] = []
    for token in (t.strip() for spec in specs for t in spec.split(",")):
        if not token:
            continue
        try:
            code = int(token, 0)
        except ValueError:
            pattern = token.lower()
            if not any(fnmatch.fnmatchcase(name.lower(), pattern) for name in _KNOWN_NAMES):
                return f"--type {token!r} matches no message type; known: {', '.join(_KNOWN_NAMES)}"
            patterns.append(pattern)
            continue
        if code not in MESSAGE_CLASSES:
            return f"--type {token}: no message_type {code:#06x}"
        codes.add(code)
    return frozenset(codes), patterns


@attrs.frozen
class _Filter:
    codes: frozenset[int]
    patterns: tuple[str, ...]
    channels: frozenset[int]
    streams: frozenset[int]

    @property
    def active(self) -> bool:
        return bool(self.codes or self.patterns or self.channels or self.streams)

    def accepts(self, message: Message) -> bool:
        if self.codes or self.patterns:
            name = message.NAME.lower()
            if message.MESSAGE_TYPE not in self.codes and not any(fnmatch.fnmatchcase(name, p) for p in self.patterns):
                return False
        if self.channels and _first(message, "ECM_channel_id", "data_channel_id") not in self.channels:
            return False
        if self.streams and _first(message, "ECM_stream_id", "data_stream_id") not in self.streams:
            return False
        return True


def _first(message: Message, *names: str) -> Any:
    for name in names:
        value = getattr(message, name, None)
        if value is not None:
            return value
    return None


# --- where a message came from -----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Origin:
    """Where a message came from: a hex input, or a capture frame and direction."""

    label: str
    frame: int | None = None
    time: float | None = None
    transport: str | None = None
    src: tuple[str, int] | None = None
    dst: tuple[str, int] | None = None
    conversation: Hashable = None


def _endpoint(end: tuple[str, int]) -> str:
    host = f"[{end[0]}]" if ":" in end[0] else end[0]
    return f"{host}:{end[1]}"


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- output -----------------------------------------------------------------------------------


class _Output:
    """Writes messages to stdout and problems to stderr; counts both."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args, self.out, self.err = args, out, err
        self.shown = self.errors = self.warnings = self.filtered = 0
        self.first_time: float | None = None

    def message(self, message: Message, origin: _Origin, views: list[PayloadView]) -> None:
        self.shown += 1
        for deviation in sorted(message.deviations, key=lambda d: d.value):
            self.warning(origin, f"deviation {deviation.value}: {deviation.description} ({message.NAME})")
        for view in views:
            for problem in view.errors:
                self.error(origin, f"{view.label}: {problem}")
        if self.args.json:
            obj = to_json_dict(message, self.args.show_keys)
            if origin.transport is not None:
                obj["source"] = {
                    "transport": origin.transport,
                    "src": _endpoint(origin.src),  # type: ignore[arg-type]
                    "dst": _endpoint(origin.dst),  # type: ignore[arg-type]
                    "time": origin.time,
                    "relative": round(origin.time - (self.first_time or origin.time), 6),  # type: ignore[operator]
                    "utc": _utc(origin.time),  # type: ignore[arg-type]
                    "frame": origin.frame,
                }
            if message.deviations:
                obj["deviations"] = sorted(d.value for d in message.deviations)
            if views:
                obj["payloads"] = [view.to_json() for view in views]
            self.out.write(json.dumps(obj) + "\n")
            return
        lines = [to_text(message, self._where(origin), self.args.show_keys)]
        lines += [f"  ! deviation {d.value}: {d.description}" for d in sorted(message.deviations, key=lambda d: d.value)]
        for view in views:
            lines += view.text_lines("  ")
        self.out.write("\n".join(lines) + "\n")

    def _where(self, origin: _Origin) -> str:
        if origin.transport is None:
            return origin.label
        parts = [f"frame {origin.frame}"]
        mode = self.args.time
        if mode in ("both", "relative"):
            parts.append(f"+{origin.time - (self.first_time or origin.time):.6f}s")  # type: ignore[operator]
        if mode in ("both", "absolute"):
            parts.append(_utc(origin.time))  # type: ignore[arg-type]
        parts.append(f"{origin.transport} {_endpoint(origin.src)} -> {_endpoint(origin.dst)}")  # type: ignore[arg-type]
        return "  ".join(parts)

    def error(self, origin: _Origin | str | None, what: PeerProtocolError | str) -> None:
        self.errors += 1
        if isinstance(what, PeerProtocolError):
            what = f"error_status {what.error_status:#06x} ({describe_error(what.interface, what.error_status)}): {what.detail}"
        self._line(origin, what)

    def warning(self, origin: _Origin | str | None, what: str) -> None:
        self.warnings += 1
        self._line(origin, f"warning: {what}")

    def hint(self, what: str) -> None:
        self.err.write(f"{_PROG}: hint: {what}\n")

    def note(self, what: str) -> None:
        self.err.write(f"{_PROG}: note: {what}\n")

    def _line(self, origin: _Origin | str | None, what: str) -> None:
        if isinstance(origin, _Origin):
            where = origin.label if origin.transport is None else self._where(origin)
        else:
            where = origin
        self.err.write(f"{_PROG}: {where}: {what}\n" if where else f"{_PROG}: {what}\n")


# --- what earlier messages tell about payloads ------------------------------------------------------


class _Context:
    """Super_CAS_id per ECM channel and data_type per EMMG stream, from setups seen so far."""

    def __init__(self) -> None:
        self.super_cas_id: dict[tuple, int] = {}
        self.data_type: dict[tuple, int] = {}

    def observe(self, message: Message, conversation: Hashable) -> None:
        if isinstance(message, ecmg_scs.ChannelSetup):
            self.super_cas_id[(conversation, message.ECM_channel_id)] = message.Super_CAS_id
        elif isinstance(message, (emmg_mux.StreamSetup, emmg_mux.StreamStatus)):
            ids = (conversation, message.client_id, message.data_channel_id, message.data_stream_id)
            self.data_type[ids] = message.data_type
            if message.data_id is not None:
                self.data_type[(message.client_id, message.data_id)] = message.data_type

    def payload_context(self, message: Message, origin: _Origin) -> PayloadContext:
        time = datetime.fromtimestamp(origin.time, timezone.utc) if origin.time is not None else None
        if message.INTERFACE is Interface.ECMG_SCS:
            scid = self.super_cas_id.get((origin.conversation, getattr(message, "ECM_channel_id", None)))
            profile = None if scid is None else (profile_of(scid) or False)
            return PayloadContext(profile=profile, time=time)
        client = getattr(message, "client_id", None)
        profile = None if client is None else (profile_of(client) or False)
        data_type = None
        if getattr(message, "data_id", None) is not None:
            data_type = self.data_type.get((client, message.data_id))  # type: ignore[attr-defined]
        if data_type is None:
            ids = (origin.conversation, client, getattr(message, "data_channel_id", None),
                   getattr(message, "data_stream_id", None))
            data_type = self.data_type.get(ids)
        return PayloadContext(profile=profile, data_type=data_type, time=time)


# --- the run ------------------------------------------------------------------------------------


class _Run:
    def __init__(self, args: argparse.Namespace, out: _Output, selection: _Filter, secrets: Secrets | None) -> None:
        self.args, self.out, self.selection, self.secrets = args, out, selection, secrets
        self.tolerate = frozenset() if args.strict else frozenset({Deviation.V1_DATA_ID})
        self.context = _Context()
        self.unreadable = False  # the capture could not be read (to the end)

    def emit(self, frame: bytes, origin: _Origin, *, datagram: bool = False) -> None:
        """Decode one message; show it (with its payloads) if the filters accept it."""
        try:
            if datagram:
                message = decode_datagram(frame, max_length=self.args.max_length, tolerate=self.tolerate)
            else:
                message = decode(frame, tolerate=self.tolerate)
        except PeerProtocolError as exc:
            self.out.error(origin, exc)
            return
        self.context.observe(message, origin.conversation)
        if not self.selection.accepts(message):
            self.out.filtered += 1
            return
        views: list[PayloadView] = []
        if self.secrets is not None:
            views = payload_views(message, self.context.payload_context(message, origin), self.secrets)
        self.out.message(message, origin, views)

    # hex ---------------------------------------------------------------------------------

    def hex_inputs(self, chunks: list[str]) -> None:
        for number, text in enumerate(chunks, 1):
            source = f"input {number}"
            data = self._hex(text, source)
            if data is None:
                continue
            framer = Framer(max_length=self.args.max_length)
            items = framer.feed(data)
            for index, item in enumerate(items, 1):
                origin = _Origin(label=f"{source} message {index}")
                if isinstance(item, PeerProtocolError):
                    self.out.error(origin, item)
                else:
                    self.emit(item, origin)
            if framer.buffered:
                where = f"{source} message {len(items) + 1}"
                self.out.error(where, _truncated(framer.pending(), "the input ends inside a message"))

    def _hex(self, text: str, source: str) -> bytes | None:
        cleaned = _HEX_NOISE.sub("", text)
        bad = _NOT_HEX.search(cleaned)
        if bad:
            if os.path.isfile(text):
                self.out.error(source, f"{text!r} is a file, not hex: to read a capture use --pcap {text}")
            else:
                self.out.error(source, f"not hexadecimal: {bad.group()!r} in {_short(text)}")
            return None
        if len(cleaned) % 2:
            self.out.error(
                source,
                f"odd number of hex digits ({len(cleaned)}) in {_short(text)}: each byte is two digits, "
                "is one missing?",
            )
            return None
        if not cleaned:
            self.out.error(source, "empty input")
            return None
        return bytes.fromhex(cleaned)

    # pcap --------------------------------------------------------------------------------

    def capture(self, path: str) -> None:
        from .capture import SYN, TcpReassembler
        from .sniff import Classifier

        ports = set(self.args.port)
        reassembler = TcpReassembler()
        classifier = Classifier(self.args.max_length)
        framers: dict[tuple, Framer] = {}
        messages_on: dict[int, int] = dict.fromkeys(ports, 0)
        packets_on: dict[int, int] = dict.fromkeys(ports, 0)
        for seg in self._packets(path):
            if self.out.first_time is None:
                self.out.first_time = seg.timestamp
            given = [p for p in (seg.src[1], seg.dst[1]) if p in ports]
            for port in set(given):
                packets_on[port] += 1
            conversation = frozenset((seg.src, seg.dst)) if seg.transport == "tcp" else None
            if seg.transport == "udp":
                if given or (not ports and classifier.udp(seg)):
                    origin = self._origin(seg, seg.src, seg.dst, None)
                    self.emit(seg.payload, origin, datagram=True)
                    for port in set(given):
                        messages_on[port] += 1
                elif ports:
                    classifier.udp(seg)  # only to name SimulCrypt ports in a hint
                continue
            if seg.flags & SYN:
                for direction in ((seg.src, seg.dst), (seg.dst, seg.src)):
                    self._flush(framers.pop(direction, None), direction, "a new connection starts")
            delivered = reassembler.feed(seg)
            if given:
                chunks = delivered
            else:
                chunks = classifier.tcp(seg, delivered)
                if ports:
                    continue  # classified only, to name SimulCrypt ports in a hint
            for direction, data in chunks:
                framer = framers.get(direction)
                if framer is None:
                    framer = framers[direction] = Framer(max_length=self.args.max_length)
                for item in framer.feed(data):
                    origin = self._origin(seg, direction[0], direction[1], conversation)
                    if isinstance(item, MessageTooLong):
                        self.out.error(origin, item)
                    else:
                        self.emit(item, origin)
                    for port in set(given):
                        messages_on[port] += 1
        for direction, framer in framers.items():
            self._flush(framer, direction, "the capture ends inside a message")
        if not self.unreadable:
            self._capture_hints(ports, messages_on, packets_on, classifier.found)

    def _packets(self, path: str) -> Iterator[Any]:
        from .capture import CaptureError, read_packets

        try:
            yield from read_packets(path)
        except CaptureError as exc:
            self.unreadable = True
            self.out.error(None, str(exc))  # the message names the file
        except OSError as exc:
            self.unreadable = True
            self.out.error(path, exc.strerror or str(exc))

    def _origin(self, seg: Any, src: tuple[str, int], dst: tuple[str, int], conversation: Hashable) -> _Origin:
        return _Origin(label=f"{seg.transport} {_endpoint(src)} -> {_endpoint(dst)}", frame=seg.frame,
                       time=seg.timestamp, transport=seg.transport, src=src, dst=dst, conversation=conversation)

    def _flush(self, framer: Framer | None, direction: tuple, why: str) -> None:
        if framer is not None and framer.buffered:
            self.out.error(f"tcp {_endpoint(direction[0])} -> {_endpoint(direction[1])}", _truncated(framer.pending(), why))

    def _capture_hints(self, ports: set[int], messages_on: dict[int, int], packets_on: dict[int, int], found: set) -> None:
        found_text = ", ".join(f"{transport} port {port}" for transport, port in sorted(found))
        if not ports:
            if found_text:
                self.out.note(f"SimulCrypt found by content on {found_text} (--port N to choose)")
            elif not self.out.errors:
                self.out.hint("no SimulCrypt found by content (first message of each TCP connection, each UDP "
                              "datagram); a connection captured mid-stream needs --port N")
            return
        elsewhere = [entry for entry in sorted(found) if entry[1] not in ports]
        for port in sorted(ports):
            if messages_on[port]:
                continue
            what = "no TCP or UDP packet" if not packets_on[port] else "packets but no SimulCrypt message"
            if elsewhere:
                more = "SimulCrypt found by content on " + ", ".join(f"{t} port {p}" for t, p in elsewhere)
            else:
                more = "no SimulCrypt found by content elsewhere in the capture"
            self.out.hint(f"port {port}: {what}; {more}")


def _truncated(pending: bytes, why: str) -> InvalidMessage:
    """The error for an unfinished message: what its header announced and what arrived."""
    if len(pending) < HEADER_SIZE:
        detail = f"{why}: {len(pending)} trailing bytes, too few for a message header (5)"
    else:
        version, message_type, length = HEADER.unpack_from(pending, 0)
        cls = MESSAGE_CLASSES.get(message_type)
        name = f"{cls.NAME} ({message_type:#06x})" if cls else f"message_type {message_type:#06x}"
        detail = (
            f"{why}: truncated {name}: message_length {length} announces {HEADER_SIZE + length} bytes, "
            f"only {len(pending)} present"
        )
    return InvalidMessage(detail, error_information=len(pending))


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """Run ``decode`` with parsed *args*; returns the exit status (see the module docstring)."""
    if args.pcap and args.hex:
        parser.error("give either --pcap FILE or hex input, not both")
    if args.port and not args.pcap:
        parser.error("--port applies to --pcap captures only")
    if not HEADER_SIZE <= args.max_length <= MAX_MESSAGE_LENGTH:
        parser.error(f"--max-length must be {HEADER_SIZE}..{MAX_MESSAGE_LENGTH}")
    types = _type_matcher(args.type)
    if isinstance(types, str):
        parser.error(types)
    selection = _Filter(types[0], tuple(types[1]), frozenset(args.channel), frozenset(args.stream))
    if not args.pcap and not args.hex and stdin.isatty():
        parser.print_usage(stderr)
        stderr.write(f"{_PROG}: no input: give hex messages as arguments, --pcap FILE, or hex lines on stdin "
                     f"(--help for more)\n")
        return EXIT_ERRORS
    out = _Output(args, stdout, stderr)
    secrets = _secrets(args, out)
    if secrets is False:
        return EXIT_ERRORS
    decoder = _Run(args, out, selection, secrets)
    try:
        if args.pcap:
            decoder.capture(args.pcap)
        else:
            chunks = args.hex or [line for line in stdin.read().splitlines() if line.strip()]
            if not chunks:
                out.hint("no input: stdin held no hex line")
            decoder.hex_inputs(chunks)
    except BrokenPipeError:  # the reader closed stdout (| head): stop quietly, status so far
        return EXIT_ERRORS if out.errors else EXIT_OK
    if out.shown == 0 and selection.active and out.filtered:
        out.hint(f"{out.filtered} message(s) decoded, none matched the filters")
    if out.errors:
        return EXIT_ERRORS
    return EXIT_OK if out.shown else EXIT_NOTHING


def _secrets(args: argparse.Namespace, out: _Output) -> Secrets | None | bool:
    """The payload options as :class:`Secrets` (``None`` without ``--payloads``; ``False`` on a bad file)."""
    if not (args.payloads or args.keys or args.subscribers or args.show_keys):
        return None
    from ..config import ConfigError, load_keyfile, load_subscribers

    fields: dict[str, Any] = {"show_keys": args.show_keys}
    try:
        if args.keys:
            fields.update(keys=load_keyfile(args.keys), keys_label=args.keys)
        if args.subscribers:
            devices = {d.device_id: d.device_key for d in load_subscribers(args.subscribers).devices}
            fields.update(device_key=devices.get, devices_label=args.subscribers)
    except ConfigError as exc:
        out.error(None, str(exc))
        return False
    return Secrets(**fields)
