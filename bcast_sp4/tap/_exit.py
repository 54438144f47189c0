"""Ending a twistd run with an exit status (twistd itself always exits 0 after a normal stop)."""

from __future__ import annotations

import atexit
import os
import sys


def stop_with_status(reactor, status: int) -> None:
    """Stop the reactor; the process then exits with *status*.

    twistd has no exit-status hook, so an ``atexit`` handler (run after twistd has cleaned up:
    logs flushed, pid file removed) ends the interpreter with the status.
    """
    if status:
        def leave() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)

        atexit.register(leave)
    if reactor.running:
        reactor.callLater(0, reactor.stop)
