"""Running bcast-sp4 as a head-end service: fail-fast start-up, Prometheus metrics, the status page,
operator logs (issue #12).

* :mod:`.startup` — listening services that turn an unusable endpoint into one line and an exit
  status, and :class:`~.startup.FailFast`, the top of every plugin's service tree;
* :mod:`.metrics` — a per-process Prometheus registry whose collectors read the roles' own
  counters at scrape time;
* :mod:`.status` — the ``/status.json`` document built from the session manager's registry;
* :mod:`.web` — the HTTP site (``/metrics``, ``/status.json``, ``/``);
* :mod:`.logging` — ``--log-level`` / ``--log-format text|json`` observers and key redaction.

This package sits beside ``tap/``: it may import ``roles``, ``session`` and below, never ``tap``.
"""
