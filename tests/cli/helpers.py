"""Running ``bcast-sp4`` in-process, and a synthetic lab capture with known keys and TEKs."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from bcast_sp4.bcast import ltkm_drm, stkm_drm, stkm_mikey, traffic
from bcast_sp4.bcast.keys import KeyRole, ServiceKey
from bcast_sp4.tools.capture import PcapWriter, TcpFlow
from bcast_sp4.tools.cli import main
from bcast_sp4.wire import ecmg_scs as E
from bcast_sp4.wire import emmg_mux as M
from bcast_sp4.wire.params import CPCWCombination

ROOT = Path(__file__).resolve().parents[2]
START = 1_764_000_000.0  # 2025-11-24T16:00:00Z
DRM_SCID, CARD_SCID, CLIENT = 0x00010001, 0x00020001, 0x00010001


class FakeStdin(io.StringIO):
    def __init__(self, text: str = "", tty: bool = False) -> None:
        super().__init__(text)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def run(argv, stdin: str = "", tty: bool = False):
    """``(status, stdout, stderr)`` of ``bcast-sp4 <argv>`` run in-process."""
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin
    sys.stdin = FakeStdin(stdin, tty)
    try:
        status = main(argv, out, err)
    finally:
        sys.stdin = old
    return status, out.getvalue(), err.getvalue()


def run_json(argv):
    status, out, err = run(["decode", "--json", *argv])
    return status, [json.loads(line) for line in out.splitlines()], err


# Keys: the values of etc/keys.example.toml (so a test can also load that file).
SEK = ServiceKey(key_id=1, key=bytes(range(16)), authentication_key=bytes.fromhex("5341b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1"),
                 name="lab-drm-sek", not_before=1704067200, not_after=2082758400)
MSK = ServiceKey(key_id=0x00010001, key=bytes(range(15, -1, -1)), key_domain_id=bytes.fromhex("02f810"),
                 name="lab-smartcard-msk", not_before=1704067200, not_after=2082758400)
PEK = ServiceKey(key_id=0x101, key=bytes(range(16, 32)), role=KeyRole.PROGRAMME, name="lab-drm-pek",
                 authentication_key=bytes.fromhex("5041a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1"),
                 not_before=1704067200, not_after=2082758400)
KEY_FILE = ROOT / "etc" / "keys.example.toml"
DEVICE_ID, DEVICE_KEY = bytes.fromhex("0ba5e0000001"), bytes.fromhex("d0d1d2d3d4d5d6d7d8d9dadbdcdddedf")
SUBSCRIBERS = ROOT / "etc" / "lab" / "subscribers.toml"

SRTP_TEKS = [traffic.SRTPMaterial(master_key=bytes([n]) * 16, master_salt=bytes([n + 0x10]) * 14, mki=bytes([0xA0, n]))
             for n in range(3)]
IPSEC_TEKS = [traffic.IPsecMaterial(spi=0x1000 + n, encryption_key=bytes([0x30 + n]) * 16) for n in range(3)]
ISMA_TEK = traffic.ISMACrypMaterial(key=b"\x77" * 16, salt=b"\x88" * 8, key_indicator=b"\x05\x06\x07")


def drm_stkm(cp: int) -> bytes:
    return stkm_drm.build_stkm(SRTP_TEKS[cp], SEK, next_material=SRTP_TEKS[cp + 1], timestamp=START)


def mikey_stkm(cp: int) -> bytes:
    return stkm_mikey.build_stkm(IPSEC_TEKS[cp], MSK, counter=100 + cp, next_material=IPSEC_TEKS[cp + 1])


def ltkm() -> bytes:
    return ltkm_drm.build_ltkm(DEVICE_ID, DEVICE_KEY, [SEK], issued_at=START, sequence=7)


def v1_data_id_provision(datagram: bytes) -> bytes:
    """What the deviant EMMG sends: a data_provision with version byte 1 carrying data_id."""
    frame = bytearray(M.DataProvision(protocol_version=2, client_id=CLIENT, data_channel_id=1, data_stream_id=1,
                                      data_id=1, datagram=(datagram,)).encode())
    frame[0] = 1
    return bytes(frame)


def lab_capture(path: Path, *, ecmg_port: int = 3333, mux_port: int = 6666, syn: bool = True, noise: bool = True) -> Path:
    """A capture of a DRM and a Smartcard STKM session (ECMG on *ecmg_port*), an LTKM session
    (MUX on *mux_port*, TCP and UDP), and, with *noise*, an HTTP-like TCP exchange and DNS-like
    UDP datagrams that are not SimulCrypt."""
    with open(path, "wb") as f:
        writer = PcapWriter(f, start=START)
        for client, scid, channel, stkm in ((41001, DRM_SCID, 1, drm_stkm), (41002, CARD_SCID, 2, mikey_stkm)):
            flow = TcpFlow(writer, ("10.0.0.1", client), ("10.0.0.2", ecmg_port))
            if syn:
                flow.handshake()
            flow.send(E.ChannelSetup(ECM_channel_id=channel, Super_CAS_id=scid).encode())
            flow.send(E.StreamSetup(ECM_channel_id=channel, ECM_stream_id=1, ECM_id=1, nominal_CP_duration=100).encode())
            tek = SRTP_TEKS if scid == DRM_SCID else IPSEC_TEKS
            for cp in range(2):
                flow.send(E.CWProvision(ECM_channel_id=channel, ECM_stream_id=1, CP_number=cp, CP_CW_combination=(
                    CPCWCombination(cp, traffic.encode_cw(tek[cp])), CPCWCombination(cp + 1, traffic.encode_cw(tek[cp + 1])))).encode())
                flow.reply(E.ECMResponse(ECM_channel_id=channel, ECM_stream_id=1, CP_number=cp, ECM_datagram=stkm(cp)).encode())
            flow.close()
        if noise:
            http = TcpFlow(writer, ("10.0.0.1", 41500), ("10.0.0.9", 80))
            http.handshake()
            http.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            http.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            http.close()
            writer.write_udp(("10.0.0.1", 41600), ("10.0.0.53", 53), bytes.fromhex("12340100000100000000000003777777"))
        mux = TcpFlow(writer, ("10.0.0.1", 41003), ("10.0.0.3", mux_port))
        mux.handshake()
        mux.send(M.ChannelSetup(client_id=CLIENT, data_channel_id=1, section_TSpkt_flag=2).encode())
        mux.send(M.StreamSetup(client_id=CLIENT, data_channel_id=1, data_stream_id=1, data_id=1, data_type=0).encode())
        mux.send(M.DataProvision(client_id=CLIENT, data_channel_id=1, data_stream_id=1, data_id=1, datagram=(ltkm(),)).encode())
        mux.close()
        writer.write_udp(("10.0.0.1", 41004), ("10.0.0.3", mux_port),
                         M.DataProvision(client_id=CLIENT, data_id=1, datagram=(ltkm(),)).encode())
    return path
