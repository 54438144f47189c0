"""TLS, mutual TLS and address allow-lists on real loopback sockets (issue #13).

Certificates are made here with ``cryptography``: a CA, a server certificate for 127.0.0.1 and
::1, a client certificate from the same CA, and a second CA with its own client certificate. The
ECMG is the factory ``bcast-ecmg`` builds (``tap.ecmg.build_service``) from a configuration file
with a ``[tls]`` table, listening through :func:`bcast_sp4.tap.tls.server_endpoint` on port 0;
clients connect through :func:`bcast_sp4.tap.tls.client_endpoint` and send channel_setup. Accepted
means a channel_status comes back; refused means the connection ends with no reply. Every wait
is bounded; no timing is asserted.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bcast_sp4 import wire
from bcast_sp4.config import load_ecmg_settings, load_keyfile
from bcast_sp4.config.limits import TLSSettings
from bcast_sp4.tap.ecmg import build_service
from bcast_sp4.tap.tls import client_endpoint, endpoint_host, server_endpoint
from bcast_sp4.wire import ecmg_scs as m

ETC = Path(__file__).resolve().parents[2] / "etc"
SCID = 0x00010001
WAIT = 60.0  # s: an upper bound for a busy machine, never a measured time


# -- certificates ---------------------------------------------------------------------------------


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(name: str):
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca, name: str, *, server: bool):
    ca_key, ca_cert = ca
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def write_pair(directory: Path, name: str, pair) -> tuple[Path, Path]:
    key, cert = pair
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    key_path.chmod(0o600)  # key material: a readable one is refused
    return cert_path, key_path


# -- a client that sends channel_setup --------------------------------------------------------------


class SetupClient(Protocol):
    """Sends channel_setup; :attr:`done` fires with the first reply decoded, or ``None`` when the
    connection ends without one."""

    def __init__(self) -> None:
        self.done: Deferred = Deferred()
        self.lost: Deferred = Deferred()
        self.framer = wire.Framer()

    def connectionMade(self) -> None:
        self.transport.write(m.ChannelSetup(ECM_channel_id=7, Super_CAS_id=SCID).encode())

    def dataReceived(self, data: bytes) -> None:
        frames = self.framer.feed(data)
        if frames and not self.done.called:
            self.done.callback(wire.decode(frames[0]))
            self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        if not self.done.called:
            self.done.callback(None)
        self.lost.callback(None)


async def exchange(endpoint) -> object:
    """Connect, send channel_setup, return the first reply (``None``: closed without one)."""
    client = SetupClient()
    try:
        await endpoint.connect(Factory.forProtocol(lambda: client)).addTimeout(WAIT, reactor)
    except Exception:  # refused at the TCP or TLS level before the protocol ran
        return None
    reply = await client.done.addTimeout(WAIT, reactor)
    await client.lost.addTimeout(WAIT, reactor)
    return reply


class TLSAndAllowListTest(TestCase):
    def setUp(self) -> None:
        self.guards: list = []
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir, True)
        shutil.copy(ETC / "keys.example.toml", self.dir / "keys.example.toml")
        (self.dir / "keys.example.toml").chmod(0o600)  # the ECMG refuses a key file others may read
        ca = make_ca("bcast-sp4 test CA")
        other_ca = make_ca("another CA")
        self.ca_path, _ = write_pair(self.dir, "ca", ca)
        self.other_ca_path, _ = write_pair(self.dir, "other-ca", other_ca)
        self.server_cert, self.server_key = write_pair(self.dir, "server", issue(ca, "ecmg", server=True))
        self.client_cert, self.client_key = write_pair(self.dir, "client", issue(ca, "scs", server=False))
        self.rogue_cert, self.rogue_key = write_pair(self.dir, "rogue", issue(other_ca, "rogue", server=False))

    async def ecmg(self, extra: str, endpoint: str = "tcp:0:interface=127.0.0.1") -> int:
        """Start an ECMG from a config file with *extra* TOML; its port."""
        config = self.dir / "ecmg.toml"
        config.write_text(f"""[ecmg]
endpoint = "{endpoint}"
key_file = "keys.example.toml"
[[cas]]
super_CAS_id = {SCID:#010x}
mode = "drm"
{extra}
""")
        settings = load_ecmg_settings(config)
        top = build_service(settings, load_keyfile(settings.key_file), reactor)
        port = await server_endpoint(reactor, settings.endpoint, settings.tls).listen(top.factory)
        self.addCleanup(port.stopListening)
        self.guards.append(top.factory.guard)
        return port.getHost().port

    async def tearDown(self) -> None:
        # the server ends of the connections go when they see the clients' close: wait for them
        for _ in range(int(WAIT / 0.02)):
            if all(guard.connections == 0 for guard in self.guards):
                break
            await deferLater(reactor, 0.02, lambda: None)
        for guard in self.guards:
            guard.stop()

    def tls_server_table(self, client_ca: Path | None) -> str:
        ca_line = f'ca = "{client_ca}"' if client_ca else ""
        return f'[tls]\ncertificate = "{self.server_cert}"\nprivate_key = "{self.server_key}"\n{ca_line}\n'

    def client(self, port: int, **tls) -> object:
        spec = f"tcp:host=127.0.0.1:port={port}"
        return client_endpoint(reactor, spec, TLSSettings(ca=self.ca_path, **tls))

    async def test_tls_without_client_certificates_serves_a_verified_client(self):
        port = await self.ecmg(self.tls_server_table(None))
        reply = await exchange(self.client(port))
        self.assertIsInstance(reply, m.ChannelStatus)

    async def test_mutual_tls_accepts_a_certificate_from_the_configured_ca(self):
        port = await self.ecmg(self.tls_server_table(self.ca_path))
        reply = await exchange(self.client(port, certificate=self.client_cert, private_key=self.client_key))
        self.assertIsInstance(reply, m.ChannelStatus)

    async def test_mutual_tls_refuses_a_client_without_certificate(self):
        port = await self.ecmg(self.tls_server_table(self.ca_path))
        self.assertIsNone(await exchange(self.client(port)))

    async def test_mutual_tls_refuses_a_certificate_from_another_ca(self):
        port = await self.ecmg(self.tls_server_table(self.ca_path))
        reply = await exchange(self.client(port, certificate=self.rogue_cert, private_key=self.rogue_key))
        self.assertIsNone(reply)

    async def test_a_client_refuses_a_server_its_ca_did_not_issue(self):
        port = await self.ecmg(self.tls_server_table(None))
        endpoint = client_endpoint(reactor, f"tcp:host=127.0.0.1:port={port}", TLSSettings(ca=self.other_ca_path))
        self.assertIsNone(await exchange(endpoint))

    async def test_a_plain_client_gets_nothing_from_a_tls_server(self):
        port = await self.ecmg(self.tls_server_table(self.ca_path))
        self.assertIsNone(await exchange(TCP4ClientEndpoint(reactor, "127.0.0.1", port)))

    async def test_an_address_outside_the_allow_list_is_refused_ipv4(self):
        port = await self.ecmg('[limits]\nallow = ["10.0.0.0/8", "::1"]')
        self.assertIsNone(await exchange(TCP4ClientEndpoint(reactor, "127.0.0.1", port)))
        port = await self.ecmg('[limits]\nallow = ["10.0.0.0/8", "127.0.0.1/32"]')
        self.assertIsInstance(await exchange(TCP4ClientEndpoint(reactor, "127.0.0.1", port)), m.ChannelStatus)

    async def test_an_address_outside_the_allow_list_is_refused_ipv6(self):
        try:
            socket.socket(socket.AF_INET6).bind(("::1", 0))
        except OSError:
            self.skipTest("no IPv6 loopback here")
        port = await self.ecmg('[limits]\nallow = ["127.0.0.0/8"]', endpoint=r"tcp6:0:interface=\\:\\:1")
        self.assertIsNone(await exchange(TCP6ClientEndpoint(reactor, "::1", port)))
        port = await self.ecmg('[limits]\nallow = ["::1/128"]', endpoint=r"tcp6:0:interface=\\:\\:1")
        self.assertIsInstance(await exchange(TCP6ClientEndpoint(reactor, "::1", port)), m.ChannelStatus)

    async def test_mutual_tls_and_the_allow_list_together(self):
        port = await self.ecmg(self.tls_server_table(self.ca_path) + '[limits]\nallow = ["10.0.0.0/8"]')
        reply = await exchange(self.client(port, certificate=self.client_cert, private_key=self.client_key))
        self.assertIsNone(reply)


def test_endpoint_host_reads_keyword_and_positional_forms():
    assert endpoint_host("tcp:host=127.0.0.1:port=2222") == "127.0.0.1"
    assert endpoint_host("tcp:ecmg.example:2222") == "ecmg.example"
    assert endpoint_host(r"tcp6:host=\:\:1:port=2222") == "::1"


class ClientRolesOverTLSTest(TestCase):
    """The client side as the taps build it: an EMMG (``tap.emmg``) over mutual TLS to a MUX (``tap.mux``)."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir, True)
        for name in ("mux.toml", "emmg.toml", "subscribers.example.toml"):
            shutil.copy(ETC / name, self.dir / name)
        ca = make_ca("bcast-sp4 test CA")
        self.ca_path, _ = write_pair(self.dir, "ca", ca)
        self.server_cert, self.server_key = write_pair(self.dir, "mux", issue(ca, "mux", server=True))
        self.client_cert, self.client_key = write_pair(self.dir, "emmg", issue(ca, "emmg", server=False))

    async def test_an_emmg_with_a_client_certificate_gets_its_channel_and_streams_from_a_mutual_tls_mux(self):
        from bcast_sp4.config import load_emmg_settings, load_mux_settings
        from bcast_sp4.tap import emmg as emmg_tap
        from bcast_sp4.tap import mux as mux_tap

        mux_path = self.dir / "mux.toml"
        text = mux_path.read_text().replace('endpoint = "tcp:5000:interface=127.0.0.1"', 'endpoint = "tcp:0:interface=127.0.0.1"')
        text = "\n".join(line for line in text.splitlines() if not line.startswith("udp = "))
        mux_path.write_text(text + f'\n[tls]\ncertificate = "{self.server_cert}"\nprivate_key = "{self.server_key}"\n'
                                   f'ca = "{self.ca_path}"\n')
        mux_settings = load_mux_settings(mux_path)
        mux = mux_tap.build_service(mux_settings, reactor)
        mux.mux.play_out.startService()
        self.addCleanup(mux.mux.play_out.stopService)
        port = await server_endpoint(reactor, mux_settings.endpoint, mux_settings.tls).listen(mux.mux.factory)
        self.addCleanup(port.stopListening)

        emmg_path = self.dir / "emmg.toml"
        text = emmg_path.read_text().replace('connect = "tcp:host=127.0.0.1:port=5000"',
                                             f'connect = "tcp:host=127.0.0.1:port={port.getHost().port}"')
        text = text.replace('directory = "/tmp/bcast-sp4/ltkm-spool"', f'directory = "{self.dir / "spool"}"')
        emmg_path.write_text(text + f'\n[tls]\nca = "{self.ca_path}"\ncertificate = "{self.client_cert}"\n'
                                    f'private_key = "{self.client_key}"\n')
        emmg = emmg_tap.build_service(load_emmg_settings(emmg_path), reactor)
        emmg.startService()
        try:
            protocol = await emmg.emmg.when_ready().addTimeout(WAIT, reactor)
            self.assertEqual(protocol.transport.getPeer().port, port.getHost().port)
            self.assertEqual(mux.mux.factory.guard.connections, 1)
        finally:
            await emmg.stopService()
        for _ in range(int(WAIT / 0.02)):
            if mux.mux.factory.guard.connections == 0:
                break
            await deferLater(reactor, 0.02, lambda: None)
        mux.mux.factory.guard.stop()


def test_a_command_line_ssl_endpoint_with_a_tls_table_is_a_usage_error(tmp_path):
    import pytest
    from twisted.python import usage

    from bcast_sp4.tap import ecmg as ecmg_tap

    shutil.copy(ETC / "keys.example.toml", tmp_path / "keys.example.toml")
    pair = issue(make_ca("ca"), "ecmg", server=True)
    cert, key = write_pair(tmp_path, "server", pair)
    config = tmp_path / "ecmg.toml"
    config.write_text((ETC / "ecmg.toml").read_text() + f'\n[tls]\ncertificate = "{cert}"\nprivate_key = "{key}"\n')
    options = ecmg_tap.Options()
    with pytest.raises(usage.UsageError, match="wraps a tcp: endpoint"):
        options.parseOptions(["--config", str(config), "--endpoint", "ssl:2222"])
    options = ecmg_tap.Options()
    options.parseOptions(["--config", str(config), "--endpoint", "tcp:0:interface=127.0.0.1"])
    assert options["settings"].tls.certificate == cert
