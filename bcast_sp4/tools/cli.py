"""Command line: ``bcast-sp4 <command> ...`` (also ``python -m bcast_sp4``).

Each command module has ``add_parser(subparsers)``, which adds its sub-parser and sets the defaults
``command_run`` (``run(args, parser, stdin, stdout, stderr) -> exit status``) and ``command_parser``
(its own parser, for usage errors); list the module in :data:`COMMANDS`. :func:`main` parses, runs
the chosen command and returns its exit status.

* ``decode``: SimulCrypt messages from hex or a capture (:mod:`bcast_sp4.tools.decode`).

A reader that closes stdout early (``bcast-sp4 decode ... | head``) ends any command quietly:
no traceback, no ``Broken pipe`` message, and the command's status so far.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import TextIO

from .. import version_text
from . import decode

#: modules of the sub-commands; each has ``add_parser(subparsers)``
COMMANDS = (decode,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcast-sp4", description="OMA BCAST SP-4 (DVB SimulCrypt) tools")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    # check parses its own arguments (main dispatches to it first); listed here for --help
    sub.add_parser("check", help="validate configuration, lab, key and subscriber files (bcast-sp4 check --help)")
    return parser


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Entry point; returns the exit status of the command (``decode``: 0 shown, 1 nothing, 2 errors).

    A command handles a closed stdout itself (``decode`` stops and returns its status so far);
    one that lets ``BrokenPipeError`` through exits with 1. Either way stdout is pointed at
    /dev/null so that nothing more is said about it.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check"]:  # parses its own arguments
        from .check import main as check

        return check(argv[1:], stdout, stderr)
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    # argparse writes usage, help and errors to sys.stdout / sys.stderr and exits: keep them on
    # the given streams and turn the exit into a returned status.
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            args = parser.parse_args(argv)
            status = args.command_run(args, args.command_parser, sys.stdin, stdout, stderr)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        except BrokenPipeError:
            status = 1
    try:
        stdout.flush()
    except BrokenPipeError:
        _detach(stdout)
    return status


def _detach(stream: TextIO) -> None:
    """Point a closed stdout at /dev/null so that the interpreter's final flush stays silent."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
