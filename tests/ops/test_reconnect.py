"""One readable line per reconnection attempt, with the endpoint, the reason and the delay."""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.defer import fail, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from bcast_sp4.ops.metrics import Metrics
from bcast_sp4.roles.reconnect import ReportingClientService


class ScriptedEndpoint:
    """Fails with the scripted errors, then connects (a real protocol on a StringTransport)."""

    def __init__(self, errors):
        self.errors = list(errors)
        self.protocols = []

    def connect(self, factory):
        if self.errors:
            return fail(self.errors.pop(0))
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return succeed(protocol)


def test_each_attempt_logs_one_line_and_the_metrics_count_connections():
    clock = Clock()
    metrics = Metrics("bcast-scs", clock)
    endpoint = ScriptedEndpoint([error.ConnectionRefusedError("refused"), error.TimeoutError()])
    service = ReportingClientService("ECMG", lambda: "tcp:host=127.0.0.1:port=2222", endpoint,
                                     Factory.forProtocol(Protocol), lambda attempt: 0.8 * attempt, clock,
                                     metrics=metrics, role="scs")
    with capturedLogs() as events:
        service.startService()
        clock.advance(0.8)
        clock.advance(1.6)
        endpoint.protocols[0].transport.loseConnection()
        endpoint.protocols[0].connectionLost(error.ConnectionLost())
        clock.advance(0.8)
        service.stopService()
    lines = [e["log_format"].format(**{k: v for k, v in e.items() if not k.startswith("log_")})
             for e in events if e.get("log_namespace", "").startswith("bcast_sp4")]
    assert lines == [
        "ECMG tcp:host=127.0.0.1:port=2222 unreachable (connection refused), retry in 0.8 s",
        "ECMG tcp:host=127.0.0.1:port=2222 unreachable (timeout), retry in 1.6 s",
        "ECMG tcp:host=127.0.0.1:port=2222 connection lost, retry in 0.8 s",
        "ECMG tcp:host=127.0.0.1:port=2222 connected again",
    ]
    assert not [e for e in events if "Scheduling retry" in e.get("log_format", "")]
    snapshot = metrics.snapshot()
    assert snapshot["connections_total"] == {("scs",): 2}
    assert snapshot["reconnects_total"] == {("scs",): 1}
    assert snapshot["peer_losses_total"] == {("scs",): 1}
