"""``twistd bcast-emmg``: the EMMG / BCAST LTKM generator (OMA BCAST SP-4 over EMMG/PDG<=>MUX).

``twistd -n bcast-emmg --config etc/emmg.toml [--connect tcp:host=127.0.0.1:port=5000] [--transport udp]``
"""

from __future__ import annotations

import attrs
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from ..bcast.ltkm_drm import LAYOUT_VERSION
from ..config import EMMGSettings, load_emmg_settings
from ..ops.startup import FailFast, build_or_fail
from ..roles.emmg_client import EMMGService
from ..roles.guard import ConnectionGuard
from ..session import SessionManager
from ._options import RoleOptions
from .tls import check_override
from .tls import client_endpoint as tls_client_endpoint

log = Logger()


class Options(RoleOptions):
    tapname = "bcast-emmg"
    default_config = "etc/emmg.toml"
    synopsis = "--config FILE [--connect ENDPOINT] [--transport tcp|udp]"
    longdesc = (
        "Run an EMMG / BCAST LTKM generator: connects to a MUX (EMMG/PDG<=>MUX, TS 103 197 §6), sets up a "
        "channel (section_TSpkt_flag 0x02) and one stream per data_id (data_type 0x00), asks for bandwidth "
        "and sends DRM Profile LTKMs over TCP or UDP, never above the allocation. LTKMs come from a subscriber "
        f"file (PROVISIONAL layout {LAYOUT_VERSION}) and from a spool directory of ready-made files."
    )
    optParameters = [
        ["config", "c", default_config, "EMMG configuration file (TOML; a default not in the working directory "
                                       "is taken from the package's etc/)"],
        ["connect", "C", None, "MUX endpoint, overriding the file (e.g. tcp:host=127.0.0.1:port=5000)"],
        ["transport", "t", None, "data_provision transport, overriding the file: tcp or udp"],
    ]

    def postOptions(self) -> None:
        settings = self.load(load_emmg_settings)
        if self["connect"]:
            check_override("connect", self["connect"], settings.tls)
            settings = attrs.evolve(settings, connect=self["connect"])
        if self["transport"]:
            if self["transport"] not in ("tcp", "udp"):
                raise usage.UsageError("--transport must be tcp or udp")
            udp = self["transport"] == "udp"
            if udp and settings.mux_udp is None:
                raise usage.UsageError("--transport udp needs mux_udp in the configuration file")
            settings = attrs.evolve(settings, emmg=attrs.evolve(settings.emmg, udp=udp))
        self["settings"] = settings


def build_service(settings: EMMGSettings, reactor, session=None, ops=None) -> MultiService:
    """The EMMG service tree for *settings* on *reactor* (tests pass a fake reactor).

    :param session: the process's :class:`~bcast_sp4.session.SessionManager` (the lab's), or ``None``.
    :param ops: the process's :class:`~bcast_sp4.ops.runtime.Operations` (metrics, key log), or ``None``.
    """
    top = MultiService()
    guard = ConnectionGuard(settings.limits, reactor, role="EMMG", server=False)
    guard.setServiceParent(top)
    endpoint = tls_client_endpoint(reactor, settings.connect, settings.tls)  # a bad string: StartupError
    service = EMMGService(settings, reactor, session=session, guard=guard, endpoint=endpoint,
                          meter=None if ops is None else ops.meter)
    if ops is not None:
        ops.metrics.watch_emmg(service.counters)
        for sources in settings.sources.values():
            if sources.subscribers is not None:
                ops.keys.subscribers(sources.subscribers)
    service.setServiceParent(top)
    top.emmg = service  # for tests and the lab
    log.info(
        "EMMG client_id {client_id:#010x}, streams {streams}, LTKM layout {layout}",
        client_id=settings.emmg.client_id,
        streams=", ".join(f"data_id {s.data_id} @ {s.bandwidth} kbit/s" for s in settings.emmg.streams),
        layout=LAYOUT_VERSION,
    )
    return top


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    settings = options["settings"]
    ops = options.operations(reactor, settings.metrics)
    session = SessionManager(reactor)
    ops.watch_session(session)
    service = build_or_fail(options.tapname, lambda: ops.attached(build_service(settings, reactor, session, ops)))
    return FailFast(options.tapname, reactor, service, daemon=options.daemonized())


__all__ = ["Options", "build_service", "makeService"]
