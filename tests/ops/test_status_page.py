"""The status page in a real browser (Debian chromium, headless) against a real endpoint: it
renders status.json, and a hostile value from the network stays text."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from bcast_sp4.ops.metrics import Metrics
from bcast_sp4.ops.status import StatusBoard
from bcast_sp4.ops.web import OpsWebService
from bcast_sp4.session import SessionManager

from .browser import argv

HOSTILE = '<img src=x onerror="document.title=\'pwned\'">'


class StatusPageInChromium(TestCase):
    timeout = 180

    async def test_page_renders_live_status_and_escapes_values(self):  # trial runs a coroutine test as a Deferred
        session = SessionManager(reactor)
        metrics, board = Metrics("bcast-test", reactor), StatusBoard("bcast-test", reactor)
        board.watch_session(session)
        session.add_observer(board.observe)
        session.observe("ecmg", "127.0.0.1:40000", "channel_open", {"channel_id": 5, "super_cas_id": 0x00010001})
        session.observe("ecmg", "127.0.0.1:40000", "stream_open", {"channel_id": 5, "stream_id": 9, "ecm_id": 0x0203})
        session.observe("scs", HOSTILE, "peer_error", {"error_status": [0x7000]})
        session.stkm_ready(0x00010001, 0x0203, 4242, b"\x00" * 8)
        service = OpsWebService(reactor, "tcp:0:interface=127.0.0.1", metrics, board)
        service.startService()
        self.addCleanup(service.stopService)
        await service._waitingForPort
        url = f"http://127.0.0.1:{service.port.getHost().port}/"
        # chromium's profile and HOME in a temporary folder outside the checkout, removed afterwards
        scratch = tempfile.mkdtemp(prefix="bcast-sp4-chromium-")
        self.addCleanup(shutil.rmtree, scratch, True)
        args = argv(url, Path(scratch) / "profile")
        out, err, code = await getProcessOutputAndValue(args[0], args[1:], env={"HOME": scratch})
        dom = out.decode()
        self.assertEqual(code, 0, err.decode()[-2000:])
        self.assertIn("bcast-test status", dom)  # the title set by the script from status.json
        self.assertRegex(dom, r"as of \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
        for value in ("0x00010001", "0x0203", "4242", "127.0.0.1:40000", "0x7000"):
            self.assertIn(f">{value}<", dom)
        self.assertIn("&lt;img src=x onerror=", dom)  # shown as text ...
        self.assertIsNone(re.search(r"<img\b", dom))  # ... never parsed as an element
        self.assertIn("<title>bcast-sp4 status</title>", dom)  # the onerror handler never ran
