"""The ``[limits]`` and ``[tls]`` tables every role file may carry -> :class:`Limits`, :class:`TLSSettings`.

One reader for the four role loaders (ECMG, MUX: servers; SCS, EMMG: clients), so the
connection guard (:mod:`bcast_sp4.roles.guard`) and the TLS set-up (:mod:`bcast_sp4.tap.tls`)
are configured the same way everywhere. Pure: no Twisted, no sockets; the TLS files are only
checked to exist here, their contents are read when the role starts.

Defaults protect a server out of the box (issue #13): 30 s to the first channel_setup, 10 s to
complete a started message, a channel silent for 60 s gets a channel_test and is closed when 10 s
pass without an answer, at most 2,048 connections (with or without a channel), 256 KiB buffered
per connection and 16 MiB in total, 64 messages (and 1 ms) per connection per reactor turn.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import attrs

from ._reader import Reader
from .keyfile import check_private

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen(kw_only=True)
class Limits:
    """Per-connection budgets and timeouts, and the peer allow-lists (times in seconds; 0 = off).

    :ivar messages_per_turn: messages one connection may have handled per reactor turn; the rest
        waits for the next turn with reading paused.
    :ivar turn_time: nor more messages once this long has passed in the turn (0 = no time limit).
    :ivar first_channel_setup_timeout: a server closes a connection without a channel this long.
    :ivar message_timeout: a started message must be complete this long after its first byte.
    :ivar idle_timeout: a server sends channel_test on a channel silent this long ...
    :ivar channel_test_timeout: ... and closes it when no message follows within this.
    :ivar max_connections: connections a server holds at once, with or without a channel.
    :ivar max_buffered_bytes: received bytes not yet handled, per connection.
    :ivar max_buffered_bytes_total: the same, all connections of the role together.
    :ivar max_buffered_bytes_no_channel: (servers) bytes of an unfinished message a connection
        without a channel may hold (it may only send a channel_setup, a few dozen bytes; 0 = no
        bound but ``max_buffered_bytes``).
    :ivar log_window: repeated warnings about one peer are summarised per this window ...
    :ivar log_burst: ... after this many were logged one by one.
    :ivar allow: TCP peers accepted (CIDR networks); ``None``: any.
    :ivar udp_allow: UDP sources accepted; ``None``: any.
    """

    messages_per_turn: int = 64
    turn_time: float = 0.001
    first_channel_setup_timeout: float = 30.0
    message_timeout: float = 10.0
    idle_timeout: float = 60.0
    channel_test_timeout: float = 10.0
    max_connections: int = 2048
    max_buffered_bytes: int = 256 * 1024
    max_buffered_bytes_total: int = 16 * 1024 * 1024
    max_buffered_bytes_no_channel: int = 4096
    log_window: float = 10.0
    log_burst: int = 5
    allow: tuple[Network, ...] | None = None
    udp_allow: tuple[Network, ...] | None = None


@attrs.frozen(kw_only=True)
class TLSSettings:
    """TLS on a role's TCP connections (the role's ``tcp:`` endpoints are wrapped in TLS).

    :ivar certificate: PEM file with this end's certificate (a server needs one; a client only
        for mutual TLS).
    :ivar private_key: PEM file with its private key (default: the certificate file).
    :ivar ca: PEM file of the CA certificates the peer's certificate must chain to. On a server
        it makes client certificates required (mutual TLS); a client always verifies the server.
    :ivar server_name: (clients) the name or IP address the server's certificate must carry;
        ``None``: the host of the endpoint string.
    """

    certificate: Path | None = None
    private_key: Path | None = None
    ca: Path | None = None
    server_name: str | None = None


def _networks(table: Reader, key: str) -> tuple[Network, ...] | None:
    texts = table.string_list(key, None)
    if texts is None:
        return None
    out = []
    for text in texts:
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise table.fail(key, f"{text!r} is not an address or CIDR network (10.0.0.0/8, ::1)") from None
    return tuple(out)


def read_limits(root: Reader, *, server: bool, udp: bool = False, max_message_length: int = 65540,
                table: Reader | None = None) -> Limits:
    """The ``[limits]`` table of a role file (absent: the defaults).

    :param server: the role accepts connections (ECMG, MUX): the channel timeouts, the connection
        cap and the TCP allow-list apply; a client (SCS, EMMG) reads only the budgets.
    :param udp: the role receives UDP (MUX data_provision, SCS scrambler input): ``udp_allow``.
    :param max_message_length: the role's longest message; a connection must be able to buffer one.
    :param table: the ``[limits]`` reader when the role's loader reads keys of its own from the same
        table first (the MUX's STKM caps); ``None``: ``root.sub("limits")``.
    :raises ConfigError: naming the key.
    """
    table = root.sub("limits") if table is None else table
    d = Limits()
    kwargs: dict = dict(
        messages_per_turn=table.integer("messages_per_turn", d.messages_per_turn, 1, 1_000_000),
        turn_time=table.number("turn_time", d.turn_time, 0.0, 10.0),
        message_timeout=table.number("message_timeout", d.message_timeout, 0.0, 3600.0),
        max_buffered_bytes=table.integer("max_buffered_bytes", d.max_buffered_bytes, 1, 1 << 32),
        max_buffered_bytes_total=table.integer("max_buffered_bytes_total", d.max_buffered_bytes_total, 1, 1 << 40),
        log_window=table.number("log_window", d.log_window, 0.001, 86400.0),
        log_burst=table.integer("log_burst", d.log_burst, 0, 1_000_000),
    )
    if server:
        kwargs.update(
            first_channel_setup_timeout=table.number("first_channel_setup_timeout", d.first_channel_setup_timeout,
                                                     0.0, 86400.0),
            idle_timeout=table.number("idle_timeout", d.idle_timeout, 0.0, 86400.0),
            channel_test_timeout=table.number("channel_test_timeout", d.channel_test_timeout, 0.001, 3600.0),
            max_connections=table.integer("max_connections", d.max_connections, 1, 1_000_000),
            max_buffered_bytes_no_channel=table.integer("max_buffered_bytes_no_channel",
                                                        d.max_buffered_bytes_no_channel, 0, 1 << 32),
            allow=_networks(table, "allow"),
        )
    if udp:
        kwargs["udp_allow"] = _networks(table, "udp_allow")
    table.no_unknown_keys()
    if kwargs["max_buffered_bytes"] < max_message_length:
        raise table.fail("max_buffered_bytes", f"{kwargs['max_buffered_bytes']} is less than one message of "
                                               f"max_message_length ({max_message_length}) bytes")
    if kwargs["max_buffered_bytes_total"] < kwargs["max_buffered_bytes"]:
        raise table.fail("max_buffered_bytes_total", "less than max_buffered_bytes")
    return Limits(**kwargs)


def _file(table: Reader, key: str, default: Path | None = None) -> Path | None:
    text = table.string(key, None)
    if text is None:
        return default
    given = Path(text)
    resolved = given if given.is_absolute() else (table.path.parent / given).resolve()
    if not resolved.is_file():
        raise table.fail(key, f"{resolved} is not a file")
    return resolved


def read_tls(root: Reader, *, server: bool) -> TLSSettings | None:
    """The ``[tls]`` table of a role file; ``None`` when absent (plain TCP, or ``ssl:`` endpoints).

    :param server: the role accepts connections: ``certificate`` is required and ``ca`` asks for
        client certificates; a client needs ``ca`` and may give ``server_name``.
    :raises ConfigError: naming the key.
    """
    present = root.has("tls")
    table = root.sub("tls")
    certificate = _file(table, "certificate")
    private_key = _file(table, "private_key", certificate)
    ca = _file(table, "ca")
    server_name = None if server else table.string("server_name", None)
    allow_readable = table.boolean("allow_readable_private_key", False)
    table.no_unknown_keys()
    if not present:
        return None
    if private_key is not None:  # key material: as the key and subscriber files (config/keyfile.py)
        check_private(table, "private_key" if table.has("private_key") else "certificate", private_key,
                      allow_readable, "allow_readable_private_key")
    if server and certificate is None:
        raise table.fail("certificate", "missing: a TLS server needs its certificate")
    if not server and ca is None:
        raise table.fail("ca", "missing: a TLS client verifies the server against these CA certificates")
    if private_key is not None and certificate is None:
        raise table.fail("private_key", "given without certificate")
    return TLSSettings(certificate=certificate, private_key=private_key, ca=ca, server_name=server_name)


def check_tls_endpoint(table: Reader, key: str, endpoint: str | None, tls: TLSSettings | None) -> None:
    """With ``[tls]`` the endpoint is wrapped in TLS: it must be a plain ``tcp:``/``tcp6:`` one.

    :raises ConfigError: an ``ssl:``/``tls:``/``unix:`` endpoint together with ``[tls]``.
    """
    if tls is not None and endpoint is not None and endpoint.split(":", 1)[0] not in ("tcp", "tcp6"):
        raise table.fail(key, f"{endpoint!r}: with a [tls] table write a tcp: endpoint (it is wrapped in TLS)")


__all__ = ["Limits", "Network", "TLSSettings", "check_tls_endpoint", "read_limits", "read_tls"]
