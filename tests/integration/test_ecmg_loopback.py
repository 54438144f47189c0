"""The ECMG as a real ``twistd -n bcast-ecmg`` process over real TCP on 127.0.0.1.

Covers every message and error path, 100 channels x 10 streams at once, STKMs that decrypt to the
provisioned TEKs for both profiles x IPsec / SRTP / ISMACryp, and a captured session that
Wireshark decodes (SimulCrypt, and MIKEY for the Smartcard Profile).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import textwrap

import pytest

from bcast_sp4 import wire
from bcast_sp4.bcast import stkm_drm, stkm_mikey, traffic
from bcast_sp4.bcast.cw_encryption import CWAlgorithm, encrypt
from bcast_sp4.bcast.ecm import parse_dvb_ecm
from bcast_sp4.config import load_keyfile
from bcast_sp4.tools.capture import PcapWriter, TcpFlow
from bcast_sp4.wire import ecmg_scs as m
from bcast_sp4.wire.params import CPCWCombination as CW

from .harness import CARD_SCID, DRM_SCID, DVB_SCID, Client, RoleProcess

PORT_LOG = r"ECMGFactory starting on (\d+)"
DVB_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
CW_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
BULK = range(1000, 2000)  # DRM ECM_ids for the 100 x 10 load test


def write_keys(path):
    streams = "\n".join(
        f'[[streams]]\nsuper_cas_id = {DRM_SCID:#010x}\necm_id = {ecm_id}\nkeys = ["drm-sek"]\n'
        for ecm_id in [1, 2, 3, *BULK]
    )
    path.write_text(
        textwrap.dedent(
            """\
            format = 1
            [keys.drm-sek]
            key_id = 0x00000001
            key = "000102030405060708090a0b0c0d0e0f"
            authentication_key = "5341b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1"
            [keys.drm-pek]
            role = "programme"
            key_id = 0x00000101
            key = "101112131415161718191a1b1c1d1e1f"
            authentication_key = "5041a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1"
            [keys.card-msk]
            key_id = 0x00010001
            key_domain_id = "02f810"
            key = "0f0e0d0c0b0a09080706050403020100"
            [keys.expired]
            key_id = 0x00000009
            key = "202122232425262728292a2b2c2d2e2f"
            authentication_key = "6041a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1"
            not_after = 2020-01-01T00:00:00Z
            [[streams]]
            super_cas_id = 0x00010001
            ecm_id = 900
            keys = ["expired"]
            [[streams]]
            super_cas_id = 0x00010001
            ecm_id = 4
            keys = ["drm-sek", "drm-pek"]
            """
        )
        + streams
        + "".join(
            f'[[streams]]\nsuper_cas_id = {CARD_SCID:#010x}\necm_id = {ecm_id}\nkeys = ["card-msk"]\n' for ecm_id in (1, 2, 3)
        )
    )


def write_config(directory, **limits):
    write_keys(directory / "keys.toml")
    (directory / "keys.toml").chmod(0o600)  # the ECMG refuses a key file others may read
    ecmg = {"max_channels": 1000, "max_streams": 100000, "max_invalid_messages": 3, "max_message_length": 4096, **limits}
    lines = "\n".join(f"{k} = {v}" for k, v in ecmg.items())
    config = directory / "ecmg.toml"
    config.write_text(
        f"""[ecmg]
endpoint = "tcp:0:interface=127.0.0.1"
key_file = "keys.toml"
{lines}
[channel]
max_comp_time = 10000  # ms: generous; these tests check replies, not deadlines (1,000 CW_provisions at once on a busy machine wait longer than 200 ms in fair turns, and a late one is answered 0x000D)
[[cas]]
super_CAS_id = {DRM_SCID:#010x}
mode = "drm"
[[cas]]
super_CAS_id = {CARD_SCID:#010x}
mode = "smartcard"
[[cas]]
super_CAS_id = {DVB_SCID:#010x}
mode = "dvb-sections"
key = "{DVB_KEY.hex()}"
[[cas]]
super_CAS_id = 0x4AE60001
mode = "dvb-ts"
key = "{DVB_KEY.hex()}"
[[cw_encryption_key]]
key_id = 7
key = "{CW_KEY.hex()}"
"""
    )
    return config


@pytest.fixture(scope="module")
def ecmg(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ecmg")
    process = RoleProcess("bcast-ecmg", write_config(directory), PORT_LOG)
    process.keys = load_keyfile(directory / "keys.toml")
    yield process
    assert process.stop() == 0
    assert "Traceback" not in process.text()


def open_channel(port, channel_id, scid=DRM_SCID, version=3):
    client = Client(port)
    client.channel_id = channel_id
    status = client.request(m.ChannelSetup(protocol_version=version, ECM_channel_id=channel_id, Super_CAS_id=scid))
    assert isinstance(status, m.ChannelStatus), status
    return client, status


def open_stream(client, channel_id, stream_id, ecm_id, version=3):
    reply = client.request(
        m.StreamSetup(protocol_version=version, ECM_channel_id=channel_id, ECM_stream_id=stream_id, ECM_id=ecm_id, nominal_CP_duration=20)
    )
    assert isinstance(reply, m.StreamStatus), reply
    return reply


def provision(channel_id, stream_id, cp, cws, version=3, **kw):
    return m.CWProvision(
        protocol_version=version,
        ECM_channel_id=channel_id,
        ECM_stream_id=stream_id,
        CP_number=cp,
        CP_CW_combination=tuple(CW(c, w) for c, w in cws),
        **kw,
    )


def error_code(reply, cls):
    assert isinstance(reply, cls), reply
    return reply.error_status[0]


# -- full sessions: every message, STKMs that decrypt to the TEKs -----------------------------

PROTECTIONS = list(traffic.TrafficProtection)


@pytest.mark.parametrize("scid", [DRM_SCID, CARD_SCID], ids=["drm", "smartcard"])
@pytest.mark.parametrize("protection", PROTECTIONS, ids=[p.name.lower() for p in PROTECTIONS])
def test_full_session_stkms_decrypt_to_provisioned_teks(ecmg, scid, protection, tmp_path):
    channel_id = 10 + protection * 2 + (scid == CARD_SCID)
    client, status = open_channel(ecmg.port, channel_id, scid)
    assert status.section_TSpkt_flag == 0x02 and (status.lead_CW, status.CW_per_msg) == (1, 2)
    assert isinstance(client.request(m.ChannelTest(ECM_channel_id=channel_id)), m.ChannelStatus)
    ecm_id = 1 + protection
    assert open_stream(client, channel_id, 1, ecm_id).ECM_id == ecm_id
    assert isinstance(client.request(m.StreamTest(ECM_channel_id=channel_id, ECM_stream_id=1)), m.StreamStatus)
    teks = {cp: traffic.generate(protection) for cp in range(100, 112)}
    for cp in range(100, 110):
        reply = client.request(
            provision(channel_id, 1, cp, [(cp, traffic.encode_cw(teks[cp])), (cp + 1, traffic.encode_cw(teks[cp + 1]))])
        )
        assert isinstance(reply, m.ECMResponse), reply
        assert (reply.ECM_channel_id, reply.ECM_stream_id, reply.CP_number) == (channel_id, 1, cp)
        parser = stkm_drm if scid == DRM_SCID else stkm_mikey
        parsed = parser.parse_stkm(reply.ECM_datagram, ecmg.keys)
        assert parsed.material == teks[cp]
        assert parsed.next_material == teks[cp + 1]
    assert isinstance(client.request(m.StreamCloseRequest(ECM_channel_id=channel_id, ECM_stream_id=1)), m.StreamCloseResponse)
    client.send(m.ChannelClose(ECM_channel_id=channel_id))
    assert client.is_closed_by_peer(timeout=0.3) is False  # channel_close has no answer; TCP stays up
    client.close()
    check_capture(client.transcript, tmp_path / "session.pcap", mikey=scid == CARD_SCID, provisions=10)


def check_capture(transcript, path, mikey, provisions):
    with open(path, "wb") as f:
        flow = TcpFlow(PcapWriter(f), ("127.0.0.1", 43000), ("127.0.0.1", 2222))
        flow.handshake()
        for side, data in transcript:
            (flow.send if side == "c" else flow.reply)(data)
        flow.close()
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.fail("tshark is missing (apt-get install tshark)")
    cmd = [tshark, "-r", str(path), "-d", "tcp.port==2222,simulcrypt", "-T", "json", "--no-duplicate-keys"]
    if mikey:
        cmd += ["-o", "simulcrypt.ca_system_id_mikey:0x0002"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "_ws.malformed" not in result.stdout
    for marker in ('"_ws.expert.severity": "6291456"', '"_ws.expert.severity": "8388608"'):
        assert marker not in result.stdout  # no warning or error expert info
    packets = [p["_source"]["layers"] for p in json.loads(result.stdout)]
    types = []
    for layers in packets:
        if "simulcrypt" in layers:
            for layer in layers["simulcrypt"] if isinstance(layers["simulcrypt"], list) else [layers["simulcrypt"]]:
                types.append(int(layer["simulcrypt.header"]["simulcrypt.message.type"], 0))
    assert types.count(0x0201) == provisions and types.count(0x0202) == provisions
    if mikey:  # the MIKEY layer sits inside the SimulCrypt parameter of each ECM_response
        dissected = [json.dumps(layers) for layers in packets if '"mikey.kemac"' in json.dumps(layers)]
        assert len(dissected) == provisions, "ECM_datagrams were not all handed to the MIKEY dissector"
        for text in dissected:
            assert all(f'"{field}"' in text for field in ("mikey.hdr", "mikey.t", "mikey.ext", "mikey.kemac.mac"))


def test_protocol_v1_and_v2_sessions(ecmg):
    for version, channel_id in ((1, 60), (2, 61)):
        client, status = open_channel(ecmg.port, channel_id, DRM_SCID, version=version)
        assert status.protocol_version == version
        setup = m.StreamSetup(
            protocol_version=version, ECM_channel_id=channel_id, ECM_stream_id=1,
            ECM_id=None if version == 1 else 3, nominal_CP_duration=20,
        )
        reply = client.request(setup)
        if version == 1:  # no ECM_id in v1: stkmstream 0 has no key here -> BCAST "no key"
            assert error_code(reply, m.StreamError) == 0xFF01
        else:
            assert isinstance(reply, m.StreamStatus) and reply.protocol_version == 2
        client.close()


def test_dvb_modes_sections_and_ts_packets(ecmg):
    from bcast_sp4.bcast.ecm import depacketize

    for scid, channel_id in ((DVB_SCID, 70), (0x4AE60001, 71)):
        client, status = open_channel(ecmg.port, channel_id, scid)
        assert status.section_TSpkt_flag == (0 if scid == DVB_SCID else 1)
        open_stream(client, channel_id, 1, 5)
        cws = [(41, bytes(range(8))), (42, bytes(range(8, 16)))]
        reply = client.request(provision(channel_id, 1, 41, cws))
        datagram = reply.ECM_datagram
        if scid != DVB_SCID:
            assert len(datagram) % 188 == 0 and datagram[0] == 0x47
            datagram = depacketize(datagram)
        assert datagram[0] == 0x81  # odd CP
        assert parse_dvb_ecm(datagram, DVB_KEY) == (5, 41, cws)
        client.close()


@pytest.mark.parametrize("algorithm", list(CWAlgorithm))
def test_cw_encryption(ecmg, algorithm):
    channel_id = 80 + algorithm
    client, _ = open_channel(ecmg.port, channel_id, DRM_SCID)
    open_stream(client, channel_id, 1, 3)
    teks = [traffic.generate(traffic.TrafficProtection.SRTP) for _ in range(2)]
    header, encrypted = encrypt(algorithm, 7, CW_KEY, [(5, traffic.encode_cw(teks[0])), (6, traffic.encode_cw(teks[1]))])
    reply = client.request(provision(channel_id, 1, 5, list(zip((5, 6), encrypted)), CW_encryption=header))
    assert isinstance(reply, m.ECMResponse), reply
    assert stkm_drm.parse_stkm(reply.ECM_datagram, ecmg.keys).material == teks[0]
    # a wrong key id is a BCAST "invalid traffic key material" error
    bad, encrypted = encrypt(algorithm, 8, CW_KEY, [(6, b"x" * 16), (7, b"y" * 16)])
    assert error_code(client.request(provision(channel_id, 1, 6, list(zip((6, 7), encrypted)), CW_encryption=bad)), m.StreamError) == 0xFF04
    client.close()


# -- every error path ---------------------------------------------------------------------------


def raw(version, message_type, *params):
    body = b"".join(struct.pack(">HH", t, len(v)) + v for t, v in params)
    return struct.pack(">BHH", version, message_type, len(body)) + body


def test_channel_level_errors(ecmg):
    # before channel_setup (a fresh connection each time: three errors in a row close one)
    early = Client(ecmg.port)
    assert error_code(early.request(m.ChannelTest(ECM_channel_id=200)), m.ChannelError) == 0x0006
    error = early.request(m.StreamTest(ECM_channel_id=200, ECM_stream_id=3))
    assert error_code(error, m.StreamError) == 0x0006 and error.ECM_stream_id == 3
    early.close()
    early = Client(ecmg.port)
    assert error_code(early.request(m.ChannelSetup(ECM_channel_id=200, Super_CAS_id=0x00010999)), m.ChannelError) == 0x0005
    assert error_code(early.request(raw(9, 0x0001, (0x000E, b"\x00\xc8"), (0x0001, b"\x00\x01\x00\x01"))), m.ChannelError) == 0x0002
    early.close()
    client = Client(ecmg.port)
    open_channel_on(client, 200)
    other, _ = open_channel(ecmg.port, 201)
    assert error_code(client.request(m.ChannelSetup(ECM_channel_id=200, Super_CAS_id=DRM_SCID)), m.ChannelError) == 0x0013
    assert error_code(client.request(m.ChannelSetup(ECM_channel_id=202, Super_CAS_id=DRM_SCID)), m.ChannelError) == 0x0008
    assert isinstance(client.request(m.ChannelTest(ECM_channel_id=200)), m.ChannelStatus)
    third = Client(ecmg.port)
    assert error_code(third.request(m.ChannelSetup(ECM_channel_id=201, Super_CAS_id=DRM_SCID)), m.ChannelError) == 0x0013
    assert error_code(client.request(m.ChannelTest(ECM_channel_id=999)), m.ChannelError) == 0x0006
    assert error_code(client.request(m.ChannelTest(protocol_version=2, ECM_channel_id=200)), m.ChannelError) == 0x0002
    assert isinstance(client.request(m.ChannelTest(ECM_channel_id=200)), m.ChannelStatus)  # resets the count
    # codec errors, each with its code; the channel id is read from the message
    cases = [
        (raw(3, 0x0202, (0x000E, b"\x00\xc8"), (0x000F, b"\x00\x01"), (0x0012, b"\x00\x01"), (0x0015, b"x")), 0x0001),
        (raw(3, 0x0011, (0x000E, b"\x00\xc8")), 0x0003),
        (raw(3, 0x0002, (0x000E, b"\x00\xc8"), (0x7ABC, b"")), 0x000E),
        (raw(3, 0x0002, (0x000E, b"\x00\x00\xc8")), 0x000F),
        (raw(3, 0x0002), 0x0010),
        (raw(3, 0x0002, (0x000E, b"\x00\xc8"), (0x000E, b"\x00\xc8")), 0x0010),
        (raw(3, 0x0003, (0x000E, b"\x00\xc8"), (0x0002, b"\x07")), 0x0011),
    ]
    for frame, code in cases:
        reply = client.request(frame)
        assert error_code(reply, m.ChannelError) == code, (frame.hex(), reply)
        assert isinstance(client.request(m.ChannelTest(ECM_channel_id=200)), m.ChannelStatus)
    # a message longer than max_message_length: 0x0004, and the stream stays in step
    long = m.ECMResponse(ECM_channel_id=200, ECM_stream_id=1, CP_number=1, ECM_datagram=bytes(5000)).encode()
    assert error_code(client.request(long), m.ChannelError) == 0x0004
    assert isinstance(client.request(m.ChannelTest(ECM_channel_id=200)), m.ChannelStatus)
    # status / error messages from the SCS are accepted silently
    client.send(m.ChannelStatus(ECM_channel_id=200, section_TSpkt_flag=2, delay_start=0, delay_stop=0, ECM_rep_period=1,
                                max_streams=0, min_CP_duration=1, lead_CW=1, CW_per_msg=2, max_comp_time=1))
    client.send(m.StreamError(ECM_channel_id=200, ECM_stream_id=1, error_status=(0x7000,)))
    assert isinstance(client.request(m.ChannelTest(ECM_channel_id=200)), m.ChannelStatus)
    for c in (client, other, third):
        c.close()


def open_channel_on(client, channel_id, scid=DRM_SCID):
    assert isinstance(client.request(m.ChannelSetup(ECM_channel_id=channel_id, Super_CAS_id=scid)), m.ChannelStatus)


def expect_error(client, message, code):
    """Send *message*, expect stream_error *code*, then a valid test (so errors never pile up)."""
    assert error_code(client.request(message), m.StreamError) == code
    reply = client.request(m.ChannelTest(ECM_channel_id=client.channel_id))
    assert isinstance(reply, m.ChannelStatus), reply


def test_stream_level_errors(ecmg):
    client, _ = open_channel(ecmg.port, 300)
    other, _ = open_channel(ecmg.port, 301)
    open_stream(client, 300, 1, 1)
    expect_error(client, m.StreamSetup(ECM_channel_id=300, ECM_stream_id=1, ECM_id=2, nominal_CP_duration=20), 0x0014)
    expect_error(other, m.StreamSetup(ECM_channel_id=301, ECM_stream_id=1, ECM_id=1, nominal_CP_duration=20), 0x0015)
    expect_error(client, m.StreamSetup(ECM_channel_id=300, ECM_stream_id=2, ECM_id=2, nominal_CP_duration=5), 0x0011)
    expect_error(client, m.StreamSetup(ECM_channel_id=300, ECM_stream_id=2, ECM_id=77, nominal_CP_duration=20), 0xFF01)
    expect_error(client, m.StreamSetup(ECM_channel_id=300, ECM_stream_id=2, ECM_id=900, nominal_CP_duration=20), 0xFF02)
    expect_error(client, m.StreamSetup(ECM_channel_id=301, ECM_stream_id=2, ECM_id=2, nominal_CP_duration=20), 0x0006)
    expect_error(client, m.StreamTest(ECM_channel_id=300, ECM_stream_id=9), 0x0007)
    expect_error(client, m.StreamCloseRequest(ECM_channel_id=300, ECM_stream_id=9), 0x0007)
    expect_error(client, provision(300, 9, 1, [(1, b"x"), (2, b"y")]), 0x0007)
    good = traffic.encode_cw(traffic.generate(traffic.TrafficProtection.IPSEC))
    expect_error(client, provision(300, 1, 5, [(5, good)]), 0x000B)
    expect_error(client, provision(300, 1, 5, [(4, good), (5, good)]), 0x000B)
    expect_error(client, provision(300, 1, 5, [(5, b"\x01\x07" + good[2:]), (6, good)]), 0xFF03)  # protocol 7
    expect_error(client, provision(300, 1, 5, [(5, good[:-1]), (6, good)]), 0xFF04)  # truncated TEK material
    expect_error(client, provision(300, 1, 5, [(5, good), (6, good)], access_criteria=b"\x01\x09"), 0x0011)
    assert isinstance(client.request(provision(300, 1, 5, [(5, good), (6, good)])), m.ECMResponse)
    other.close()
    client.close()


def test_limits_and_repeated_errors(tmp_path):
    process = RoleProcess("bcast-ecmg", write_config(tmp_path, max_channels=2, max_streams=3, max_invalid_messages=3), PORT_LOG)
    try:
        a, _ = open_channel(process.port, 1)
        b, _ = open_channel(process.port, 2)
        c = Client(process.port)
        assert error_code(c.request(m.ChannelSetup(ECM_channel_id=3, Super_CAS_id=DRM_SCID)), m.ChannelError) == 0x0008
        for stream_id in (1, 2):
            open_stream(a, 1, stream_id, stream_id)
        open_stream(b, 2, 1, 3)
        assert error_code(b.request(m.StreamSetup(ECM_channel_id=2, ECM_stream_id=2, ECM_id=4, nominal_CP_duration=20)), m.StreamError) == 0x000A
        assert isinstance(b.request(m.ChannelTest(ECM_channel_id=2)), m.ChannelStatus)
        # three invalid messages in a row close that connection, and only that one
        for _ in range(3):
            b.send(m.StreamTest(ECM_channel_id=2, ECM_stream_id=77))
        for _ in range(3):
            assert error_code(b.recv(), m.StreamError) == 0x0007
        assert b.is_closed_by_peer()
        assert isinstance(a.request(m.StreamTest(ECM_channel_id=1, ECM_stream_id=2)), m.StreamStatus)
        # the closed channel's resources are free again
        assert isinstance(c.request(m.ChannelSetup(ECM_channel_id=2, Super_CAS_id=DRM_SCID)), m.ChannelStatus)
        open_stream(c, 2, 1, 3)
        for client in (a, c):
            client.close()
    finally:
        assert process.stop() == 0
    assert "invalid messages in a row" in process.text()


def test_hundred_channels_of_ten_streams(ecmg):
    protection = traffic.TrafficProtection.SRTP
    clients = []
    ecm_ids = iter(BULK)
    for channel_id in range(1000, 1100):
        client, _ = open_channel(ecmg.port, channel_id)
        for stream_id in range(1, 11):
            client.send(m.StreamSetup(ECM_channel_id=channel_id, ECM_stream_id=stream_id, ECM_id=next(ecm_ids), nominal_CP_duration=20))
        clients.append((channel_id, client))
    for _, client in clients:
        assert all(isinstance(client.recv(), m.StreamStatus) for _ in range(10))
    teks = {}
    for channel_id, client in clients:  # all 1000 streams provisioned at once, answers read after
        for stream_id in range(1, 11):
            tek = teks[channel_id, stream_id] = traffic.generate(protection)
            client.send(provision(channel_id, stream_id, 7, [(7, traffic.encode_cw(tek)), (8, traffic.encode_cw(tek))]))
    for channel_id, client in clients:
        for _ in range(10):
            reply = client.recv()
            assert isinstance(reply, m.ECMResponse), reply
            assert stkm_drm.parse_stkm(reply.ECM_datagram, ecmg.keys).material == teks[channel_id, reply.ECM_stream_id]
        client.close()
