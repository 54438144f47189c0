"""The short version of ``benchmarks/robustness.py`` (issue #13): a few thousand mutated messages.

The ECMG and the MUX each run as their own ``twistd`` process on loopback. Messages come from the
harness's own spec tables (not the project's codec); every invalid one must get the spec's
error_status, every message a reply where the spec asks for one, no reply be 0x7000 (an internal
error), no UDP datagram be emitted from an invalid message, and the server must survive without a
traceback in its log. Small floods run too. No timing is asserted.
"""

from __future__ import annotations

import random

from benchmarks import robustness


def check(result: dict) -> None:
    tally = result["tally"]
    assert result["alive"]
    assert tally.sent == tally.judged and tally.closed_unjudged == 0, tally.examples
    assert (tally.wrong, tally.unanswered, tally.internal) == (0, 0, 0), tally.examples
    assert tally.invalid > 0 and tally.ok == tally.judged
    assert tally.invalid_ok == tally.invalid  # TCP: the spec's error_status; UDP: dropped
    log = result["log"]
    assert (log["traceback"], log["internal_error"], log["unhandled"]) == (0, 0, 0)


def test_ecmg_server_fuzz(tmp_path):
    result = robustness.run_ecmg(2000, tmp_path, random.Random(1), flood=50, quiet_s=0.5, hold_s=0.5)
    check(result)
    assert result["framing"] > 0 and set(result["floods"]) == {"idle", "half-sent"}


def test_mux_server_fuzz_over_tcp_and_udp(tmp_path):
    result = robustness.run_mux(2000, tmp_path, random.Random(2), flood=50, quiet_s=0.5, amplify=False, hold_s=0.5)
    check(result["tcp"])
    check(result["udp"])
