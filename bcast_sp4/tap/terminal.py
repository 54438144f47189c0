"""``twistd bcast-terminal``: the reference terminal (and lab content source).

``twistd -n bcast-terminal --config etc/lab/terminal.toml [--periods N]``: joins the LTKM, STKM and
content destinations, turns LTKMs into SEK/PEK and STKMs into TEKs, decrypts SRTP, IPsec ESP and
ISMACryp content and checks it; with ``--periods N`` it stops after N periods of content and exits
with status 0 only if every packet was decrypted intact in both profiles.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.python import usage

from ..config import TerminalSettings, load_terminal_settings
from ..ops.startup import FailFast, build_or_fail
from ..ops.status import terminal_summary
from ..roles.terminal import TerminalService
from ._exit import stop_with_status
from ._options import RoleOptions


class Options(RoleOptions):
    tapname = "bcast-terminal"
    default_config = "etc/lab/terminal.toml"
    synopsis = "--config FILE [--periods N]"
    longdesc = "Reference OMA BCAST terminal: LTKM -> SEK/PEK, STKM -> TEK, decrypt and check content."
    optParameters = [
        ["config", "c", default_config, "terminal configuration file (TOML; a default not in the working "
                                       "directory is taken from the package's etc/)"],
        ["periods", "p", 0, "stop after N periods of content with a verdict (0 = run until stopped)", int],
    ]

    def postOptions(self) -> None:
        if self["periods"] < 0:
            raise usage.UsageError("--periods must be >= 0")
        self["settings"] = self.load(load_terminal_settings)


def build_service(settings: TerminalSettings, reactor, periods: int = 0, on_done=None, out=None,
                  autostart: bool = True, ops=None) -> MultiService:
    """The terminal's service tree; *ops* (:class:`~bcast_sp4.ops.runtime.Operations`) reads its counts."""
    top = MultiService()
    terminal = TerminalService(settings, reactor, periods, on_done, out, autostart)
    terminal.setServiceParent(top)
    top.terminal = terminal
    if ops is not None:
        ops.metrics.watch_terminal(terminal)
        ops.board.add_section("terminal", terminal_summary(terminal))
        if settings.device_key is not None:
            ops.keys.key("device key", settings.device_key, device_id=settings.device_id.hex())
        for key in settings.smartcard_keys:
            ops.keys.service_key("smartcard MSK", key)
    return top


class _Discard:
    """A console that prints nothing (see :func:`makeService`)."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    # under `twistd -n` the log is on stdout already: the progress lines go there once, as log lines
    out = _Discard() if options.log_goes_to_stdout() else None
    settings = options["settings"]
    ops = options.operations(reactor, settings.metrics)
    service = build_or_fail(options.tapname, lambda: ops.attached(build_service(
        settings, reactor, options["periods"], lambda status: stop_with_status(reactor, status), out, ops=ops)))
    return FailFast(options.tapname, reactor, service, daemon=options.daemonized())
