"""The metrics / status endpoint over real HTTP on 127.0.0.1 (port 0, read back), fed by a real
SessionManager and real role counters; and the Metrics hooks on their own."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from bcast_sp4.media.scrambler import ScramblerStats
from bcast_sp4.ops.metrics import Metrics
from bcast_sp4.ops.status import StatusBoard
from bcast_sp4.ops.web import OpsWebService
from bcast_sp4.session import SessionManager
from bcast_sp4.wire import ecmg_scs


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


class MetricsHooks(SynchronousTestCase):
    def test_messages_errors_and_latency(self):
        clock = Clock()
        metrics = Metrics("bcast-ecmg", clock)
        setup = ecmg_scs.ChannelSetup(ECM_channel_id=1, Super_CAS_id=0x00020001)
        metrics.message_received("ecmg", "127.0.0.1:4000", setup, 9.0)
        cw = ecmg_scs.CWProvision(ECM_channel_id=1, ECM_stream_id=2, CP_number=7, CP_CW_combination=[(7, bytes(16))])
        metrics.message_received("ecmg", "127.0.0.1:4000", cw, 10.0)
        response = ecmg_scs.ECMResponse(ECM_channel_id=1, ECM_stream_id=2, CP_number=7, ECM_datagram=b"x")
        metrics.message_sent("ecmg", "127.0.0.1:4000", response, 10.004)
        error = ecmg_scs.StreamError(ECM_channel_id=1, ECM_stream_id=3, error_status=(0x0007,))
        metrics.message_sent("ecmg", "127.0.0.1:4000", error, 10.005)
        from prometheus_client import generate_latest

        text = generate_latest(metrics.registry).decode()
        labels = {"role": "ecmg", "interface": "ECMG<=>SCS"}
        self.assertEqual(_sample(text, "bcast_sp4_messages_received_total", **labels, message_type="CW_provision"), 1)
        self.assertEqual(_sample(text, "bcast_sp4_messages_sent_total", **labels, message_type="ECM_response"), 1)
        self.assertEqual(_sample(text, "bcast_sp4_errors_sent_total", **labels, error_status="0x0007"), 1)
        self.assertEqual(_sample(text, "bcast_sp4_ecm_response_latency_seconds_count", role="ecmg",
                                 super_CAS_id="0x00020001"), 1)
        self.assertEqual(_sample(text, "bcast_sp4_ecm_response_latency_seconds_bucket", role="ecmg",
                                 super_CAS_id="0x00020001", le="0.005"), 1)
        self.assertEqual(_sample(text, "bcast_sp4_ecm_response_latency_seconds_bucket", role="ecmg",
                                 super_CAS_id="0x00020001", le="0.002"), 0)

    def test_connections_and_peer_losses_of_a_server(self):
        metrics = Metrics("bcast-ecmg", Clock())
        metrics.connection_made("ecmg")
        metrics.connection_made("ecmg")
        metrics.observe("ecmg", "127.0.0.1:4000", "channel_closed", {"channel_id": 1, "why": "connection_lost"})
        metrics.observe("ecmg", "127.0.0.1:4001", "channel_closed", {"channel_id": 2, "why": "channel_close"})
        snapshot = metrics.snapshot()
        self.assertEqual((snapshot["connections_total"], snapshot["peer_losses_total"]), ({("ecmg",): 2}, {("ecmg",): 1}))

    def test_two_metrics_objects_do_not_share_a_registry(self):
        a, b = Metrics("bcast-lab", Clock()), Metrics("bcast-lab", Clock())
        a.count("connections_total", ("scs",), 3)
        from prometheus_client import generate_latest

        self.assertEqual(_sample(generate_latest(a.registry).decode(), "bcast_sp4_connections_total", role="scs"), 3)
        self.assertIsNone(_sample(generate_latest(b.registry).decode(), "bcast_sp4_connections_total", role="scs"))


class _Scrambler:
    def __init__(self):
        self.stats = ScramblerStats(received=5, sent=4, dropped_no_key=1, switches=2)
        self.switches = []
        self.current_cp = 9


class Endpoint(TestCase):
    timeout = 60

    async def test_metrics_and_status_over_http(self):  # trial runs a coroutine test as a Deferred
        session = SessionManager(reactor)
        metrics, board = Metrics("bcast-test", reactor), StatusBoard("bcast-test", reactor)
        for watcher in (metrics, board):
            watcher.watch_session(session)
            session.add_observer(watcher.observe)
        metrics.watch_scs(lambda: {}, {"tv1": _Scrambler()})
        session.observe("ECMG<=>SCS:ECMGProtocol", "127.0.0.1:4000", "channel_open",
                        {"channel_id": 1, "super_cas_id": 0x00010001, "mode": "drm-profile"})
        session.observe("ECMG<=>SCS:ECMGProtocol", "127.0.0.1:4000", "stream_open",
                        {"channel_id": 1, "stream_id": 2, "ecm_id": 0x0102})
        hostile = "<img src=x onerror=alert(1)>"
        session.observe("ECMG<=>SCS:ECMGProtocol", hostile, "peer_error", {"error_status": [0x7000]})
        session.stkm_ready(0x00010001, 0x0102, 42, b"\x01" * 20)
        service = OpsWebService(reactor, "tcp:0:interface=127.0.0.1", metrics, board)
        service.startService()
        self.addCleanup(service.stopService)
        await service._waitingForPort
        base = f"http://127.0.0.1:{service.port.getHost().port}"
        agent = Agent(reactor)

        async def get(path: str) -> tuple[int, dict, bytes]:
            response = await agent.request(b"GET", (base + path).encode())
            body = await readBody(response)
            return response.code, dict(response.headers.getAllRawHeaders()), body

        code, _headers, body = await get("/metrics")
        text = body.decode()
        self.assertEqual(code, 200)
        self.assertEqual(_sample(text, "bcast_sp4_channels_open", role="ecmg", interface="ECMG<=>SCS"), 1)
        self.assertEqual(_sample(text, "bcast_sp4_streams_open", role="ecmg", interface="ECMG<=>SCS"), 1)
        self.assertEqual(_sample(text, "bcast_sp4_tek_switches_total", role="scs", service="tv1"), 2)
        self.assertEqual(_sample(text, "bcast_sp4_scrambler_packets_total", role="scs", service="tv1",
                                 outcome="dropped_no_key"), 1)

        code, headers, body = await get("/status.json")
        doc = json.loads(body)
        self.assertEqual(headers[b"Content-Type"], [b"application/json"])
        self.assertEqual(doc["channels"], [{"role": "ecmg", "interface": "ECMG<=>SCS", "peer": "127.0.0.1:4000",
                                            "channel_id": 1, "super_cas_id": "0x00010001", "mode": "drm-profile"}])
        self.assertEqual(doc["streams"][0]["ecm_id"], "0x0102")
        self.assertEqual(doc["stkms"][0]["last_CP_number"], 42)
        self.assertEqual(doc["stkms"][0]["ECM_id"], "0x0102")
        self.assertTrue(doc["stkms"][0]["last_stkm_time"].endswith("Z"))
        self.assertEqual(doc["peer_errors"][0]["peer"], hostile)
        self.assertEqual(doc["peer_errors"][0]["error_status"], ["0x7000"])
        self.assertNotIn("0101010101", body.decode())  # STKM bytes never shown

        code, headers, body = await get("/")
        self.assertEqual(code, 200)
        self.assertIn(b"textContent", body)
        self.assertNotIn(b"innerHTML", body)
        self.assertNotIn(b"http://", body.replace(b'"http://www.w3.org', b""))  # self-contained: no CDN


def test_stkms_generated_by_profile_are_read_from_the_source():
    from prometheus_client import generate_latest

    from tests.bcast.test_bcast_ecm_source import CARD, DRM, DVB, make_source, refused, request

    source = make_source()
    metrics = Metrics("bcast-ecmg", Clock())
    metrics.watch_ecmg(source)
    for scid in (DRM, DRM, CARD, DVB):
        source.generate(request(scid))
    refused(source, request(DRM, cws=[(11, bytes(3))]))  # a refusal is no STKM
    text = generate_latest(metrics.registry).decode()
    counts = {p: _sample(text, "bcast_sp4_stkms_generated_total", role="ecmg", profile=p) for p in ("drm", "smartcard", "dvb")}
    assert counts == {"drm": 2, "smartcard": 1, "dvb": 1}
