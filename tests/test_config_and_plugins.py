"""Configuration files fail at start naming file, key and reason, as one line from each twistd plugin;
--version; default configuration files; twistd finds every plugin."""

import contextlib
import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bcast_sp4 import __version__, version_text
from bcast_sp4.config import ConfigError, load_ecmg_settings
from bcast_sp4.config.locate import locate_default

from .integration.harness import ROOT

BASE = """[ecmg]
key_file = "{keys}"
allow_readable_key_file = true
{extra}
[[cas]]
super_CAS_id = 0x00010001
mode = "drm"
"""


def write(tmp_path, extra="", tail=""):
    path = tmp_path / "ecmg.toml"
    path.write_text(BASE.format(keys=ROOT / "etc" / "keys.example.toml", extra=extra) + tail)
    return path


@pytest.mark.parametrize(
    ("extra", "tail", "key", "reason"),
    [
        ("max_channels = 0", "", "ecmg.max_channels", "outside"),
        ("versions = [4]", "", "ecmg.versions", "1, 2, 3"),
        ("colour = 1", "", "ecmg.colour", "unknown key"),
        ("", "[channel]\nlead_CW = 2\nCW_per_msg = 2\n", "channel.lead_CW", "lead_CW"),
        ("", "[channel]\ndelay_start = 40000\n", "channel.delay_start", "outside"),
        ("", '[[cas]]\nsuper_CAS_id = 0x00020001\nmode = "drm"\n', "cas #2.super_CAS_id", "profile prefix"),
        ("", '[[cas]]\nsuper_CAS_id = 0x00010001\nmode = "drm"\n', "cas #2.super_CAS_id", "twice"),
        ("", '[[cas]]\nsuper_CAS_id = 0x4AE60000\nmode = "dvb-sections"\n', "cas #2.key", "missing"),
        ("", '[[cas]]\nsuper_CAS_id = 0x00020002\nmode = "dvb-ts"\nkey = "00"\n', "cas #2.mode", "BCAST"),
        ("", '[[cas]]\nsuper_CAS_id = 0x4AE60000\nmode = "nagra"\n', "cas #2.mode", "not one of"),
        ("", '[[cw_encryption_key]]\nkey_id = 1\nkey = "zz"\n', "cw_encryption_key #1.key", "hex"),
    ],
)
def test_config_errors_name_file_key_and_reason(tmp_path, extra, tail, key, reason):
    path = write(tmp_path, extra, tail)
    with pytest.raises(ConfigError) as info:
        load_ecmg_settings(path)
    assert info.value.key == key and reason in info.value.reason and str(path) in str(info.value)


def test_config_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_ecmg_settings(tmp_path / "none.toml")
    (tmp_path / "x.toml").write_text("[ecmg\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_ecmg_settings(tmp_path / "x.toml")
    (tmp_path / "y.toml").write_text("[ecmg]\n")
    with pytest.raises(ConfigError, match="key_file"):
        load_ecmg_settings(tmp_path / "y.toml")


def test_twistd_finds_the_plugins():
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    import twisted.plugins

    assert any(str(ROOT) in p for p in twisted.plugins.__path__)
    names = {maker.tapname for maker in getPlugins(IServiceMaker)}
    assert "bcast-ecmg" in names


# --- the plugins, as an operator runs them ---------------------------------------------------------
#
# Every (role, kind) case is checked through twistd's own option parser in this process: the
# ``twistd -n --pidfile= bcast-<role> --config FILE`` command line goes to
# ``twisted.scripts.twistd.ServerOptions``, which finds the plugin and hands the rest to its Options,
# where a configuration error ends the process (``RoleOptions.fail``: one stderr line, exit 78);
# nothing of a twistd run comes before that but interpreter start-up. Each role also runs one case
# (each kind at least once) as a real ``.venv/bin/twistd`` process, plus ``--version`` per role and
# one ``twist``, four at a time when the first is asked for; the real run's status, stdout and
# stderr must equal the in-process check's.

BIN = Path(sys.executable).parent
ROLES = ("ecmg", "scs", "emmg", "mux", "terminal", "lab")
KINDS = ("missing", "syntax", "value", "unknown", "keys")
#: the cases also run as a real twistd process: every role once, every kind at least once
REAL_CASES = (("ecmg", "keys"), ("scs", "value"), ("emmg", "unknown"), ("mux", "missing"), ("terminal", "syntax"),
              ("lab", "keys"))
#: (role, kind) -> (file at fault relative to the case folder, key path or "line N", reason fragment)
EXPECTED = {
    ("ecmg", "value"): ("ecmg.toml", "ecmg.max_channels", "0 outside 1..65536"),
    ("ecmg", "unknown"): ("ecmg.toml", "cas #4.colour", "unknown key"),
    ("ecmg", "keys"): ("keys.toml", "keys.lab-drm-sek.key", "must be hex"),
    ("scs", "value"): ("scs.toml", "service #1.crypto_period", "not a multiple of 0.1"),
    ("scs", "unknown"): ("scs.toml", "scs.reconnect.colour", "unknown key"),
    ("scs", "keys"): ("scs.toml", "service #2.ecmg #1.cw_encryption.key", "must be 16 bytes, not 2"),
    ("emmg", "value"): ("emmg.toml", "stream #1.bandwidth", "0 outside 1..65535"),
    ("emmg", "unknown"): ("emmg.toml", "emmg.colour", "unknown key"),
    ("emmg", "keys"): ("subscribers.toml", "devices #2.device_key", "must be hex"),
    ("mux", "value"): ("mux.toml", "client #1.ltkm #1.ttl", "0 outside 1..255"),
    ("mux", "unknown"): ("mux.toml", "queues.colour", "unknown key"),
    ("mux", "keys"): ("mux.toml", "client #1.client_id", "SP-4 LTKMs are DRM Profile only"),
    ("terminal", "value"): ("terminal.toml", "source.rate", "-1 outside 0..100000"),
    ("terminal", "unknown"): ("terminal.toml", "device.colour", "unknown key"),
    ("terminal", "keys"): ("terminal.toml", "smartcard_key #1.key", "must be hex"),
    ("lab", "value"): ("lab.toml", "lab.ecmg", "must be a non-empty list"),
    ("lab", "unknown"): ("mux.toml", "egress.colour", "unknown key"),
    ("lab", "keys"): ("keys.toml", "keys.lab-smartcard-msk.key_domain_id", "must be 3 bytes, not 2"),
}
CONFIG_FILE = {"ecmg": "ecmg.toml", "scs": "scs.toml", "emmg": "emmg.toml", "mux": "mux.toml",
               "terminal": "terminal.toml", "lab": "lab.toml"}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def _make_case(folder: Path, role: str, kind: str) -> None:
    """Copy the role's example files into *folder* and break them as *kind* says."""
    folder.mkdir()
    if role in ("terminal", "lab"):
        for file in (ROOT / "etc" / "lab").glob("*.toml"):
            (folder / file.name).write_text(file.read_text())
    else:
        (folder / CONFIG_FILE[role]).write_text((ROOT / "etc" / CONFIG_FILE[role]).read_text())
        (folder / "keys.toml").write_text((ROOT / "etc" / "keys.example.toml").read_text())
        (folder / "subscribers.toml").write_text((ROOT / "etc" / "subscribers.example.toml").read_text())
        config = folder / CONFIG_FILE[role]
        config.write_text(config.read_text().replace('"keys.example.toml"', '"keys.toml"')
                          .replace('"subscribers.example.toml"', '"subscribers.toml"'))
    config = folder / CONFIG_FILE[role]
    if kind == "missing":
        config.unlink()
    elif kind == "syntax":
        config.write_text("# broken on purpose\n\n[oops\n" + config.read_text())
    else:
        breakage = {
            ("ecmg", "value"): ("max_channels = 1000", "max_channels = 0"),
            ("ecmg", "unknown"): ("[[cw_encryption_key]]", '[[cas]]\nsuper_CAS_id = 0x00010002\nmode = "drm"\ncolour = 1\n'
                                                          "[[cw_encryption_key]]"),
            ("scs", "value"): ("crypto_period = 10.0", "crypto_period = 10.05"),
            ("scs", "unknown"): ("jitter = 0.05", "jitter = 0.05\ncolour = 1"),
            ("scs", "keys"): ('"aes128-cbc", key_id = 1, key = "2b7e151628aed2a6abf7158809cf4f3c"',
                              '"aes128-cbc", key_id = 1, key = "2b7e"'),
            ("emmg", "value"): ("bandwidth = 200", "bandwidth = 0"),
            ("emmg", "unknown"): ("client_id = 0x00010001", "client_id = 0x00010001\ncolour = 1"),
            ("mux", "value"): ("ttl = 1", "ttl = 0"),
            ("mux", "unknown"): ("[queues]", "[queues]\ncolour = 1"),
            ("mux", "keys"): ("client_id = 0x00010001", "client_id = 0x00020009"),
            ("terminal", "value"): ("rate = 50", "rate = -1"),
            ("terminal", "unknown"): ("[device]", "[device]\ncolour = 1"),
            ("terminal", "keys"): ('key = "0f0e0d0c0b0a09080706050403020100"', 'key = "0f0e0d0c0b0a0908070605040302010z"'),
            ("lab", "value"): ('ecmg = ["ecmg-drm.toml", "ecmg-smartcard.toml"]', "ecmg = []"),
        }
        if (role, kind) in breakage:
            _edit(config, *breakage[(role, kind)])
        elif (role, kind) == ("ecmg", "keys"):
            _edit(folder / "keys.toml", 'key = "000102030405060708090a0b0c0d0e0f"', 'key = "0001020304050607080g0a0b0c0d0e0f"')
        elif (role, kind) == ("emmg", "keys"):
            _edit(folder / "subscribers.toml", 'device_key = "e0e1e2e3e4e5e6e7e8e9eaebecedeeef"',
                  'device_key = "e0e1e2e3e4e5e6e7e8e9eaebecedeeeg"')
        elif (role, kind) == ("lab", "unknown"):
            _edit(folder / "mux.toml", "[egress]", "[egress]\ncolour = 1")
        elif (role, kind) == ("lab", "keys"):
            _edit(folder / "keys.toml", 'key_domain_id = "02f810"', 'key_domain_id = "02f8"')
        else:
            raise AssertionError((role, kind))


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:  # it started serving: that case fails, not the others
        return subprocess.CompletedProcess(argv, None, exc.stdout or "", f"still running after 60 s: {exc.stderr!r}")


def _argv(role: str, folder: Path) -> list[str]:
    return ["-n", "--pidfile=", f"bcast-{role}", "--config", str(folder / CONFIG_FILE[role])]


def _check_in_process(role: str, folder: Path) -> subprocess.CompletedProcess:
    """What ``twistd <_argv>`` does with a bad file, run through twistd's option parser here."""
    from twisted.scripts.twistd import ServerOptions

    argv = [str(BIN / "twistd"), *_argv(role, folder)]
    stdout, stderr, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(folder)  # as the real run's working directory
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            ServerOptions().parseOptions(argv[1:])
    except SystemExit as exc:
        returncode = exc.code
    else:
        returncode = 0  # parsed: the real process would go on to serve, which no case should
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(argv, returncode, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(role, kind) -> a folder with the role's example files broken as *kind* says."""
    base = tmp_path_factory.mktemp("plugins")
    folders = {}
    for role in ROLES:
        for kind in KINDS:
            folders[(role, kind)] = base / f"{role}-{kind}"
            _make_case(folders[(role, kind)], role, kind)
    return folders


@pytest.fixture(scope="module")
def plugin_runs(cases):
    """The real processes: REAL_CASES, ("version", role) and ("twist", "ecmg") -> (folder, finished process)."""
    base = next(iter(cases.values())).parent
    jobs = {case: (cases[case], [str(BIN / "twistd"), *_argv(case[0], cases[case])]) for case in REAL_CASES}
    for role in ROLES:
        jobs[("version", role)] = (base, [str(BIN / "twistd"), f"bcast-{role}", "--version"])
    jobs[("twist", "ecmg")] = (base, [str(BIN / "twist"), "bcast-ecmg", "--config", str(base / "absent.toml")])
    with ThreadPoolExecutor(4) as pool:
        futures = {name: (folder, pool.submit(_run, argv, folder)) for name, (folder, argv) in jobs.items()}
        return {name: (folder, future.result()) for name, (folder, future) in futures.items()}


def _assert_one_line_and_exit_78(role: str, kind: str, folder: Path, run: subprocess.CompletedProcess) -> None:
    config = folder / CONFIG_FILE[role]
    if kind == "missing":
        expected = f"bcast-{role}: {config}: file not found\n"
    elif kind == "syntax":
        expected = f"bcast-{role}: {config}: line 3, column 6: not valid TOML: Expected ']' at the end of a table declaration\n"
    else:
        file, key, reason = EXPECTED[(role, kind)]
        prefix = f"bcast-{role}: {folder / file}: {key}: "
        assert run.stderr.startswith(prefix) and reason in run.stderr, run.stderr
        expected = run.stderr
    assert (run.returncode, run.stdout, run.stderr) == (78, "", expected)
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr and "Usage" not in run.stderr


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_file_stops_the_plugin_with_one_line_on_stderr(cases, role, kind):
    folder = cases[(role, kind)]
    _assert_one_line_and_exit_78(role, kind, folder, _check_in_process(role, folder))


@pytest.mark.parametrize(("role", "kind"), REAL_CASES)
def test_a_real_twistd_process_stops_the_same_way(cases, plugin_runs, role, kind):
    folder, run = plugin_runs[(role, kind)]
    _assert_one_line_and_exit_78(role, kind, folder, run)
    checked = _check_in_process(role, folder)
    assert (run.returncode, run.stdout, run.stderr) == (checked.returncode, checked.stdout, checked.stderr)


def test_the_real_cases_cover_every_role_and_every_kind():
    assert {role for role, _kind in REAL_CASES} == set(ROLES) and {kind for _role, kind in REAL_CASES} == set(KINDS)


def test_twist_stops_the_same_way(plugin_runs):
    folder, run = plugin_runs[("twist", "ecmg")]
    assert (run.returncode, run.stdout, run.stderr) == (78, "", f"bcast-ecmg: {folder / 'absent.toml'}: file not found\n")


@pytest.mark.parametrize("role", ROLES)
def test_each_plugin_prints_the_bcast_sp4_version(plugin_runs, role):
    _folder, run = plugin_runs[("version", role)]
    assert (run.returncode, run.stdout, run.stderr) == (0, version_text() + "\n", "")
    assert run.stdout.startswith(f"bcast-sp4 {__version__} (Twisted ")


def test_version_text_names_both_versions():
    import twisted

    assert version_text() == f"bcast-sp4 {__version__} (Twisted {twisted.__version__})"


# --- default configuration files -------------------------------------------------------------------


def test_a_default_not_in_the_working_directory_comes_from_the_package_etc(tmp_path, monkeypatch):
    from bcast_sp4.tap import ecmg as ecmg_tap

    monkeypatch.chdir(tmp_path)
    assert locate_default("etc/ecmg.toml") == ROOT / "etc" / "ecmg.toml"
    assert locate_default("etc/lab/lab.toml") == ROOT / "etc" / "lab" / "lab.toml"
    options = ecmg_tap.Options()
    options.parseOptions([])
    assert options["settings"].source_path == ROOT / "etc" / "ecmg.toml"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "ecmg.toml").write_text("[ecmg\n")
    assert locate_default("etc/ecmg.toml") == Path("etc/ecmg.toml")  # the working directory first


def test_a_default_found_nowhere_says_where_it_looked(tmp_path, monkeypatch, capsys):
    from bcast_sp4.config import locate
    from bcast_sp4.tap import mux as mux_tap

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(locate, "etc_folders", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(SystemExit) as exited:
        mux_tap.Options().parseOptions([])
    assert exited.value.code == 78
    looked = f"{tmp_path / 'etc' / 'mux.toml'}, {tmp_path / 'a' / 'mux.toml'}, {tmp_path / 'b' / 'mux.toml'}"
    assert capsys.readouterr().err == f"bcast-mux: etc/mux.toml: file not found (looked in {looked})\n"


def test_an_explicit_path_is_never_searched_for(tmp_path, monkeypatch, capsys):
    from bcast_sp4.tap import ecmg as ecmg_tap

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        ecmg_tap.Options().parseOptions(["--config", "ecmg.toml"])  # exists in the package etc/, not here
    assert capsys.readouterr().err == f"bcast-ecmg: ecmg.toml: file not found (looked in {tmp_path / 'ecmg.toml'})\n"


def test_installed_data_files_are_the_last_place():
    from bcast_sp4.config.locate import etc_folders

    assert etc_folders() == [ROOT / "etc", Path(sys.prefix) / "share" / "bcast-sp4" / "etc"]


def test_periods_defaults_to_a_number():
    """twistd does not coerce a default: a string "0" made ``bcast-lab`` without --periods crash."""
    from bcast_sp4.tap import lab as lab_tap
    from bcast_sp4.tap import terminal as terminal_tap

    for tap, config in ((lab_tap, "lab.toml"), (terminal_tap, "terminal.toml")):
        options = tap.Options()
        options.parseOptions(["--config", str(ROOT / "etc" / "lab" / config)])
        assert options["periods"] == 0


def test_the_readme_runs_every_command_from_the_venv():
    """A bare ``twistd`` / ``twist`` / ``bcast-sp4`` is not on PATH after scripts/bootstrap."""
    text = (ROOT / "README.md").read_text()
    blocks = text.split("```sh")[1:]
    commands = [line.strip() for block in blocks for line in block.split("```")[0].splitlines() if line.strip()]
    bare = [c for c in commands if c.split()[0] in ("twistd", "twist", "bcast-sp4", "python", "pytest")]
    assert bare == [] and any("bcast-sp4 check" in c for c in commands)
    assert "docs/config.md" in text and "etc/systemd/" in text
