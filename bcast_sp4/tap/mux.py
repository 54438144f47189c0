"""``twistd bcast-mux``: the MUX (LTKM and STKM play-out over EMMG/PDG<=>MUX, OMA BCAST SP-4).

``twistd -n bcast-mux --config etc/mux.toml [--endpoint tcp:5000:interface=127.0.0.1] [--udp udp:5000]``
"""

from __future__ import annotations

import attrs
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from ..config import MuxSettings, load_mux_settings, parse_udp_listen
from ..machines.mux import MuxCore
from ..ops.startup import FailFast, ListeningService, UDPListeningService, build_or_fail
from ..ops.status import mux_routes
from ..roles.guard import ConnectionGuard
from ..roles.mux_server import MuxServer
from ..roles.udp_batch import listen_udp_batch
from ..session import SessionManager
from ._options import RoleOptions
from .tls import check_override
from .tls import server_endpoint as tls_server_endpoint

log = Logger()

#: bytes read per UDP datagram: the largest IPv4 UDP payload fits
UDP_READ_SIZE = 65536


class Options(RoleOptions):
    tapname = "bcast-mux"
    default_config = "etc/mux.toml"
    synopsis = "--config FILE [--endpoint ENDPOINT] [--udp udp:PORT[:interface=ADDR]|off]"
    longdesc = (
        "Run a MUX for OMA BCAST SP-4: LTKM generators (EMMGs) and SCSs connect over TCP (EMMG/PDG<=>MUX, "
        "TS 103 197 §6, versions 2-5), set up streams, get bandwidth and send LTKMs / STKMs over TCP or UDP; "
        "the MUX emits them as UDP datagrams to the destination configured for each data_id / ECM_id: LTKMs "
        "paced at the stream's allocation, the current STKM of each ECM_id repeated at its repetition period."
    )
    optParameters = [
        ["config", "c", default_config, "MUX configuration file (TOML; a default not in the working directory "
                                      "is taken from the package's etc/)"],
        ["endpoint", "e", None, "TCP listening endpoint, overriding the file (e.g. tcp:5000:interface=127.0.0.1)"],
        ["udp", "u", None, "UDP data_provision port, overriding the file: udp:PORT[:interface=ADDR], or 'off'"],
    ]

    def postOptions(self) -> None:
        settings = self.load(load_mux_settings)
        if self["endpoint"]:
            check_override("endpoint", self["endpoint"], settings.tls)
            settings = attrs.evolve(settings, endpoint=self["endpoint"])
        if self["udp"]:
            if self["udp"] == "off":
                settings = attrs.evolve(settings, udp=None)
            else:
                try:
                    settings = attrs.evolve(settings, udp=parse_udp_listen(self["udp"]))
                except ValueError as exc:
                    raise usage.UsageError(f"--udp: {exc}") from None
        self["settings"] = settings


class _BatchUDPListening(UDPListeningService):
    """The MUX's UDP port: every datagram of a reactor wake-up handed over in one batch
    (:func:`~bcast_sp4.roles.udp_batch.listen_udp_batch`), with the start-up checks of its base;
    each wake-up bounded by the guard's *turn_time*, as a TCP connection's turn is; the kernel
    receive buffer asked for is ``[mux] udp_receive_buffer``."""

    def __init__(self, *args, turn_time: float | None = None, receive_buffer: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.turn_time = turn_time
        self.receive_buffer = receive_buffer

    def _getPort(self):
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        return listen_udp_batch(reactor, *self.args, turn_time=self.turn_time, receive_buffer=self.receive_buffer,
                                **self.kwargs)


def build_service(settings: MuxSettings, reactor, session=None, ops=None) -> MultiService:
    """The MUX service tree for *settings* on *reactor* (tests pass a fake reactor).

    :param session: the process's :class:`~bcast_sp4.session.SessionManager` (the lab's), or ``None``.
    :param ops: the process's :class:`~bcast_sp4.ops.runtime.Operations` (metrics, status), or ``None``.
    """
    core = MuxCore(settings.mux)
    guard = ConnectionGuard(settings.limits, reactor, role="MUX", server=True)
    server = MuxServer(core, reactor, interface=settings.egress_interface, max_message_length=settings.max_message_length,
                       session=session, listening_on=settings.endpoint, guard=guard,
                       interface6=settings.egress_interface6, multicast_interface6=settings.ipv6_multicast_interface,
                       meter=None if ops is None else ops.meter)
    if ops is not None:
        ops.metrics.watch_mux(core)
        ops.board.add_section("routes", mux_routes(core))
    top = MultiService()
    guard.setServiceParent(top)
    server.play_out.setServiceParent(top)  # play-out sockets before any input
    tcp = ListeningService(reactor, settings.endpoint, server.factory,
                           endpoint=tls_server_endpoint(reactor, settings.endpoint, settings.tls))
    tcp.setServiceParent(top)
    udp = None
    if settings.udp is not None:
        port, interface = settings.udp
        # Twisted reads 8192 bytes per datagram by default: a longer data_provision would be cut
        udp = _BatchUDPListening(port, server.udp_protocol, interface=interface, reactor=reactor,
                                 max_packet_size=UDP_READ_SIZE, turn_time=settings.limits.turn_time,
                                 receive_buffer=settings.udp_receive_buffer)
        udp.setServiceParent(top)
    top.mux = server  # for tests, the lab and a co-located SCS (server.submit_stkm)
    top.tcp_service = tcp
    top.udp_service = udp
    log.info(
        "MUX on {endpoint}, UDP {udp}: clients {clients}",
        endpoint=settings.endpoint,
        udp="off" if settings.udp is None else f"{settings.udp[1]}:{settings.udp[0]}",
        clients=", ".join(f"{c:#010x}" for c in settings.mux.clients),
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
