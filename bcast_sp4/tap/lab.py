"""``twistd bcast-lab``: a whole OMA BCAST head-end and a reference terminal in one process.

``twistd -n bcast-lab --config etc/lab/lab.toml --periods 20 [--port-base N] [--startup-timeout S]``

``lab.toml`` names one configuration file per role — the same files that run each role as its
own ``twistd`` process: a MUX, ECMGs (DRM and Smartcard Profile), an EMMG / LTKM generator, an SCS
with its TEK generator and scramblers, and the reference terminal with the content source. The
roles are wired through one :class:`SessionManager`, handed to each when it is built: ECMGs, MUX
and EMMG talk SimulCrypt over loopback; the SCS finds the MUX registered in the session and hands
it each STKM in-process (run apart, the SCS reaches the MUX over EMMG/PDG<=>MUX instead). The
terminal prints one line per crypto-period and, with ``--periods N``, a summary; the exit status
says whether every content packet was decrypted intact in both profiles.

Start-up waits on the session's Deferreds, each step under ``--startup-timeout``:

1. the MUX and every ECMG listen;
2. every SCS channel and stream is open and every LTKM stream of the EMMG has its allocation;
3. the SCS starts its schedulers (the first period ``start_allowance`` from then), and the
   first STKM(n) of every service and ECMG link is out;
4. the terminal starts waiting for keys (``ready_timeout``), then runs the content.

A step that does not complete ends the lab with exit status 4 and one line naming every role,
channel or stream that never became ready.

``--port-base N`` moves every port of the lab files at once (the lowest becomes N; see
:mod:`bcast_sp4.config.lab_ports`). ``--role NAME`` runs one role of the lab alone (``mux``,
``ecmg1``.., ``emmg``, ``scs``, ``terminal``), with the same port base: ``scripts/lab-apart``
starts every role that way as its own process.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from ..config import LabSettings, load_keyfile, load_lab_settings
from ..config.lab_ports import move_ports
from ..machines.scs_records import CP_NUMBER_MASK
from ..roles.gc_tuning import freeze_long_lived
from ..session import NotReady, SessionManager
from . import ecmg as ecmg_tap
from . import emmg as emmg_tap
from . import mux as mux_tap
from . import scs as scs_tap
from . import terminal as terminal_tap
from .terminal import _Discard
from ..ops.startup import FailFast, build_or_fail
from ._exit import stop_with_status
from ._options import RoleOptions
from ._ordered import SequentialStop

log = Logger()

#: exit status of a lab whose start-up did not complete
STARTUP_FAILED = 4


class SessionMuxSink:
    """The SCS's STKM sink in the lab: each STKM published in the session (STKM(n) is what the lab's
    start-up waits for) and handed to the in-process MUX (an exception there is logged, never
    raised into the SCS)."""

    def __init__(self, session: SessionManager, mux) -> None:
        self.session = session
        self.mux = mux

    def submit(self, super_cas_id: int, ecm_id: int, cp_number: int, stkm: bytes, on_air_from: float, repetition_ms: int) -> None:
        self.session.stkm_ready(super_cas_id, ecm_id, cp_number, stkm)
        self.session.call_guarded("STKM hand-over to the MUX", self.mux.submit, super_cas_id, ecm_id, cp_number, stkm,
                                  on_air_from, repetition_ms)


class Options(RoleOptions):
    tapname = "bcast-lab"
    default_config = "etc/lab/lab.toml"
    synopsis = "--config FILE [--periods N] [--port-base N] [--startup-timeout S] [--role NAME]"
    longdesc = __doc__.split("\n\n")[2]
    optParameters = [
        ["config", "c", default_config, "lab file naming one configuration file per role (a default not in "
                                       "the working directory is taken from the package's etc/)"],
        ["periods", "p", 0, "stop after N crypto-periods of content with a summary (0 = run until stopped)", int],
        ["port-base", "b", None, "move every port of the lab files at once: the lowest becomes N, the others keep "
                                 "their distance from it", int],
        ["startup-timeout", "t", 30.0, "seconds each start-up step may take before the lab gives up (exit 4)", float],
        ["role", "r", None, "run only this role of the lab: mux, ecmg1.., emmg, scs or terminal (scripts/lab-apart)"],
    ]

    def postOptions(self) -> None:
        if self["periods"] < 0:
            raise usage.UsageError("--periods must be >= 0")
        if not self["startup-timeout"] > 0:
            raise usage.UsageError("--startup-timeout must be > 0")
        settings = self.load(load_lab_settings)
        if self["port-base"] is not None:
            try:
                settings = move_ports(settings, self["port-base"])
            except ValueError as exc:
                self.fail(f"--port-base: {exc}")
        roles = role_names(settings)
        if self["role"] is not None and self["role"] not in roles:
            raise usage.UsageError(f"--role must be one of {', '.join(roles)}")
        self["settings"] = settings


def role_names(settings: LabSettings) -> list[str]:
    """The names ``--role`` takes, in start order: mux, ecmg1.., emmg, scs, terminal."""
    return ["mux", *(f"ecmg{i}" for i in range(1, len(settings.ecmgs) + 1)), "emmg", "scs", "terminal"]


class Lab(SequentialStop):
    """Every role of the lab on one reactor, sharing one session manager (start order = child order;
    stop order the reverse, one role after the other: terminal, SCS, EMMG -- the clients, each
    closing its channels in order -- then the ECMGs and the MUX, which answer until then).

    Each role is handed the session manager when it is built; the attributes name the roles' service
    trees for tests and tools. :attr:`started` (after ``startService``) fires once the start-up is
    over: the terminal waits for keys, or :attr:`startup_failure` says what never became ready
    (reported through *on_done* too, status :data:`STARTUP_FAILED`).
    """

    def __init__(self, settings: LabSettings, reactor, periods: int = 0, on_done=None, out=None,
                 startup_timeout: float = 30.0, ops=None) -> None:
        super().__init__()
        self.settings = settings
        self.clock = reactor
        self.startup_timeout = startup_timeout
        self.started: Deferred | None = None
        #: the line that ended a failed start-up, else ``None``
        self.startup_failure: str | None = None
        self._waiting: Deferred | None = None  # the start-up step under way
        self.session = session = SessionManager(reactor)
        if ops is not None:  # one set of metrics and one status board for every role of the lab
            ops.watch_session(session)
        self.mux = mux_tap.build_service(settings.mux, reactor, session, ops)
        self.mux.setServiceParent(self)
        session.register("mux", self.mux.mux)
        self.ecmgs = []
        key_stores = settings.key_stores or tuple(load_keyfile(e.key_file) for e in settings.ecmgs)
        for ecmg, key_store in zip(settings.ecmgs, key_stores):
            service = ecmg_tap.build_service(ecmg, key_store, reactor, session, ops)
            service.setServiceParent(self)
            self.ecmgs.append(service)
        self.emmg = emmg_tap.build_service(settings.emmg, reactor, session, ops)
        self.emmg.setServiceParent(self)
        session.register("emmg", self.emmg.emmg)
        self.scs = scs_tap.build_service(settings.scs, reactor, sink=SessionMuxSink(session, self.mux.mux),
                                         session=session, autostart=False, ops=ops)
        self.scs.setServiceParent(self)
        self.terminal = terminal_tap.build_service(settings.terminal, reactor, periods, on_done, out, autostart=False,
                                                   ops=ops)
        self.terminal.setServiceParent(self)

    # -- start-up --------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.started = self._start_up()

    def _step(self, waits: dict[str, Deferred], what: str) -> Deferred:
        self._waiting = self.session.all_ready(waits, self.startup_timeout, what)
        return self._waiting

    def _start_up(self) -> Deferred:
        d = self._step(self._listening(), "lab start-up, servers")
        d.addCallback(lambda _r: self._step(self._connected(), "lab start-up, channels and streams"))
        d.addCallback(self._start_scs)
        d.addCallback(lambda waits: self._step(waits, "lab start-up, first STKMs"))
        d.addCallback(self._start_terminal)
        d.addErrback(self._failed)
        d.addBoth(self._over)
        return d

    def _over(self, _result) -> None:
        self._waiting = None

    def _listening(self) -> dict[str, Deferred]:
        s, session = self.settings, self.session
        waits = {f"MUX listening on {s.mux.endpoint}": session.when_listening(s.mux.endpoint)}
        for ecmg in s.ecmgs:
            waits[f"ECMG listening on {ecmg.endpoint}"] = session.when_listening(ecmg.endpoint)
        return waits

    def _connected(self) -> dict[str, Deferred]:
        s, session = self.settings, self.session
        waits: dict[str, Deferred] = {}
        for channel in s.scs.channels:
            waits[f"SCS channel to ECMG {channel.endpoint} (ECM_channel_id {channel.ECM_channel_id})"] = \
                session.when_channel_ready("scs", channel.name, 0)
        for service in s.scs.services:
            for link in service.spec.links:
                waits[f"SCS stream {service.spec.name} ECM_id {link.ECM_id} on {link.channel}"] = \
                    session.when_stream_ready("scs", link.channel, 0, link.ECM_stream_id)
        client_id = s.emmg.emmg.client_id
        for stream in s.emmg.emmg.streams:
            waits[f"EMMG allocation client_id {client_id:#010x} data_id {stream.data_id:#06x}"] = \
                session.when_allocation(client_id, stream.data_id)
        return waits

    def _start_scs(self, _results) -> dict[str, Deferred]:
        """Channels and streams are up: start the schedulers; wait for STKM(first period) of each link."""
        runner = self.scs.runner
        runner.begin()
        waits: dict[str, Deferred] = {}
        for name, scheduler in runner.core.services.items():
            n = scheduler.first_period & CP_NUMBER_MASK
            for link in scheduler.spec.links:
                waits[f"STKM({n}) of {name} super_CAS_id {link.super_CAS_id:#010x} ECM_id {link.ECM_id}"] = \
                    self.session.when_stkm(link.super_CAS_id, link.ECM_id, n)
        log.info("lab: every channel, stream and allocation is up; SCS schedulers started")
        return waits

    def _start_terminal(self, _results) -> None:
        log.info("lab: first STKMs out; the terminal waits for keys")
        self.terminal.terminal.begin()

    def _failed(self, failure: Failure) -> None:
        """Report a failed start-up (one line, exit status :data:`STARTUP_FAILED`); stopping is not one."""
        if failure.check(CancelledError):
            return
        if failure.check(NotReady):
            reason = failure.getErrorMessage()
        else:
            log.failure("lab start-up failed", failure)
            reason = f"lab start-up failed: {failure.getErrorMessage()}"
        self.startup_failure = reason
        log.error("{reason}", reason=reason)
        if self.running:
            self.terminal.terminal.fail(reason, STARTUP_FAILED)

    def stopService(self):
        if self._waiting is not None:
            self._waiting.cancel()  # stopped while starting up: no verdict from here
        return super().stopService()


class RoleAlone(MultiService):
    """One role of the lab in its own process (``--role``): what ``twistd bcast-<role>`` would run
    with that role's file, after ``--port-base``; the terminal reports through *on_done*."""

    def __init__(self, settings: LabSettings, role: str, reactor, periods: int = 0, on_done=None, out=None) -> None:
        super().__init__()
        if role == "mux":
            child = mux_tap.build_service(settings.mux, reactor)
        elif role.startswith("ecmg"):
            ecmg = settings.ecmgs[int(role[4:]) - 1]
            child = ecmg_tap.build_service(ecmg, load_keyfile(ecmg.key_file), reactor)
        elif role == "emmg":
            child = emmg_tap.build_service(settings.emmg, reactor)
        elif role == "scs":
            child = scs_tap.build_service(settings.scs, reactor)
        elif role == "terminal":
            child = terminal_tap.build_service(settings.terminal, reactor, periods, on_done, out)
        else:
            raise ValueError(f"no lab role {role!r}")
        child.setServiceParent(self)
        self.role = child


def build_service(settings: LabSettings, reactor, periods: int = 0, on_done=None, out=None,
                  startup_timeout: float = 30.0, ops=None) -> Lab:
    """Every role of the lab on *reactor*, sharing one session manager (and *ops*, the process's
    :class:`~bcast_sp4.ops.runtime.Operations`, when given)."""
    return Lab(settings, reactor, periods, on_done, out, startup_timeout, ops)


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    def done(status: int) -> None:
        stop_with_status(reactor, status)

    settings = options["settings"]
    ops = options.operations(reactor, settings.metrics)
    # under `twistd -n` the log is on stdout already: the terminal's lines go there once, as log lines
    out = _Discard() if options.log_goes_to_stdout() else None
    if options["role"] is not None:
        service = build_or_fail(options.tapname, lambda: RoleAlone(settings, options["role"], reactor, options["periods"], done))
    else:
        service = build_or_fail(options.tapname, lambda: ops.attached(build_service(
            settings, reactor, options["periods"], done, out, startup_timeout=options["startup-timeout"], ops=ops)))
    freeze_long_lived()
    return FailFast(options.tapname, reactor, service, daemon=options.daemonized())
