"""``twistd bcast-ecmg``: the ECMG / STKM generator (OMA BCAST SP-4 over ECMG<=>SCS).

``twistd -n bcast-ecmg --config etc/ecmg.toml [--endpoint tcp:2222:interface=127.0.0.1]``
"""

from __future__ import annotations

import attrs
from twisted.application.service import MultiService
from twisted.logger import Logger

from ..bcast.ecm import STKMSource
from ..bcast.stkm_drm import LAYOUT_VERSION
from ..config import ECMGSettings, load_ecmg_settings, load_keyfile
from ..machines.ecmg import ECMGResources
from ..roles.ecmg_server import ECMGFactory
from ..ops.startup import FailFast, ListeningService, build_or_fail
from ..roles.gc_tuning import freeze_long_lived
from ..roles.guard import ConnectionGuard
from ..session import SessionManager
from ._options import RoleOptions
from .tls import check_override
from .tls import server_endpoint as tls_server_endpoint

log = Logger()


class Options(RoleOptions):
    tapname = "bcast-ecmg"
    default_config = "etc/ecmg.toml"
    synopsis = "--config FILE [--endpoint ENDPOINT]"
    longdesc = (
        "Run an ECMG / BCAST STKM generator: SCSs connect over TCP (ECMG<=>SCS, TS 103 197 §5, versions 1-3), "
        "send TEKs in CW_provision and get back STKMs in ECM_response: DRM Profile STKMs for Super_CAS_id "
        f"0x0001xxxx (provisional layout {LAYOUT_VERSION}), Smartcard Profile MIKEY STKMs for 0x0002xxxx, "
        "DVB ECM sections for other configured ids."
    )
    optParameters = [
        ["config", "c", default_config, "ECMG configuration file (TOML; a default not in the working directory "
                                       "is taken from the package's etc/)"],
        ["endpoint", "e", None, "listening endpoint, overriding the file (e.g. tcp:2222:interface=127.0.0.1)"],
    ]

    def postOptions(self) -> None:
        settings = self.load(load_ecmg_settings)
        self["key_store"] = self.checked(load_keyfile, settings.key_file)
        if self["endpoint"]:
            check_override("endpoint", self["endpoint"], settings.tls)
            settings = attrs.evolve(settings, endpoint=self["endpoint"])
        self["settings"] = settings


def build_service(settings: ECMGSettings, key_store, reactor, session=None, ops=None) -> MultiService:
    """The ECMG service tree for *settings* on *reactor* (tests pass a fake reactor).

    :param session: the process's :class:`~bcast_sp4.session.SessionManager` (the lab's), or ``None``.
    :param ops: the process's :class:`~bcast_sp4.ops.runtime.Operations` (metrics, key log), or ``None``.
    """
    resources = ECMGResources(settings.ecmg)
    source = STKMSource(key_store, settings.ecmg.cas_modes, settings.dvb_keys, settings.cw_encryption_keys)
    guard = ConnectionGuard(settings.limits, reactor, role="ECMG", server=True)
    factory = ECMGFactory(resources, source, reactor, settings.max_message_length, session, settings.endpoint, guard,
                          meter=None if ops is None else ops.meter)
    if ops is not None:
        ops.metrics.watch_ecmg(source)
        ops.keys.key_store(key_store)
        for key_id, key in settings.cw_encryption_keys.items():
            ops.keys.key("CW_encryption key", key, key_id=key_id)
        for super_cas_id, key in settings.dvb_keys.items():
            ops.keys.key("DVB test-ECM key", key, super_cas_id=super_cas_id)
    top = MultiService()
    guard.setServiceParent(top)
    server = ListeningService(reactor, settings.endpoint, factory,
                              endpoint=tls_server_endpoint(reactor, settings.endpoint, settings.tls))
    server.setServiceParent(top)
    top.factory = factory  # for tests and the lab
    top.endpoint_service = server
    log.info(
        "ECMG on {endpoint}: Super_CAS_ids {ids}, DRM STKM layout {layout}",
        endpoint=settings.endpoint,
        ids=", ".join(f"{k:#010x}={v.value}" for k, v in settings.ecmg.cas_modes.items()),
        layout=LAYOUT_VERSION,
    )
    return top


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    settings = options["settings"]
    ops = options.operations(reactor, settings.metrics)
    session = SessionManager(reactor)
    ops.watch_session(session)
    service = build_or_fail(options.tapname, lambda: ops.attached(
        build_service(settings, options["key_store"], reactor, session, ops)))
    # The key store and configuration live as long as the process: move them out of the cyclic
    # GC's sight, so full collections stay short (with 60,000 streams they cost tens of ms).
    # Per-STKM objects hold no reference cycles (reference counting frees them), so young
    # collections find nothing: make them 20x rarer (each stays well under a millisecond).
    freeze_long_lived(young_threshold=14_000)
    return FailFast(options.tapname, reactor, service, daemon=options.daemonized())


__all__ = ["Options", "build_service", "makeService"]
