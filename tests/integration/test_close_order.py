"""Close order on the wire: SCS -> ECMG and EMMG -> MUX, in the one-process lab and apart.

Every client connection of the lab goes through a recording TCP proxy (a socket pair per
connection, one thread per direction, each chunk recorded before it is forwarded, so the record's
order is causal). After SIGTERM the records must show, for every connection whose channel was open:
a stream_close_request per open stream; each answered by its stream_close_response; then
channel_close, the client's last message; then the client's TCP close (FIN) -- never channel_close
before a response, and never a server that leaves a stream_close_request unanswered. Both the
one-process lab (``twistd bcast-lab``) and the roles as separate ``twistd`` processes are checked.

Every wait is bounded; every process is stopped and every socket closed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bcast_sp4 import wire
from bcast_sp4.wire import ecmg_scs, emmg_mux

from .harness import LAB_LOW, ROOT, lab_port_bases

LAB = ROOT / "etc" / "lab"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
EOF_MARK = b""
#: notified whenever a proxy records something (wait_until waits on it instead of polling)
RECORDED = threading.Condition()


class RecordingProxy:
    """Listens on 127.0.0.1 (port 0); forwards each connection to *target*; records both ways.

    :ivar records: ``(connection number, "c" | "s", bytes)``; ``b""`` marks that side's FIN.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.records: list[tuple[int, str, bytes]] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.running = True
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        number = 0
        while self.running:
            try:
                client, _addr = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            number += 1
            self.sockets += [client, server]
            for source, sink, side in ((client, server, "c"), (server, client, "s")):
                thread = threading.Thread(target=self._pump, args=(number, source, sink, side), daemon=True)
                thread.start()
                self.threads.append(thread)

    def _pump(self, number: int, source: socket.socket, sink: socket.socket, side: str) -> None:
        source.settimeout(0.2)
        while True:
            try:
                data = source.recv(65536)
            except socket.timeout:
                if not self.running:
                    return
                continue
            except OSError:
                data = EOF_MARK
            with self.lock:
                self.records.append((number, side, data))
            with RECORDED:
                RECORDED.notify_all()
            try:
                if data:
                    sink.sendall(data)
                else:
                    sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if not data:
                return

    def messages(self, interface: wire.Interface) -> dict[int, list[tuple[str, object]]]:
        """Per connection, ``(side, decoded message or "FIN")`` in recorded order."""
        framers: dict[tuple[int, str], wire.Framer] = {}
        out: dict[int, list[tuple[str, object]]] = {}
        with self.lock:
            records = list(self.records)
        for number, side, data in records:
            seq = out.setdefault(number, [])
            if not data:
                seq.append((side, "FIN"))
                continue
            for frame in framers.setdefault((number, side), wire.Framer()).feed(data):
                seq.append((side, wire.decode(frame, interface)))
        return out

    def close(self) -> None:
        self.running = False
        self.accepter.join(2)
        for thread in self.threads:
            thread.join(2)
        for sock in self.sockets + [self.listener]:
            sock.close()


def check_close_order(sequence: list[tuple[str, object]], messages) -> int:
    """Assert the orderly close in one connection's *sequence*; the number of streams closed."""
    stream_field = "ECM_stream_id" if messages is ecmg_scs else "data_stream_id"
    client = [(i, x) for i, (side, x) in enumerate(sequence) if side == "c"]
    opened = {getattr(x, stream_field) for _i, x in client if isinstance(x, messages.StreamSetup)}
    requests = {getattr(x, stream_field): i for i, x in client if isinstance(x, messages.StreamCloseRequest)}
    responses = {getattr(x, stream_field): i for i, (side, x) in enumerate(sequence)
                 if side == "s" and isinstance(x, messages.StreamCloseResponse)}
    closes = [i for i, x in client if isinstance(x, messages.ChannelClose)]
    fins = [i for i, x in client if x == "FIN"]
    assert opened and requests.keys() == opened, (opened, requests, sequence[-12:])
    assert len(closes) == 1 and fins, sequence[-12:]
    channel_close, fin = closes[0], fins[0]
    for stream_id, at in requests.items():
        answered = responses.get(stream_id)
        assert answered is not None, f"stream {stream_id}: stream_close_request never answered"
        assert at < answered < channel_close, f"stream {stream_id}: close {at}, response {answered}, channel_close {channel_close}"
    assert client[-2][0] == channel_close and client[-1][0] == fin  # channel_close last, then FIN
    return len(requests)


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


LAB_PORT = re.compile(r"\b1[2-6]\d{3}\b")  # every number of this range in etc/lab/*.toml is a port


class LabCopy:
    """etc/lab copied with every port moved to a port base (other test runs may use the lab's ports;
    no port is probed: see ``harness.lab_port_bases``), and the clients' TCP endpoints -- not the
    servers' -- pointed at recording proxies.

    :ivar proxies: the lab's port (12201, 12202, 15000) -> the proxy in front of its server.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.folder = tmp_path / "lab"
        shutil.copytree(LAB, self.folder)
        ports: dict[str, str] = {}
        files = {path: path.read_text() for path in self.folder.glob("*.toml")}
        base = lab_port_bases(1)[0]
        for text in files.values():
            for number in LAB_PORT.findall(text):
                ports.setdefault(number, str(base + int(number) - LAB_LOW))
        self.proxies = {int(lab): RecordingProxy(("127.0.0.1", int(ports[str(lab)]))) for lab in (12201, 12202, 15000)}
        for path, text in files.items():
            text = LAB_PORT.sub(lambda found: ports[found.group(0)], text)
            if path.name in ("scs.toml", "emmg.toml"):
                for lab, proxy in self.proxies.items():
                    text = text.replace(f"tcp:host=127.0.0.1:port={ports[str(lab)]}", f"tcp:host=127.0.0.1:port={proxy.port}")
            path.write_text(text)

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()


def wait_until(predicate, timeout: float, what: str, processes=()) -> None:
    """Until *predicate* holds, looked at after each proxy record (and every second, to notice a
    process that exited); bounded by *timeout*."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for proc, log in processes:
            assert proc.poll() is None, f"{proc.args} exited early:\n{output_of(log)}"
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out waiting for {what}"
        with RECORDED:
            RECORDED.wait(min(1.0, remaining))


def set_up(proxies: dict[int, RecordingProxy], mux_channels: int = 1) -> bool:
    """Every proxied channel has all its streams set up (and, EMMG<=>MUX, their bandwidth), and
    the MUX has *mux_channels* channels (the EMMG's; with the roles apart also the SCS's STKM
    links, one per Super_CAS_id: without counting them, the SCS's channels alone passed while the
    EMMG was still starting)."""
    for port, proxy in proxies.items():
        interface = wire.Interface.EMMG_MUX if port == 15000 else wire.Interface.ECMG_SCS
        messages = emmg_mux if port == 15000 else ecmg_scs
        channels = [seq for seq in proxy.messages(interface).values()
                    if any(side == "s" and isinstance(x, messages.ChannelStatus) for side, x in seq)]
        if len(channels) < (mux_channels if port == 15000 else 1):
            return False
        for seq in channels:
            count = lambda side, cls: sum(1 for s, x in seq if s == side and isinstance(x, cls))  # noqa: E731
            setups = count("c", messages.StreamSetup)
            if not setups or count("s", messages.StreamStatus) < setups:
                return False
            if messages is emmg_mux and count("s", messages.StreamBWAllocation) < setups:
                return False
    return True


def output_of(log: Path) -> str:
    """The end of a role's log and of its stdout/stderr (a start-up failure is one stderr line,
    written before any log file exists)."""
    parts = [path.read_text()[-3000:] for path in (log, log.with_suffix(".out")) if path.exists()]
    return "\n".join(parts) or "(no output)"


def stop(proc: subprocess.Popen, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"{proc.args} did not stop on SIGTERM:\n{output_of(log)}")


def verify(proxies: dict[int, RecordingProxy]) -> dict[str, int]:
    closed = {"ecmg": 0, "mux": 0}
    for port, proxy in proxies.items():
        is_mux = port == 15000
        interface, messages = (wire.Interface.EMMG_MUX, emmg_mux) if is_mux else (wire.Interface.ECMG_SCS, ecmg_scs)
        for sequence in proxy.messages(interface).values():
            if any(side == "s" and isinstance(x, messages.ChannelStatus) for side, x in sequence):
                closed["mux" if is_mux else "ecmg"] += check_close_order(sequence, messages)
    return closed


def test_close_order_in_the_one_process_lab(tmp_path):
    lab = LabCopy(tmp_path)
    proxies, folder = lab.proxies, lab.folder
    try:
        log = tmp_path / "lab.log"
        proc = subprocess.Popen(TWISTD + ["-l", str(log), "bcast-lab", "--config", str(folder / "lab.toml")],
                                stdout=log.with_suffix(".out").open("w"), stderr=subprocess.STDOUT, env=env(),
                                    cwd=tmp_path)
        try:
            wait_until(lambda: set_up(proxies), 120, "every channel and stream set up", [(proc, log)])
        finally:
            stop(proc, log)
        closed = verify(proxies)
        # the lab's SCS: two ECMG channels, 3 services each; its EMMG: one LTKM stream
        assert closed["ecmg"] == 6 and closed["mux"] >= 1, closed
        assert "Traceback" not in log.read_text()
    finally:
        lab.close()


def test_close_order_with_the_roles_apart(tmp_path):
    lab = LabCopy(tmp_path)
    proxies, folder = lab.proxies, lab.folder
    processes: list[tuple[subprocess.Popen, Path]] = []
    try:
        servers = [("bcast-mux", "mux.toml", "MuxFactory starting on"),
                   ("bcast-ecmg", "ecmg-drm.toml", "ECMGFactory starting on"),
                   ("bcast-ecmg", "ecmg-smartcard.toml", "ECMGFactory starting on")]
        for tapname, config, marker in servers + [("bcast-emmg", "emmg.toml", None), ("bcast-scs", "scs.toml", None)]:
            log = tmp_path / f"{config}.log"
            proc = subprocess.Popen(TWISTD + ["-l", str(log), tapname, "--config", str(folder / config)],
                                    stdout=log.with_suffix(".out").open("w"), stderr=subprocess.STDOUT, env=env(),
                                    cwd=tmp_path)
            processes.append((proc, log))
            if marker:
                wait_until(lambda: log.exists() and marker in log.read_text(), 60, f"{config} listening", processes)
        # the MUX's channels: the SCS's two STKM links (one per Super_CAS_id, data_channel_id 2) and the
        # EMMG's (data_channel_id 1): with 2, the SCS's links alone passed while the EMMG was still
        # connecting, and stopping it then left a channel_setup and a FIN (seen under a busy loop)
        wait_until(lambda: set_up(proxies, mux_channels=3), 120, "every channel and stream set up", processes)
        for proc, log in reversed(processes[3:]):  # the clients: SCS, then EMMG
            stop(proc, log)
        closed = verify(proxies)
        # the SCS: 6 ECMG streams, and (mode remote) its STKM link to the MUX; the EMMG: its LTKM stream
        assert closed["ecmg"] == 6 and closed["mux"] >= 2, closed
        for _proc, log in processes[3:]:
            assert "Traceback" not in log.read_text()
    finally:
        for proc, log in reversed(processes):
            if proc.poll() is None:
                stop(proc, log)
        lab.close()
