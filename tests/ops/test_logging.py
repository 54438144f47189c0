"""Operator log lines: text and JSON, hex ids, ISO 8601 UTC times, levels, key material redacted."""

from __future__ import annotations

import io
import json

from twisted.internet.task import Clock
from twisted.logger import LogLevel, Logger, LogPublisher, capturedLogs

from bcast_sp4.ops.logging import KeyLog, OperatorLogObserver, readable
from bcast_sp4.ops.metrics import Metrics
from bcast_sp4.ops.runtime import SummaryService

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def _emit(observer, **fields):
    publisher = LogPublisher(observer)
    log = Logger(namespace="bcast_sp4.test", observer=publisher)
    log.emit(fields.pop("level", LogLevel.info), fields.pop("fmt"), **fields)


def test_json_is_one_flat_object_per_line_with_readable_values():
    out = io.StringIO()
    observer = OperatorLogObserver("bcast-ecmg", out, "json")
    _emit(observer, fmt="channel {channel_id} client {client_id} at {first_switch_at}", channel_id=3,
          client_id=0x00010001, first_switch_at=1796229900.0, error_status=[0x7000], ecm_id=258, time=5)
    _emit(observer, fmt="second", level=LogLevel.warn)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["event"] == "channel 3 client 0x00010001 at 2026-12-02T16:45:00.000Z"  # 1796229900 s
    assert (first["level"], first["role"], first["client_id"], first["ecm_id"], first["error_status"]) == (
        "info", "bcast-ecmg", "0x00010001", "0x0102", ["0x7000"])
    assert first["field_time"] == 5 and first["time"].endswith("Z") and first["time"][10] == "T"
    assert all(not isinstance(v, (dict, list)) or k == "error_status" for k, v in first.items())  # flat
    assert json.loads(lines[1])["level"] == "warn"


def test_a_format_spec_still_gets_the_raw_value():
    out = io.StringIO()
    _emit(OperatorLogObserver("bcast-emmg", out, "json"), fmt="client_id {client_id:#010x}", client_id=0x10001)
    line = json.loads(out.getvalue())
    assert (line["event"], line["client_id"]) == ("client_id 0x00010001", "0x00010001")


def test_text_lines_and_level_filter():
    out = io.StringIO()
    observer = OperatorLogObserver("bcast-mux", out, "text", LogLevel.warn)
    _emit(observer, fmt="quiet {x}", x=1)
    _emit(observer, fmt="drop on client {client_id}", client_id=0x00010002, level=LogLevel.warn)
    (line,) = out.getvalue().splitlines()
    assert line.endswith(" warn  bcast-mux: drop on client 0x00010002")
    assert line[:4].isdigit() and "Z warn" in line


def test_bytes_are_redacted_at_every_level_unless_log_keys():
    for keys, shown in ((False, "<16 bytes>"), (True, KEY.hex())):
        out = io.StringIO()
        observer = OperatorLogObserver("bcast-scs", out, "json", LogLevel.debug, keys=keys)
        _emit(observer, fmt="tek {tek}", tek=KEY, level=LogLevel.debug)
        _emit(observer, fmt="tek {tek}", tek=KEY, level=LogLevel.error)
        text = out.getvalue()
        assert text.count(shown) == 4, text  # the field and the message, twice
        assert (KEY.hex() in text) is keys


def test_key_log_emits_nothing_without_the_switch():
    with capturedLogs() as events:
        KeyLog(False).key("SEK", KEY, super_cas_id=0x00010001)
    assert events == []
    with capturedLogs() as events:
        KeyLog(True).key("SEK", KEY, super_cas_id=0x00010001)
    assert len(events) == 1 and events[0]["log_level"] is LogLevel.debug and events[0]["key_hex"] == KEY.hex()


def test_readable_values():
    assert readable("data_id", 1) == "0x0001"
    assert readable("super_CAS_id", 0x00020001) == "0x00020001"
    assert readable("channel_id", 7) == 7
    assert readable("on_air_from", 0.5) == 0.5  # a duration-sized number is not a date
    assert readable("cw", bytearray(8)) == "<8 bytes>"


def test_summary_line_reads_the_metrics():
    clock = Clock()
    metrics = Metrics("bcast-lab", clock)
    metrics.add_source(lambda: [("streams_open", ("ecmg", "ECMG<=>SCS"), 4),
                                ("mux_drops_total", ("mux", "queue_full"), 2),
                                ("mux_allocated_bandwidth_total_bits_per_second", ("mux",), 64000)])
    metrics.count("stkms_generated_total", ("ecmg", "drm"), 10)
    summary = SummaryService(metrics, clock, 10.0)
    with capturedLogs() as events:
        summary.startService()
        clock.advance(10)
        metrics.count("stkms_generated_total", ("ecmg", "drm"), 5)
        clock.advance(10)
        summary.stopService()
    lines = [e for e in events if "summary_role" in e]
    by_role = [(e["summary_role"], e.get("STKMs"), e.get("STKMs_delta"), e.get("streams"), e.get("drops"),
                e.get("allocated_bps")) for e in lines]
    assert by_role == [("ecmg", 10, 10, 4, None, None), ("mux", None, None, None, 2, 64000),
                       ("ecmg", 15, 5, 4, None, None), ("mux", None, None, None, 2, 64000)]


def test_key_log_writes_a_key_store_and_a_subscriber_file_only_when_enabled():
    from pathlib import Path

    from bcast_sp4.config import load_keyfile
    from bcast_sp4.config.subscribers import load_subscribers

    lab = Path(__file__).resolve().parents[2] / "etc" / "lab"
    store, subscribers = load_keyfile(lab / "keys.toml"), load_subscribers(lab / "subscribers.toml")
    for enabled in (False, True):
        with capturedLogs() as events:
            KeyLog(enabled).key_store(store)
            KeyLog(enabled).subscribers(subscribers)
        written = {e["key_hex"] for e in events}
        expected = {"000102030405060708090a0b0c0d0e0f", "5341b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1",
                    "0f0e0d0c0b0a09080706050403020100", "d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"}
        assert written == (expected if enabled else set())


def test_machine_events_read_ids_in_hex_and_times_in_iso_but_keep_integer_fields():
    from twisted.logger import formatEvent

    from bcast_sp4.roles.executor import event_text

    fmt, fields = event_text("127.0.0.1:4000", "service_start", {
        "client_id": 0x00010001, "ecm_id": 0x0102, "first_switch_at": 1796229900.0, "channel_id": 3,
        "error_status": [0x7000], "tek": KEY})
    text = formatEvent({"log_format": fmt, **fields})
    assert text == ("127.0.0.1:4000 service_start client_id=0x00010001 ecm_id=0x0102 "
                    "first_switch_at=2026-12-02T16:45:00.000Z channel_id=3 error_status=['0x7000'] tek=<16 bytes>")
    assert (fields["client_id"], fields["ecm_id"], fields["channel_id"]) == (0x00010001, 0x0102, 3)
