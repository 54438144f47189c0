"""Fail-fast start-up: an endpoint that cannot be parsed or listened on ends the process at once.

An operator's mistake (a port in use, ``tcp:99999``, ``foo:bar``, ``tcp:port=abc``) gives one
line on stderr and a non-zero exit status before anything is served, never a traceback; a
traceback is left for real bugs. Twisted's own behaviour differs per case: a
``StreamServerEndpointService`` logs a failed ``listen`` and keeps the process running on
nothing, ``serverFromString`` raises ``ValueError`` / ``TypeError`` from ``makeService``, a
``UDPServer`` raises ``CannotListenError`` out of twistd's start-up with a traceback.

* :func:`server_endpoint` parses an endpoint string; a bad one raises :class:`StartupError`.
* :class:`ListeningService` / :class:`UDPListeningService` listen at ``privilegedStartService``
  and raise :class:`StartupError` naming the endpoint and the reason.
* :class:`FailFast` is the top of each plugin's service tree: it binds every port before any
  other service starts; on a :class:`StartupError` (or a ``CannotListenError`` from a role that
  binds its own sockets) it writes the line, starts nothing, and stops the reactor as soon as it
  runs, so twistd removes its pid file and the process exits with the status.
  Daemonized (``twistd`` without ``-n``) stderr is ``/dev/null`` by then: the line goes to the log
  as a critical event and the error is raised to twistd, whose status pipe hands it to the parent,
  which prints ``An error has occurred: 'bcast-ecmg: cannot listen on ...'`` and exits 1 (twistd's
  daemon parent has no other status to give).
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Callable

from twisted.application import internet
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from ..logfields import socket_reason

#: exit status of a configuration error, bad endpoint strings included (sysexits.h EX_CONFIG)
CONFIG_ERROR_STATUS = getattr(os, "EX_CONFIG", 78)
#: exit status when a well-formed endpoint cannot be listened on (sysexits.h EX_UNAVAILABLE):
#: unlike a configuration error, systemd retries it (the port may be free a moment later)
LISTEN_ERROR_STATUS = getattr(os, "EX_UNAVAILABLE", 69)


class StartupError(Exception):
    """An operator's mistake found at start-up: :attr:`message` is the whole line (without the
    role prefix), :attr:`status` the exit status."""

    def __init__(self, message: str, status: int = LISTEN_ERROR_STATUS) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class StartFailed(Exception):
    """Raised to a daemonizing twistd, whose parent prints the first 100 bytes of
    ``"1 " + traceback.format_exception_only(...)``: a builtins-like name keeps the line short
    (``StartFailed: cannot listen on tcp:...``)."""

    __module__ = "builtins"


def _parse_reason(exc: Exception) -> str:
    text = str(exc)
    if text.startswith("Unknown endpoint type"):
        kind = text.rpartition(":")[2].strip()
        return f"unknown endpoint type {kind} (expected e.g. tcp:PORT:interface=ADDR)"
    if text.startswith("invalid literal for int()"):
        return f"{text.rpartition(':')[2].strip()} is not a number"
    if isinstance(exc, TypeError) and "unexpected keyword argument" in text:
        return f"unknown option {text.rpartition(' ')[2]}"
    return text or type(exc).__name__


def server_endpoint(reactor, spec: str):
    """``serverFromString(reactor, spec)``, a malformed *spec* raising :class:`StartupError`.

    :raises StartupError: ``cannot listen on SPEC: reason``, status :data:`CONFIG_ERROR_STATUS`.
    """
    try:
        return serverFromString(reactor, spec)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise StartupError(f"cannot listen on {spec}: {_parse_reason(exc)}", CONFIG_ERROR_STATUS) from None


def client_endpoint(reactor, spec: str):
    """``clientFromString(reactor, spec)``, a malformed *spec* raising :class:`StartupError`.

    :raises StartupError: ``cannot parse endpoint SPEC: reason``, status :data:`CONFIG_ERROR_STATUS`.
    """
    try:
        return clientFromString(reactor, spec)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise StartupError(f"cannot parse endpoint {spec}: {_parse_reason(exc)}", CONFIG_ERROR_STATUS) from None


def listen_failure(spec: str, exc: BaseException) -> StartupError:
    """The :class:`StartupError` for a ``listen`` on *spec* that raised *exc*."""
    if isinstance(exc, OverflowError):  # socket.bind's complaint about tcp:99999 / tcp:-1
        return StartupError(f"cannot listen on {spec}: port out of range 0-65535", CONFIG_ERROR_STATUS)
    if isinstance(exc, CannotListenError):
        return StartupError(f"cannot listen on {spec}: {socket_reason(exc.socketError)}")
    return StartupError(f"cannot listen on {spec}: {socket_reason(exc)}")


class ListeningService(StreamServerEndpointService):
    """A ``StreamServerEndpointService`` for endpoint string *spec* that fails loudly.

    The endpoint is parsed at construction (:func:`server_endpoint`); a ``listen`` failing at
    ``privilegedStartService`` raises :class:`StartupError` instead of being logged and ignored.
    :attr:`port` is the listening port once started (tests read ``port.getHost().port``).
    """

    log = Logger()

    def __init__(self, reactor, spec: str, factory, endpoint=None) -> None:
        # endpoint: *spec* already parsed and wrapped (a [tls] table: bcast_sp4.tap.tls); None: parse it here
        super().__init__(server_endpoint(reactor, spec) if endpoint is None else endpoint, factory)
        self.spec = spec
        self.port = None

    def privilegedStartService(self) -> None:
        self._raiseSynchronously = True
        try:
            super().privilegedStartService()
        except (CannotListenError, OverflowError, OSError) as exc:
            self._waitingForPort = None
            raise listen_failure(self.spec, exc) from None
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port):
        self.port = port
        address = port.getHost()
        self.log.info("listening on {endpoint} ({host} port {port})", endpoint=self.spec,
                      host=getattr(address, "host", "?"), port=getattr(address, "port", "?"))
        return port

    def abandon(self) -> None:
        """Stop listening now (start-up failed elsewhere)."""
        if self.port is not None:
            self.port.stopListening()
            self.port = None

    def stopService(self):
        if self._waitingForPort is None:  # never listened
            Service.stopService(self)
            return None
        return super().stopService()


class UDPListeningService(internet.UDPServer):
    """``internet.UDPServer`` on ``(port, interface)`` whose bind failure is a :class:`StartupError`."""

    def __init__(self, port: int, protocol, interface: str = "", reactor=None, max_packet_size: int = 8192) -> None:
        super().__init__(port, protocol, interface=interface, maxPacketSize=max_packet_size, reactor=reactor)
        self.spec = f"udp:{port}" + (f":interface={interface}" if interface else "")

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except (CannotListenError, OverflowError, OSError) as exc:
            self._port = None
            raise listen_failure(self.spec, exc) from None

    def abandon(self) -> None:
        if self._port is not None:
            self._port.stopListening()
            self._port = None


def _walk(service) -> list:
    found = [service]
    if isinstance(service, MultiService):
        for child in service:
            found.extend(_walk(child))
    return found


class FailFast(MultiService):
    """The top of a plugin's service tree: binds every port first, turns a start-up failure into
    one line on stderr and an exit status (see the module docstring).

    :param role: the plugin's name, first word of the line (``bcast-ecmg``).
    :param reactor: stopped as soon as it runs after a failure.
    :param service: the role's own service tree.
    :param write: where the line goes (by default fd 2: twistd has replaced ``sys.stderr`` by
        then with a proxy into its log).
    :param exit: called with the status once the reactor has stopped (by default the process
        exits with it at interpreter exit, after twistd has removed its pid file).
    :param daemon: twistd daemonized the process: log the line and raise it to twistd instead.
    """

    log = Logger()

    def __init__(self, role: str, reactor, service: IService, write: Callable[[str], None] | None = None,
                 exit: Callable[[int], None] | None = None, daemon: bool = False) -> None:
        super().__init__()
        self.role = role
        self.daemon = daemon
        self.reactor = reactor
        self.failure: StartupError | None = None
        self._write = write or _write_stderr
        self._exit = exit or _exit_at_interpreter_exit
        self._privileged = False
        service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        self._privileged = True
        try:
            super().privilegedStartService()
        except (StartupError, CannotListenError) as exc:
            self._fail(exc)
            if self.daemon and self.failure is not None:
                raise StartFailed(self.failure.message) from None

    def startService(self) -> None:
        if not self._privileged:  # `twist` and tests call startService alone: bind first anyway
            self.privilegedStartService()
        if self.failure is not None:
            Service.startService(self)
            return
        try:
            super().startService()
        except (StartupError, CannotListenError) as exc:
            self._fail(exc)

    def stopService(self):
        if self.failure is None:
            return super().stopService()
        Service.stopService(self)
        started = [s for s in _walk(self)[1:] if s.running and not isinstance(s, MultiService)]
        return gatherResults([maybeDeferred(s.stopService) for s in reversed(started)], consumeErrors=True).addErrback(
            lambda _: None)

    def _fail(self, exc: Exception) -> None:
        if self.failure is not None:
            return
        if isinstance(exc, CannotListenError):
            # TCP servers listen through ListeningService: a bare CannotListenError is a role's own UDP port
            where = f"udp:{exc.port}" + (f":interface={exc.interface}" if exc.interface else "")
            exc = StartupError(f"cannot listen on {where}: {socket_reason(exc.socketError)}")
        self.failure = exc
        for service in _walk(self):
            if isinstance(service, (ListeningService, UDPListeningService)):
                service.abandon()
        if self.daemon:  # stderr is /dev/null: the log, and twistd's status pipe (privilegedStartService)
            self.log.critical("{role}: {message}", role=self.role, message=exc.message, status=exc.status)
            return
        # Not logged as well: `twist` logs to stderr, where the line would then appear twice.
        self._write(f"{self.role}: {exc.message}\n")
        self._exit(exc.status)
        if self.reactor.running:
            self.reactor.callLater(0, self.reactor.stop)
        else:
            self.reactor.callWhenRunning(self.reactor.stop)


def _write_stderr(line: str) -> None:
    sys.stdout.flush()
    os.write(2, line.encode("utf-8", "replace"))


def _exit_at_interpreter_exit(status: int) -> None:
    def leave() -> None:
        try:
            sys.stdout.flush()
        except Exception:
            pass
        os._exit(status)

    atexit.register(leave)


def build_or_fail(role: str, build: Callable[[], IService], write: Callable[[str], None] | None = None) -> IService:
    """``build()``; a :class:`StartupError` there (a malformed endpoint) ends the process with its line."""
    try:
        return build()
    except StartupError as exc:
        (write or _write_stderr)(f"{role}: {exc.message}\n")
        raise SystemExit(exc.status) from None


__all__ = [
    "CONFIG_ERROR_STATUS", "FailFast", "StartFailed", "LISTEN_ERROR_STATUS", "ListeningService", "StartupError",
    "UDPListeningService", "build_or_fail", "client_endpoint", "listen_failure", "server_endpoint", "socket_reason",
]
