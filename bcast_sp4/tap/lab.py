"""``twistd bcast-lab``: a whole OMA BCAST head-end and a reference terminal in one process.

``twistd -n bcast-lab --config etc/lab/lab.toml --periods 20``

``lab.toml`` names one configuration file per role — the same files that run each role as its
own ``twistd`` process: a MUX, ECMGs (DRM and Smartcard Profile), an EMMG / LTKM generator, an SCS
with its TEK generator and scramblers, and the reference terminal with the content source. The
roles are wired through one :class:`SessionManager`: ECMGs, MUX and EMMG talk SimulCrypt over
loopback; the SCS finds the MUX registered in the session and hands it each STKM in-process
(run apart, the SCS reaches the MUX over EMMG/PDG<=>MUX instead). The terminal prints one line per
crypto-period and, with ``--periods N``, a summary; the exit status says whether every content
packet was decrypted intact in both profiles.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.python import usage

from ..config import LabSettings, load_keyfile, load_lab_settings
from ..roles.gc_tuning import freeze_long_lived
from ..session import SessionManager
from . import ecmg as ecmg_tap
from . import emmg as emmg_tap
from . import mux as mux_tap
from . import scs as scs_tap
from . import terminal as terminal_tap
from ._exit import stop_with_status
from ._options import RoleOptions
from ._ordered import SequentialStop


class SessionMuxSink:
    """The SCS's STKM sink in the lab: the MUX registered in the session manager, in-process."""

    def __init__(self, session: SessionManager) -> None:
        self.session = session

    def submit(self, super_cas_id: int, ecm_id: int, cp_number: int, stkm: bytes, on_air_from: float, repetition_ms: int) -> None:
        mux = self.session.lookup("mux")
        self.session.stkm_ready(super_cas_id, ecm_id, cp_number, stkm)
        if mux is not None:
            self.session.call_guarded("STKM hand-over to the MUX", mux.submit, super_cas_id, ecm_id, cp_number, stkm,
                                      on_air_from, repetition_ms)


class Options(RoleOptions):
    tapname = "bcast-lab"
    default_config = "etc/lab/lab.toml"
    synopsis = "--config FILE [--periods N]"
    longdesc = __doc__.split("\n\n")[1]
    optParameters = [
        ["config", "c", default_config, "lab file naming one configuration file per role (a default not in "
                                       "the working directory is taken from the package's etc/)"],
        ["periods", "p", 0, "stop after N crypto-periods of content with a summary (0 = run until stopped)", int],
    ]

    def postOptions(self) -> None:
        if self["periods"] < 0:
            raise usage.UsageError("--periods must be >= 0")
        self["settings"] = self.load(load_lab_settings)


def build_service(settings: LabSettings, reactor, periods: int = 0, on_done=None, out=None) -> MultiService:
    """Every role of the lab on *reactor*, sharing one session manager (start order = list order;
    stop order the reverse, one role after the other: terminal, SCS, EMMG -- the clients, each
    closing its channels in order -- then the ECMGs and the MUX, which answer until then)."""
    session = SessionManager(reactor)
    top = SequentialStop()  # clients close in order before their servers stop
    top.session = session
    top.mux = mux_tap.build_service(settings.mux, reactor)
    top.mux.setServiceParent(top)
    session.register("mux", top.mux.mux)
    top.mux.mux.factory.session = session
    top.ecmgs = []
    for ecmg in settings.ecmgs:
        service = ecmg_tap.build_service(ecmg, load_keyfile(ecmg.key_file), reactor)
        service.factory.session = session
        service.setServiceParent(top)
        top.ecmgs.append(service)
    top.emmg = emmg_tap.build_service(settings.emmg, reactor)
    top.emmg.setServiceParent(top)
    session.register("emmg", top.emmg.emmg)
    top.emmg.emmg.session_manager = session
    top.scs = scs_tap.build_service(settings.scs, reactor, sink=SessionMuxSink(session))
    top.scs.runner.session = session
    top.scs.setServiceParent(top)
    top.terminal = terminal_tap.build_service(settings.terminal, reactor, periods, on_done, out)
    top.terminal.terminal.session = session
    top.terminal.setServiceParent(top)
    return top


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    service = build_service(options["settings"], reactor, options["periods"], lambda status: stop_with_status(reactor, status))
    freeze_long_lived()
    return service
