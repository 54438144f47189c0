"""``twistd bcast-scs``: the SimulCrypt synchroniser with TEK generator and scrambler (OMA BCAST SP-4).

``twistd -n bcast-scs --config etc/scs.toml``

One ``ClientService`` per ECMG channel (primary endpoint, then the backup), one UDP port per
service's scrambler, the crypto-period schedulers in one :class:`SCSRunner`; STKMs go to the
configured MUX sink. With ``[mux] mode = "remote"`` that sink is a :class:`RemoteMuxSink` (one
EMMG/PDG<=>MUX data channel per super_CAS_id), the first service of the tree: it starts before the
runner can submit and stops after it.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.logger import Logger

from ..config import SCSSettings, load_scs_settings
from ..config.scs import MuxMode
from ..machines.scs_core import SCSCore
from ..ops.status import scs_services
from ..roles.reconnect import ReportingClientService
from ..session import SessionManager
from ..ops.startup import FailFast, UDPListeningService, build_or_fail
from ..roles.scs_client import FailoverEndpoint, SCSClientFactory, SCSRunner, ScramblerProtocol, retry_policy
from ..roles.guard import ConnectionGuard
from ..roles.stkm_link import RemoteMuxSink, link_settings
from ..media.scrambler import Scrambler
from ..roles.stkm_sink import JSONLinesSink, RecordingSink, STKMSink
from ._options import RoleOptions
from ._ordered import SequentialStop
from .tls import client_endpoint as tls_client_endpoint

log = Logger()


class Options(RoleOptions):
    tapname = "bcast-scs"
    default_config = "etc/scs.toml"
    synopsis = "--config FILE"
    longdesc = (
        "Run a SimulCrypt synchroniser (SCS) for OMA BCAST services: connects to ECMGs / STKM generators "
        "(ECMG<=>SCS, TS 103 197 §5), generates a TEK per crypto-period, provisions it, synchronises the "
        "STKMs with their crypto-periods, hands them to the MUX and scrambles each service's UDP content "
        "(SRTP, IPsec ESP or ISMACryp) with the TEK of the period."
    )
    optParameters = [
        ["config", "c", default_config, "SCS configuration file (TOML; a default not in the working directory "
                                        "is taken from the package's etc/)"],
    ]

    def postOptions(self) -> None:
        self["settings"] = self.load(load_scs_settings)


def mux_endpoints(settings: SCSSettings, reactor) -> dict[int, object] | None:
    """With ``[tls]``: the remote MUX link's endpoint per super_CAS_id, in TLS; else ``None``
    (the links make their plain endpoints themselves)."""
    if settings.tls is None:
        return None
    return {scid: tls_client_endpoint(reactor, link.connect, settings.tls) for scid, link in link_settings(settings).items()}


def build_service(settings: SCSSettings, reactor, sink: STKMSink | None = None, tek_factory=None,
                  session=None, autostart: bool = True, ops=None) -> MultiService:
    """The SCS service tree for *settings* on *reactor*.

    :param sink: where STKMs go; by default from ``[mux]`` (an in-process :class:`RecordingSink`
        for ``in-process``, :class:`JSONLinesSink` for ``file``, :class:`RemoteMuxSink` for ``remote``).
    :param tek_factory: ``(service, n) -> material`` instead of the CSPRNG (tests only).
    :param session: the process's :class:`~bcast_sp4.session.SessionManager` (the lab's), or ``None``.
    :param autostart: ``False``: the schedulers start when ``runner.begin()`` is called (the lab).
    :param ops: the process's :class:`~bcast_sp4.ops.runtime.Operations` (metrics, status), or ``None``.
    """
    meter = None if ops is None else ops.meter
    link = None
    guard = ConnectionGuard(settings.limits, reactor, role="SCS", server=False)
    if sink is None:
        if settings.mux.mode is MuxMode.FILE:
            sink = JSONLinesSink(open(settings.mux.path, "a"), reactor.seconds)
        elif settings.mux.mode is MuxMode.REMOTE:
            sink = link = RemoteMuxSink(settings, reactor, session=session, guard=guard,
                                        endpoints=mux_endpoints(settings, reactor))
        else:
            sink = RecordingSink(reactor.seconds, limit=100_000)
    elif isinstance(sink, RemoteMuxSink) and sink.parent is None:
        link = sink
    core = SCSCore(settings.channels, [s.spec for s in settings.services], settings.timing, tek_factory)
    scramblers = {
        s.spec.name: Scrambler(s.spec.name, s.spec.protection, srtp_profile=s.scrambler.srtp_profile,
                               inner_destination=s.scrambler.inner_destination or s.scrambler.output)
        for s in settings.services
    }
    endpoints = {
        c.name: FailoverEndpoint([(e, tls_client_endpoint(reactor, e, settings.tls))
                                  for e in (c.endpoint, c.backup_endpoint) if e])
        for c in settings.channels
    }
    settle = None
    if settings.gc_tuning:  # once every service is past its first switch (see tune_gc)
        settle = settings.timing.start_allowance + max(s.spec.period_seconds for s in settings.services) * 1.5 + 5.0
    runner = SCSRunner(core, reactor, sink, scramblers, settings.max_message_length, endpoints,
                       gc_tuning_after=settle, session=session, autostart=autostart, guard=guard, meter=meter)
    if ops is not None:
        ops.metrics.watch_scs(lambda: core.services, scramblers)
        ops.board.add_section("services", scs_services(lambda: core.services, scramblers))
    top = SequentialStop()  # the runner closes its channels in order before the ClientServices stop
    top.runner, top.core, top.sink, top.scramblers, top.udp = runner, core, sink, scramblers, {}
    top.clients = {}
    top.mux_link = link
    if link is not None:  # first: up before the runner submits, stopped (closing its channels) last
        link.setServiceParent(top)
    guard.setServiceParent(top)  # stops after the runner: flushes the log summaries
    rc = settings.reconnect
    for channel in settings.channels:
        machine = core.channels[channel.name]
        failover = endpoints[channel.name]
        # one line per attempt: "ECMG tcp:host=..:port=.. unreachable (connection refused), retry in 0.8 s"
        client = ReportingClientService(
            "ECMG",
            lambda f=failover, c=channel: " or ".join(name for name, _endpoint in f.endpoints)
            + f" (ECM_channel_id {c.ECM_channel_id})",
            failover,
            SCSClientFactory(runner, channel.name),
            retry_policy(rc.initial_delay, rc.max_delay, rc.factor, rc.jitter, lambda m=machine: m.refusals),
            reactor,
            prepareConnection=lambda protocol: protocol.start_channel(),
            metrics=meter,
            role="scs",
        )
        client.setServiceParent(top)
        top.clients[channel.name] = client
    for service in settings.services:
        s = service.scrambler
        udp = UDPListeningService(s.input_port, ScramblerProtocol(scramblers[service.spec.name], s.output, reactor, guard),
                                  interface=s.input_interface, reactor=reactor)
        udp.setServiceParent(top)
        top.udp[service.spec.name] = udp
    runner.setServiceParent(top)  # last: starts after the clients, stops (closing channels) first
    log.info(
        "SCS: {services} services, {channels} ECMG channels, MUX {mux}",
        services=len(settings.services), channels=len(settings.channels), mux=settings.mux.mode.value,
    )
    return top


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    settings = options["settings"]
    ops = options.operations(reactor, settings.metrics)
    session = SessionManager(reactor)
    ops.watch_session(session)
    service = build_or_fail(options.tapname, lambda: ops.attached(
        build_service(settings, reactor, session=session, ops=ops)))
    return FailFast(options.tapname, reactor, service, daemon=options.daemonized())


__all__ = ["Options", "build_service", "makeService"]
