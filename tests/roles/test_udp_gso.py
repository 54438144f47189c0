"""SegmentedSender: many datagrams per send with UDP GSO, received exactly as sent; real sockets on
127.0.0.1 and ::1 (Linux), plus doubles for the error paths."""

from __future__ import annotations

import errno
import socket
import sys

import pytest

from bcast_sp4.roles.udp_gso import MAX_SEGMENT_V4, MAX_SEGMENTS, SegmentedSender, gso_supported

from ..doubles import FakeSocket

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="UDP GSO is Linux's")


def pair(family=socket.AF_INET, host="127.0.0.1"):
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    receiver.bind((host, 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    receiver.settimeout(5.0)  # loopback delivers within the send; the timeout only bounds a failure
    sender = socket.socket(family, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname()[:2])
    return sender, receiver


def receive(receiver, count):
    return [receiver.recv(65536) for _ in range(count)]


def mixed():
    """Runs longer than one send takes, a shorter one closing a run, sizes over the largest segment,
    an empty datagram, lone datagrams between runs."""
    out = [bytes([k % 256]) * 200 for k in range(MAX_SEGMENTS + 10)]  # two GSO sends
    out += [b"short"]  # closes the second run
    out += [b"L" * (MAX_SEGMENT_V4 + 1)] * 3  # too large to group: one send each
    out += [b""]  # empty: sent alone
    out += [b"a" * 7, b"b" * 7, b"c" * 9, b"d" * 7, b"e" * 3, b"f" * 3]
    out += [bytes([k]) * 1000 for k in range(70)]  # 65 x 1000 bytes fit one send's byte budget
    return out


@linux
def test_every_datagram_arrives_as_sent_and_in_order():
    sender, receiver = pair()
    try:
        gso = SegmentedSender(sender)
        assert gso.enabled and gso_supported(sender)
        payloads = mixed()
        assert gso.send_all(payloads) == []
        assert gso.enabled
        assert receive(receiver, len(payloads)) == payloads
    finally:
        sender.close()
        receiver.close()


@linux
def test_ipv6_too():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sender, receiver = pair(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no ::1")
    try:
        gso = SegmentedSender(sender, ipv6=True)
        payloads = [b"x" * 1452] * 5 + [b"y" * 1453] * 2 + [b"z" * 40] * 100
        assert gso.send_all(payloads) == []
        assert receive(receiver, len(payloads)) == payloads
    finally:
        sender.close()
        receiver.close()


class Segmenting(FakeSocket):
    """A socket double with ``sendmsg``: records each GSO send's buffer and segment size, or fails."""

    def __init__(self, fail_gso: OSError | None = None) -> None:
        super().__init__()
        self.fail_gso = fail_gso
        self.gso: list[tuple[bytes, int]] = []

    def sendmsg(self, buffers, ancillary):
        ((level, kind, size),) = ancillary
        if self.fail_gso is not None:
            raise self.fail_gso
        self.gso.append((b"".join(buffers), int.from_bytes(size, sys.byteorder)))
        return len(self.gso[-1][0])


def test_a_socket_that_cannot_segment_turns_gso_off_and_loses_nothing():
    sock = Segmenting(fail_gso=OSError(errno.EIO, "no checksum offload"))
    gso = SegmentedSender(sock, enabled=True)
    payloads = [b"a"] * 3 + [b"bb"] * 3
    assert gso.send_all(payloads) == []
    assert not gso.enabled and gso.disabled_by.errno == errno.EIO
    assert sock.sent == payloads and sock.gso == []


def test_another_error_fails_the_first_datagram_of_the_run_only():
    sock = Segmenting(fail_gso=OSError(errno.ENOBUFS, "queue full"))
    gso = SegmentedSender(sock, enabled=True)
    failures = gso.send_all([b"a1", b"a2", b"a3", b"b"])  # one run of three 2-byte ones, the 1-byte one closing it
    assert [e.errno for e in failures] == [errno.ENOBUFS]
    assert sock.sent == [b"a2", b"a3", b"b"] and gso.enabled


def test_runs_become_one_send_each_with_their_segment_size():
    sock = Segmenting()
    gso = SegmentedSender(sock, enabled=True)
    assert gso.send_all([b"aa", b"bb", b"c", b"dd", b"eee", b"fff"]) == []
    assert sock.gso == [(b"aabbc", 2), (b"eeefff", 3)]
    assert sock.sent == [b"dd"]


def test_without_sendmsg_or_for_a_lone_datagram_plain_sends():
    plain = FakeSocket()  # no sendmsg: the roles' test doubles stay datagram by datagram
    gso = SegmentedSender(plain)
    assert not gso_supported(plain) and not gso.enabled
    assert gso.send_all([b"x", b"y"]) == [] and plain.sent == [b"x", b"y"]
    sock = Segmenting()
    assert SegmentedSender(sock, enabled=True).send_all([b"lone"]) == []
    assert sock.sent == [b"lone"] and sock.gso == []


@linux
def test_multicast_receivers_get_every_datagram_too():
    group = "239.255.7.7"
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        receiver.bind((group, 0))
        try:
            receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                                socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
        except OSError:
            pytest.skip("no multicast on the loopback interface")
        receiver.settimeout(5.0)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sender.connect((group, receiver.getsockname()[1]))
        gso = SegmentedSender(sender)
        payloads = [bytes([k]) * 300 for k in range(100)] + [b"end"]
        assert gso.send_all(payloads) == [] and gso.enabled
        assert receive(receiver, len(payloads)) == payloads
    finally:
        sender.close()
        receiver.close()


def test_one_size_throughout_goes_in_sends_of_the_kernels_segment_limit():
    sock = Segmenting()
    gso = SegmentedSender(sock, enabled=True)
    payloads = [bytes([k]) * 100 for k in range(200)]
    assert gso.send_all(payloads) == []
    assert [(len(buffer) // size, size) for buffer, size in sock.gso] == [(64, 100)] * 3 + [(8, 100)]
    assert b"".join(buffer for buffer, _ in sock.gso) == b"".join(payloads) and sock.sent == []
    big = Segmenting()
    SegmentedSender(big, enabled=True).send_all([b"x" * 1400] * 100)  # 46 x 1,400 bytes fit one send's 65,507
    assert [len(buffer) // 1400 for buffer, _ in big.gso] == [46, 46, 8]
