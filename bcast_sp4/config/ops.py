"""The ``[metrics]`` table every role file and the lab file may carry (issue #12). Pure."""

from __future__ import annotations

from ._reader import Reader


def read_metrics(root: Reader) -> str | None:
    """``[metrics] endpoint``: the Twisted server endpoint string of the role's HTTP endpoint
    (``/metrics``, ``/status.json``, ``/``), or ``None`` when absent or empty (no endpoint).
    The string is parsed when the role starts (a bad one stops it with one line)."""
    table = root.sub("metrics")
    endpoint = table.string("endpoint", "")
    table.no_unknown_keys()
    return endpoint or None


__all__ = ["read_metrics"]
