"""Readable reconnection logs for the client roles (issue #12, item 4).

Twisted's ``ClientService`` logs ``Scheduling retry 5 to connect <...Endpoint object at 0x...> in
0.7790344273469715 seconds`` per attempt, never the address or the reason.
:class:`ReportingClientService` logs instead, once per attempt,

    ``ECMG tcp:host=127.0.0.1:port=2222 unreachable (connection refused), retry in 0.8 s``

(or ``... connection lost (...)``, after an established connection went away) and counts
connections, reconnects and peer losses in the process's metrics.
"""

from __future__ import annotations

from typing import Callable

from twisted.application.internet import ClientService
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..logfields import socket_reason


def failure_reason(failure: Failure) -> str:
    """``connection refused``, ``timeout``, ``no route to host``...: a short reason for *failure*."""
    exc = failure.value
    if isinstance(exc, ierror.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (ierror.TimeoutError, ierror.TCPTimedOutError)):
        return "timeout"
    if isinstance(exc, ierror.DNSLookupError):
        return "host name not found"
    if isinstance(exc, ierror.ConnectionDone):
        return "closed by the peer"
    if isinstance(exc, ierror.ConnectionLost):
        return "connection lost"
    os_error = getattr(exc, "osError", None) or (exc if isinstance(exc, OSError) else None)
    if os_error is not None and getattr(os_error, "errno", None):
        return socket_reason(os_error)
    text = str(exc).strip().rstrip(".")
    return text or type(exc).__name__


class _ReportingEndpoint:
    """Wraps the service's endpoint to learn why each attempt failed."""

    def __init__(self, endpoint, owner: "ReportingClientService") -> None:
        self.endpoint = endpoint
        self.owner = owner

    def connect(self, factory) -> Deferred:
        d = self.endpoint.connect(factory)

        def connected(protocol):
            self.owner._connected()
            return protocol

        def failed(failure: Failure):
            self.owner._reason = f"unreachable ({failure_reason(failure)})"
            return failure

        return d.addCallbacks(connected, failed)

    def __repr__(self) -> str:
        return self.owner.describe()


def _silent(event) -> None:
    pass


class ReportingClientService(ClientService):
    """A ``ClientService`` whose per-attempt log line names the peer, the reason and the delay.

    :param what: the peer's kind for the log (``ECMG``, ``MUX``).
    :param describe: ``() -> str``: the endpoint string(s) tried (e.g. the failover pair).
    :param endpoint: the client endpoint.
    :param retry_policy: ``attempt -> seconds``.
    :param metrics: the process's metrics (``count(family, labels)``: connections, reconnects,
        losses; :class:`bcast_sp4.ops.metrics.Metrics`), or ``None``.
    :param role: the ``role`` label of those metrics.
    """

    log = Logger()
    #: ClientService's own per-attempt line is replaced by ours (see the module docstring)
    _log = Logger(observer=_silent)

    def __init__(self, what: str, describe: Callable[[], str], endpoint, factory, retry_policy: Callable[[int], float],
                 clock, prepareConnection=None, metrics=None, role: str = "") -> None:
        self.what = what
        self.describe = describe
        self.metrics = metrics
        self.role = role
        self._reason = "unreachable"
        self._connections = 0
        self._policy = retry_policy
        super().__init__(_ReportingEndpoint(endpoint, self), factory, retryPolicy=self._retry, clock=clock,
                         prepareConnection=prepareConnection)

    def _connected(self) -> None:
        self._connections += 1
        if self.metrics is not None:
            self.metrics.count("connections_total", (self.role,))
            if self._connections > 1:
                self.metrics.count("reconnects_total", (self.role,))
        if self._connections > 1:
            self.log.info("{what} {endpoint} connected again", what=self.what, endpoint=self.describe())
        self._reason = "connection lost"

    def _retry(self, attempt: int) -> float:
        delay = self._policy(attempt)
        if self._reason == "connection lost" and self.metrics is not None:
            self.metrics.count("peer_losses_total", (self.role,))
        self.log.info("{what} {endpoint} {reason}, retry in {delay_s} s", what=self.what, endpoint=self.describe(),
                      reason=self._reason, delay_s=f"{delay:.1f}", attempt=attempt)
        self._reason = "unreachable"
        return delay


__all__ = ["ReportingClientService", "failure_reason"]
