"""The status board keeps the last error of at most MAX_PEER_ERRORS peers: a flood of bad
messages from many source ports cannot grow it without bound, and the most recent are kept."""

from __future__ import annotations

from twisted.internet.task import Clock

from bcast_sp4.ops.status import MAX_PEER_ERRORS, StatusBoard


def test_peer_errors_are_bounded_and_keep_the_most_recent():
    clock = Clock()
    board = StatusBoard("bcast-ecmg", clock)
    for port in range(10_000, 10_000 + 3 * MAX_PEER_ERRORS):
        clock.advance(1)
        board.observe("ecmg", f"127.0.0.1:{port}", "peer_error", {"error_status": 0x0001})
    assert len(board.peer_errors) == MAX_PEER_ERRORS
    peers = [e["peer"] for e in board.document()["peer_errors"]]
    first_kept = 10_000 + 2 * MAX_PEER_ERRORS
    assert peers == [f"127.0.0.1:{p}" for p in range(first_kept, first_kept + MAX_PEER_ERRORS)]
    # a kept peer's new error moves it to the newest place; the oldest other one goes next
    board.observe("ecmg", f"127.0.0.1:{first_kept}", "peer_error", {"error_status": 0x0007})
    board.observe("ecmg", "127.0.0.1:9", "peer_error", {"error_status": 0x0003})
    peers = [e["peer"] for e in board.document()["peer_errors"]]
    assert len(peers) == MAX_PEER_ERRORS
    assert f"127.0.0.1:{first_kept + 1}" not in peers
    assert peers[-2:] == [f"127.0.0.1:{first_kept}", "127.0.0.1:9"]
    assert board.document()["peer_errors"][-2]["error_status"] == ["0x0007"]
