"""The operator's HTTP endpoint of a role (issue #12, items 2 and 3), served by the role's reactor.

``/metrics`` is ``prometheus_client.twisted.MetricsResource`` over the process's own registry;
``/status.json`` the :class:`~bcast_sp4.ops.status.StatusBoard` document; ``/`` a small
self-contained page (no CDN, no build step) that fetches ``status.json`` every 2 s and renders
it with ``textContent`` only, so no value from the network is ever parsed as HTML.
"""

from __future__ import annotations

import json

from prometheus_client.twisted import MetricsResource
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Site

from .startup import ListeningService

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>bcast-sp4 status</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
h2 { font-size: 1.05em; margin: 1.2em 0 .3em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: .15em .5em; text-align: left; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
#state { color: #666; }
.stale { color: #b00; }
</style>
</head>
<body>
<h1 id="title">bcast-sp4</h1>
<div id="state">loading status.json ...</div>
<div id="sections"></div>
<script>
"use strict";
// Every value is set with textContent: nothing from status.json is parsed as HTML.
function cell(row, tag, text) {
  const c = document.createElement(tag);
  c.textContent = text === null || text === undefined ? "" :
    Array.isArray(text) ? text.join(", ") : (typeof text === "object" ? JSON.stringify(text) : String(text));
  row.appendChild(c);
}
function table(title, rows) {
  const box = document.createElement("section");
  const h = document.createElement("h2");
  h.textContent = title + " (" + rows.length + ")";
  box.appendChild(h);
  if (!rows.length) return box;
  const keys = [];
  rows.forEach(r => Object.keys(r).forEach(k => { if (!keys.includes(k)) keys.push(k); }));
  const t = document.createElement("table");
  const head = document.createElement("tr");
  keys.forEach(k => cell(head, "th", k));
  t.appendChild(head);
  rows.forEach(r => { const tr = document.createElement("tr"); keys.forEach(k => cell(tr, "td", r[k])); t.appendChild(tr); });
  box.appendChild(t);
  return box;
}
function render(doc) {
  document.getElementById("title").textContent = doc.role + " status";
  const state = document.getElementById("state");
  state.className = "";
  state.textContent = "as of " + doc.time + " (up " + Math.round(doc.uptime_seconds) + " s)";
  const sections = document.getElementById("sections");
  const boxes = [];
  Object.keys(doc).forEach(name => {
    const value = doc[name];
    if (Array.isArray(value)) boxes.push(table(name, value));
    else if (value && typeof value === "object") boxes.push(table(name, [value]));
  });
  sections.replaceChildren(...boxes);
}
function refresh() {
  fetch("status.json", {cache: "no-store"})
    .then(r => { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
    .then(render)
    .catch(e => { const s = document.getElementById("state"); s.className = "stale"; s.textContent = "status.json: " + e; });
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""


class StatusResource(Resource):
    """``/status.json``: the status board's document, built per request."""

    isLeaf = True

    def __init__(self, board) -> None:
        super().__init__()
        self.board = board

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self.board.document(), indent=1).encode()


class PageResource(Resource):
    """``/``: the status page."""

    isLeaf = True

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", b"default-src 'self'; script-src 'unsafe-inline'; "
                                                      b"style-src 'unsafe-inline'")
        return PAGE.encode()


class _Root(Resource):
    def __init__(self, page: Resource) -> None:
        super().__init__()
        self.page = page

    def getChild(self, path: bytes, request):
        if path in (b"", b"index.html"):
            return self.page
        return notFound()


def make_site(metrics, board) -> Site:
    """The ``twisted.web`` site of *metrics* (``/metrics``) and *board* (``/status.json``, ``/``)."""
    root = _Root(PageResource())
    root.putChild(b"metrics", MetricsResource(registry=metrics.registry))
    root.putChild(b"status.json", StatusResource(board))
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # no access log line per scrape
    return site


class OpsWebService(ListeningService):
    """The HTTP endpoint at endpoint string *spec* (``tcp:9100:interface=127.0.0.1``); fails fast."""

    log = Logger()

    def __init__(self, reactor, spec: str, metrics, board) -> None:
        super().__init__(reactor, spec, make_site(metrics, board))
        self.role = metrics.role

    def _listening(self, port):
        self.port = port
        host = port.getHost()
        self.log.info("metrics on http://{host}:{port}/metrics, status on http://{host}:{port}/",
                      role=self.role, host=host.host, port=host.port)
        return port


__all__ = ["OpsWebService", "PAGE", "make_site"]
