"""TLS for the roles' TCP connections: endpoints from a role's ``[tls]`` table (issue #13).

TS 103 197 runs over plain TCP; TLS around it is our choice for links that leave the building.
Two ways to use it:

* a Twisted ``ssl:`` endpoint string (``ssl:2222:interface=127.0.0.1:privateKey=k.pem:certKey=c.pem``
  for a server, ``ssl:host=...:port=...:caCertsDir=...`` for a client), which works as it is now
  that the package depends on ``twisted[tls]``; or
* a ``[tls]`` table (:class:`~bcast_sp4.config.limits.TLSSettings`) beside a ``tcp:`` endpoint:
  :func:`server_endpoint` wraps the listening endpoint in TLS with this node's certificate and,
  when ``ca`` is given, requires a client certificate issued by one of those CAs (mutual TLS);
  :func:`client_endpoint` wraps a client endpoint in TLS that verifies the server's certificate
  against ``ca`` for ``server_name`` (default: the endpoint's host) and presents this node's
  certificate when one is given.

A peer that fails the handshake never reaches the role's protocol: its bytes are not decrypted,
so no SimulCrypt message from it is handled.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import ssl
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from zope.interface import implementer

from ..config.limits import TLSSettings
from ..ops.startup import client_endpoint as parse_client_endpoint
from ..ops.startup import server_endpoint as parse_server_endpoint

_FIELD_SPLIT = re.compile(r"(?<!\\):")


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _ca_certificates(path: Path) -> list[ssl.Certificate]:
    """Every certificate of a PEM file (a CA bundle), as Twisted certificates."""
    found = x509.load_pem_x509_certificates(_read(path))
    return [ssl.Certificate.loadPEM(cert.public_bytes(Encoding.PEM)) for cert in found]


def _own_certificate(tls: TLSSettings) -> ssl.PrivateCertificate | None:
    if tls.certificate is None:
        return None
    key_path = tls.private_key or tls.certificate
    cert_pem = _read(tls.certificate)
    # the first certificate of the file is ours; a key file may also be the certificate file
    first = x509.load_pem_x509_certificates(cert_pem)[0].public_bytes(Encoding.PEM)
    return ssl.PrivateCertificate.loadPEM(first + b"\n" + _read(key_path))


def server_options(tls: TLSSettings) -> ssl.CertificateOptions:
    """The server's TLS context factory: its certificate; client certificates required and
    verified against ``tls.ca`` when it is set."""
    own = _own_certificate(tls)
    if own is None:
        raise ValueError("a TLS server needs a certificate")
    kwargs = {}
    if tls.ca is not None:
        kwargs["trustRoot"] = ssl.trustRootFromCertificates(_ca_certificates(tls.ca))
    return ssl.CertificateOptions(privateKey=own.privateKey.original, certificate=own.original, **kwargs)


def client_options(tls: TLSSettings, host: str):
    """The client's TLS connection creator: verify the server for *host* (or ``tls.server_name``)
    against ``tls.ca``, present this node's certificate when one is configured."""
    trust = ssl.trustRootFromCertificates(_ca_certificates(tls.ca)) if tls.ca is not None else ssl.platformTrust()
    return ssl.optionsForClientTLS(tls.server_name or host, trustRoot=trust, clientCertificate=_own_certificate(tls))


class _RefusingTLSFactory(TLSMemoryBIOFactory):
    """TLS around a factory that may refuse a connection (``buildProtocol`` -> ``None``, the
    guard's allow-list and connection cap): the refusal closes the socket before any handshake."""

    def buildProtocol(self, addr):
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """A server endpoint whose connections speak TLS (the wrapped endpoint carries the bytes)."""

    def __init__(self, wrapped: IStreamServerEndpoint, options: ssl.CertificateOptions) -> None:
        self.wrapped = wrapped
        self.options = options

    def listen(self, protocolFactory):  # noqa: N803 - Twisted's interface name
        return self.wrapped.listen(_RefusingTLSFactory(self.options, False, protocolFactory))


def check_override(option: str, spec: str, tls: TLSSettings | None) -> None:
    """A command-line endpoint replacing the file's: with ``[tls]`` it must be ``tcp:``/``tcp6:``.

    :raises usage.UsageError: an ``ssl:`` (or other) endpoint would be wrapped in TLS twice.
    """
    if tls is not None and spec.split(":", 1)[0] not in ("tcp", "tcp6"):
        raise usage.UsageError(f"--{option} {spec}: the file has a [tls] table, which wraps a tcp: endpoint in TLS")


def endpoint_host(spec: str) -> str:
    """The host of a ``tcp:`` client endpoint string (``host=`` or the first positional field)."""
    fields = _FIELD_SPLIT.split(spec)[1:]
    positional = [f for f in fields if "=" not in f]
    for field in fields:
        if field.startswith("host="):
            return field[5:].replace("\\:", ":")
    if positional:
        return positional[0].replace("\\:", ":")
    raise ValueError(f"{spec!r} names no host")


def wrap_server(endpoint: IStreamServerEndpoint, tls: TLSSettings) -> IStreamServerEndpoint:
    """*endpoint* wrapped in TLS with the options of *tls*."""
    return TLSServerEndpoint(endpoint, server_options(tls))


def server_endpoint(reactor, spec: str, tls: TLSSettings | None) -> IStreamServerEndpoint:
    """``serverFromString(reactor, spec)``, wrapped in TLS when *tls* is given.

    :raises StartupError: a malformed *spec*, named in one line (:mod:`bcast_sp4.ops.startup`).
    """
    endpoint = parse_server_endpoint(reactor, spec)
    if tls is None:
        return endpoint
    return wrap_server(endpoint, tls)


def client_endpoint(reactor, spec: str, tls: TLSSettings | None) -> IStreamClientEndpoint:
    """``clientFromString(reactor, spec)``, wrapped in TLS when *tls* is given.

    :raises StartupError: a malformed *spec*, named in one line (:mod:`bcast_sp4.ops.startup`).
    """
    endpoint = parse_client_endpoint(reactor, spec)
    if tls is None:
        return endpoint
    return wrapClientTLS(client_options(tls, endpoint_host(spec)), endpoint)


__all__ = ["TLSServerEndpoint", "check_override", "client_endpoint", "client_options", "endpoint_host",
           "server_endpoint", "server_options", "wrap_server"]
