"""``bcast-sp4 decode`` for lab work, tried as a new user would (issue #10, build item 6)."""

from __future__ import annotations

import json
import os
import re
import pty
import subprocess
import sys

import pytest

from bcast_sp4.tools import sniff
from bcast_sp4.wire import ecmg_scs as E
from bcast_sp4.wire import emmg_mux as M

from .helpers import (
    ISMA_TEK, IPSEC_TEKS, KEY_FILE, PEK, ROOT, SEK, SRTP_TEKS, SUBSCRIBERS, drm_stkm, lab_capture, ltkm, mikey_stkm,
    run, run_json, v1_data_id_provision,
)

E9 = "0301060012000e00020001000f0002000170000002000b"  # stream_error


def has(text: str, name: str, value: str) -> bool:
    """Whether a text-view line shows field *name* with *value* (any column spacing)."""
    return re.search(rf"^\s*{re.escape(name)}\s+{re.escape(value)}$", text, re.MULTILINE) is not None


@pytest.fixture
def capture(tmp_path):
    return lab_capture(tmp_path / "lab.pcap")


# --- timestamps -------------------------------------------------------------------------------


def test_text_output_has_frame_relative_and_absolute_time(capture):
    status, out, _ = run(["decode", "--pcap", str(capture), "--port", "3333", "--type", "channel_setup"])
    assert status == 0
    first = out.splitlines()[0]
    # frame 1-3 are the handshake; the channel_setup is frame 4, 3 ms after the first packet
    assert first == ("ecmg-scs v3 channel_setup (0x0001)  frame 4  +0.003000s  2025-11-24T16:00:00.003000Z"
                     "  tcp 10.0.0.1:41001 -> 10.0.0.2:3333")


@pytest.mark.parametrize(("mode", "relative", "absolute"), [
    ("relative", True, False), ("absolute", False, True), ("none", False, False), ("both", True, True)])
def test_time_modes(capture, mode, relative, absolute):
    _, out, _ = run(["decode", "--pcap", str(capture), "--time", mode, "--type", "channel_setup"])
    head = out.splitlines()[0]
    assert ("+0.003000s" in head) is relative and ("2025-11-24T16:00:00.003000Z" in head) is absolute
    assert "frame 4" in head


def test_json_source_has_frame_and_both_times(capture):
    status, objects, _ = run_json(["--pcap", str(capture), "--type", "channel_setup"])
    assert status == 0
    source = objects[0]["source"]
    assert source["frame"] == 4 and source["relative"] == 0.003 and source["utc"] == "2025-11-24T16:00:00.003000Z"
    assert source["time"] == pytest.approx(1_764_000_000.003)


# --- payloads ------------------------------------------------------------------------------------


def test_payloads_drm_stkm_field_by_field(capture):
    status, out, err = run(["decode", "--pcap", str(capture), "--payloads", "--type", "ECM_response", "--channel", "1"])
    assert status == 0, err
    block = out.split("ecmg-scs v3 ECM_response")[1]
    assert "ECM_datagram: DRM Profile STKM, layout PROV-2 (PROVISIONAL" in block
    for name, value in (("traffic_protection_protocol", "1 (SRTP)"), ("next_traffic_key_flag", "1"), ("service_flag", "1"),
                        ("programme_flag", "0"), ("traffic_key_id", "SRTP MKI a000 (2 bytes)"),
                        ("traffic_key_id", "SRTP MKI a001 (2 bytes)"), ("timestamp", "2025-11-24T16:00:00Z"),
                        ("encrypted_traffic_key_material", "32 bytes (encrypted)"), ("service_CID_extension", "0x00000001")):
        assert has(block, name, value), (name, value)
    stamp = re.search(r"^\s*timestamp\s", block, re.MULTILINE).start()  # wire order: key blocks, timestamp, MACs
    assert block.index("current key block") < block.index("next key block") < stamp < block.index("service MAC block")
    assert "decrypted" not in block  # no --keys


def test_payloads_mikey_stkm_and_cw_field_by_field(capture):
    status, out, _ = run(["decode", "--pcap", str(capture), "--payloads", "--channel", "2", "--type", "CW_provision,ECM_response"])
    assert status == 0
    assert "ECM_datagram: Smartcard Profile STKM: MIKEY (RFC 3830) with the OMA BCAST EXT" in out
    assert "EXT KEY_ID (type 3) at byte 10" in out and has(out, "KEY_DOMAIN_ID", "02f810")
    assert has(out, "SERVICE_KEY_ID", "0x00010001 (SEK/PEK ID)") and "EXT OMA_BCAST (type 5) at byte 31" in out
    assert has(out, "ts_type", "2 (COUNTER)") and has(out, "ts_value", "100") and has(out, "ts_value", "101")
    assert has(out, "traffic_protection_protocol", "0 (IPSEC)") and has(out, "encr_alg", "1 (AES_CM_128)")
    assert "CP_CW_combination[1]: TEK material, bcast-sp4 CW layout v1" in out
    assert has(out, "traffic_key_id", "IPsec SPI 0x00001001 (4097)") and has(out, "CP_number", "1")
    assert IPSEC_TEKS[0].encryption_key.hex() not in out.split("CP_CW_combination[0]:")[1]  # hidden in the view


def test_payloads_ltkm_field_by_field_and_verified_with_subscribers(capture):
    status, out, err = run(["decode", "--pcap", str(capture), "--type", "data_provision", "--subscribers", str(SUBSCRIBERS)])
    assert status == 0, err
    tcp, udp = out.split("emmg-mux v3 data_provision")[1:]
    assert "datagram[0]: DRM Profile LTKM, layout PROV-LTKM-1 (PROVISIONAL" in tcp
    assert has(tcp, "device_id", "0ba5e0000001") and has(tcp, "sequence", "7") and has(tcp, "issued_at", "2025-11-24T16:00:00Z")
    assert "key entry: service key 0x00000001" in tcp and has(tcp, "wrapped_keys", "48 bytes (AES key wrap)")
    assert "MAC verified and keys unwrapped with" in tcp and "delivered service key 0x00000001" in tcp
    assert has(tcp, "key", "16 bytes (hidden; --show-keys prints it)")
    assert "[format guessed from the content]" not in tcp  # data_type 0 from the stream_setup
    assert "datagram[0]: DRM Profile LTKM" in udp  # UDP data_provision: data_type by (client_id, data_id)


def test_ltkm_with_a_wrong_device_key_is_an_error(tmp_path):
    other = tmp_path / "subscribers.toml"
    text = SUBSCRIBERS.read_text().replace("d0d1d2d3d4d5d6d7d8d9dadbdcdddedf", "00" * 16)
    other.write_text(text)
    status, objects, err = run_json(["--pcap", str(lab_capture(tmp_path / "c.pcap")), "--type", "data_provision",
                                     "--subscribers", str(other)])
    assert status == 2 and "MAC mismatch" in err
    assert "MAC mismatch" in objects[0]["payloads"][0]["errors"][0]


def test_keys_decrypt_stkms_and_show_tek_identifiers_never_key_bytes(capture):
    status, objects, err = run_json(["--pcap", str(capture), "--keys", str(KEY_FILE), "--type", "ECM_response"])
    assert status == 0, err
    drm = [o for o in objects if o["params"]["ECM_channel_id"] == 1]
    card = [o for o in objects if o["params"]["ECM_channel_id"] == 2]
    for cp, obj in enumerate(drm):
        payload = obj["payloads"][0]
        assert (payload["format"], payload["layout"], payload["provisional"]) == ("drm-stkm", "PROV-2", True)
        decrypted = payload["decrypted"]
        assert decrypted["verified_MACs"] == ["service"]
        assert [(t["cp"], t["traffic_key_id_kind"], t["traffic_key_id"]) for t in decrypted["teks"]] == [
            (cp, "MKI", SRTP_TEKS[cp].mki.hex()), (cp + 1, "MKI", SRTP_TEKS[cp + 1].mki.hex())]
        assert decrypted["teks"][0]["master_key"] is None and decrypted["teks"][0]["master_key_length"] == 16
        key = decrypted["keys"][0]
        assert (key["name"], key["role"], key["key_id"], key["not_before"]) == ("lab-drm-sek", "service", 1, "2024-01-01T00:00:00Z")
        assert key["valid_at"] == {"time": "2025-11-24T16:00:00Z", "basis": "STKM timestamp", "valid": True}
    for cp, obj in enumerate(card):
        decrypted = obj["payloads"][0]["decrypted"]
        assert [t["traffic_key_id"] for t in decrypted["teks"]] == [f"{0x1000 + cp:08x}", f"{0x1001 + cp:08x}"]
        assert decrypted["keys"][0]["key_domain_id"] == "02f810" and decrypted["keys"][0]["valid_at"]["basis"] == "capture time"
    text = json.dumps(objects)
    for tek in SRTP_TEKS + IPSEC_TEKS:
        secret = getattr(tek, "master_key", None) or tek.encryption_key
        assert secret.hex() not in text.split('"payloads"', 1)[1]


def test_ismacryp_key_indicator_and_programme_keys_from_hex_input():
    from bcast_sp4.bcast import stkm_drm

    stkm = stkm_drm.build_stkm(ISMA_TEK, SEK, programme_key=PEK,
                               access_criteria=(stkm_drm.AccessCriteriaDescriptor(1, b"\x12"),))
    setup = E.ChannelSetup(ECM_channel_id=4, Super_CAS_id=0x00010007).encode().hex()
    response = E.ECMResponse(ECM_channel_id=4, ECM_stream_id=1, CP_number=9, ECM_datagram=stkm).encode().hex()
    status, out, err = run(["decode", "--keys", str(KEY_FILE), setup, response])
    assert status == 0, err
    assert has(out, "programme_flag", "1") and has(out, "encrypted_PEK", "16 bytes (PEK under the SEK)")
    assert "access criteria descriptor" in out and has(out, "data", "12 (1 bytes)")
    assert has(out, "programme_CID_extension", "0x00000101") and has(out, "verified_MACs", "programme, service")
    assert "programme key lab-drm-pek" in out and "service key lab-drm-sek" in out
    assert has(out, "valid_at", "(no time to check against: hex input and no STKM timestamp)")
    assert "TEK of this crypto-period (CP 9)" in out and has(out, "traffic_key_id", "ISMACRYP KI 050607 (3 bytes)")
    assert "TEK of the next" not in out and ISMA_TEK.key.hex() not in out


def test_cw_views_only_where_the_layout_applies():
    from bcast_sp4.wire.params import CPCWCombination

    def cw_provision(cw, **extra):
        return E.CWProvision(ECM_channel_id=1, ECM_stream_id=1, CP_number=0,
                             CP_CW_combination=(CPCWCombination(0, cw),), **extra).encode().hex()

    drm_setup = E.ChannelSetup(ECM_channel_id=1, Super_CAS_id=0x00010001).encode().hex()
    classic = bytes.fromhex("0100112233445566")  # an 8-byte DVB CW that starts like the layout
    status, out, err = run(["decode", "--payloads", cw_provision(classic)])
    assert status == 0 and "CP_CW_combination[0]:" not in out  # no context: not ours, no noise
    status, out, err = run(["decode", "--payloads", drm_setup, cw_provision(classic)])
    assert status == 2 and "CP_CW_combination[0]: not in the CW layout" in err  # a BCAST ECMG would refuse it
    status, out, err = run(["decode", "--payloads", drm_setup, cw_provision(classic, CW_encryption=b"\x01" * 24)])
    assert status == 0 and "note: CWs are encrypted (CW_encryption present): not decoded" in out


def test_show_keys_prints_tek_bytes(capture):
    status, out, _ = run(["decode", "--pcap", str(capture), "--keys", str(KEY_FILE), "--show-keys", "--type", "ECM_response"])
    assert status == 0
    assert has(out, "master_key", SRTP_TEKS[0].master_key.hex()) and has(out, "master_salt", SRTP_TEKS[0].master_salt.hex())
    assert has(out, "encryption_key", IPSEC_TEKS[1].encryption_key.hex())


def test_a_key_file_without_the_key_notes_it_and_a_wrong_key_is_an_error(tmp_path, capture):
    only_drm = tmp_path / "drm.toml"
    only_drm.write_text(KEY_FILE.read_text().split("# --- Smartcard Profile")[0]
                        + '[[streams]]\nsuper_cas_id = 0x00010001\necm_id = 1\nkeys = ["lab-drm-sek"]\n')
    status, out, err = run(["decode", "--pcap", str(capture), "--keys", str(only_drm), "--type", "ECM_response"])
    assert status == 0 and err.count("note: SimulCrypt found by content") == 1
    assert "note: not decrypted: no key for SEK/PEK ID 0x00010001" in out
    wrong_sak = tmp_path / "wrong-sak.toml"
    wrong_sak.write_text(only_drm.read_text().replace("5341b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1", "00" * 20))
    status, out, err = run(["decode", "--pcap", str(capture), "--keys", str(wrong_sak), "--type", "ECM_response", "--channel", "1"])
    assert status == 2 and err.count("ECM_datagram: does not verify with") == 2 and "service_MAC mismatch" in err
    assert "ERROR: does not verify" in out and "decrypted and verified" not in out
    wrong_sek = tmp_path / "wrong-sek.toml"
    wrong_sek.write_text(only_drm.read_text().replace("000102030405060708090a0b0c0d0e0f", "ff" * 16))
    status, _, err = run(["decode", "--pcap", str(capture), "--keys", str(wrong_sek), "--type", "ECM_response", "--channel", "1"])
    assert status == 2 and "padding is not zero (wrong key?)" in err


def test_bad_key_file_is_reported_once(tmp_path, capture):
    bad = tmp_path / "bad.toml"
    bad.write_text("format = 1\n[keys.x]\nkey = 'zz'\n")
    status, out, err = run(["decode", "--pcap", str(capture), "--keys", str(bad)])
    assert status == 2 and out == "" and err.count("\n") == 1 and str(bad) in err


def test_hex_input_payload_format_is_guessed_from_content():
    frame = E.ECMResponse(ECM_channel_id=1, ECM_stream_id=1, CP_number=0, ECM_datagram=mikey_stkm(0)).encode().hex()
    status, out, _ = run(["decode", "--payloads", frame])
    assert status == 0 and "MIKEY (RFC 3830) with the OMA BCAST EXT  [format guessed from the content]" in out
    with_setup = E.ChannelSetup(ECM_channel_id=1, Super_CAS_id=0x00010001).encode().hex()
    drm = E.ECMResponse(ECM_channel_id=1, ECM_stream_id=1, CP_number=0, ECM_datagram=drm_stkm(0)).encode().hex()
    status, out, _ = run(["decode", "--payloads", with_setup, drm])
    assert "ECM_datagram: DRM Profile STKM" in out and "guessed" not in out


def test_malformed_stkm_is_a_payload_error():
    bad = E.ECMResponse(ECM_channel_id=1, ECM_stream_id=1, CP_number=0, ECM_datagram=drm_stkm(0)[:-3]).encode().hex()
    status, out, err = run(["decode", "--payloads", bad])
    assert status == 2 and "ECM_datagram: not a PROV-2 DRM Profile STKM" in err and "ERROR:" in out


def test_classic_dvb_channel_payloads_are_left_alone():
    setup = E.ChannelSetup(ECM_channel_id=1, Super_CAS_id=0x4AD40001).encode().hex()
    response = E.ECMResponse(ECM_channel_id=1, ECM_stream_id=1, CP_number=0, ECM_datagram=drm_stkm(0)).encode().hex()
    status, out, _ = run(["decode", "--payloads", setup, response])
    assert status == 0 and "ECM_datagram:" not in out


# --- filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    (["--type", "ECM_response"], ["ECM_response"] * 4),
    (["--type", "ecm_RESPONSE", "--channel", "2"], ["ECM_response"] * 2),
    (["--type", "0x0211"], ["data_provision"] * 2),
    (["--type", "stream_*", "--type", "channel_setup"], ["channel_setup", "stream_setup"] * 2 + ["channel_setup", "stream_setup"]),
    (["--channel", "2", "--stream", "1", "--type", "CW_*"], ["CW_provision"] * 2),
    (["--stream", "9"], []),
])
def test_filters(capture, argv, expected):
    status, objects, err = run_json(["--pcap", str(capture), *argv])
    assert [o["type"] for o in objects] == expected
    assert status == (0 if expected else 1)
    if not expected:
        assert "none matched the filters" in err


def test_unknown_type_is_a_usage_error(capture):
    status, out, err = run(["decode", "--pcap", str(capture), "--type", "CW_provisoin"])
    assert status == 2 and out == ""
    assert "usage: bcast-sp4 decode" in err and "matches no message type; known: channel_close" in err


def test_filters_never_hide_errors():
    bad = "09" + E9[2:]
    status, out, err = run(["decode", "--type", "CW_provision", E9, bad])
    assert status == 2 and out == "" and "error_status 0x0002" in err


# --- ports found by content, and hints ---------------------------------------------------------------


def test_simulcrypt_found_by_content_without_port(capture):
    status, objects, err = run_json(["--pcap", str(capture)])
    assert status == 0
    ports = {(o["source"]["transport"], o["source"]["dst"]) for o in objects}
    assert all(dst.endswith((":3333", ":6666", ":41001", ":41002")) for _, dst in ports)  # no HTTP, no DNS
    assert [o["type"] for o in objects].count("ECM_response") == 4
    assert [o["source"]["transport"] for o in objects if o["type"] == "data_provision"] == ["tcp", "udp"]
    assert err == "bcast-sp4 decode: note: SimulCrypt found by content on tcp port 3333, tcp port 6666, udp port 6666 (--port N to choose)\n"


def test_found_by_content_without_syn(tmp_path):
    path = lab_capture(tmp_path / "nosyn.pcap", syn=False)
    status, objects, err = run_json(["--pcap", str(path), "--type", "channel_setup"])
    assert status == 0 and len(objects) == 3
    assert "tcp port 3333" in err  # the lower port of a connection without SYN is taken for the server


def test_capture_without_simulcrypt_exits_1_with_a_hint(tmp_path):
    from bcast_sp4.tools.capture import PcapWriter, TcpFlow

    path = tmp_path / "http.pcap"
    with open(path, "wb") as f:
        flow = TcpFlow(PcapWriter(f), ("10.0.0.1", 40000), ("10.0.0.9", 80))
        flow.handshake()
        flow.send(b"GET / HTTP/1.1\r\n\r\n")
        flow.close()
    status, out, err = run(["decode", "--pcap", str(path)])
    assert status == 1 and out == ""
    assert "hint: no SimulCrypt found by content" in err and "--port N" in err


def test_given_port_without_message_hints_at_the_ports_found(capture):
    status, out, err = run(["decode", "--pcap", str(capture), "--port", "2222"])
    assert status == 1 and out == ""
    assert err == ("bcast-sp4 decode: hint: port 2222: no TCP or UDP packet; SimulCrypt found by content on "
                   "tcp port 3333, tcp port 6666, udp port 6666\n")
    status, out, err = run(["decode", "--pcap", str(capture), "--port", "6666", "--port", "2222"])
    assert status == 0 and "emmg-mux" in out and "ecmg-scs" not in out
    assert err == ("bcast-sp4 decode: hint: port 2222: no TCP or UDP packet; SimulCrypt found by content on "
                   "tcp port 3333\n")
    # a port named on purpose is decoded as SimulCrypt: HTTP on it is reported, then the hint
    status, out, err = run(["decode", "--pcap", str(capture), "--port", "80"])
    assert status == 2 and out == ""
    assert "tcp 10.0.0.1:41500 -> 10.0.0.9:80: error_status 0x0001" in err
    assert err.splitlines()[-1] == ("bcast-sp4 decode: hint: port 80: packets but no SimulCrypt message; SimulCrypt "
                                    "found by content on tcp port 3333, tcp port 6666, udp port 6666")


def test_sniff_heuristic():
    good = E.ChannelTest(ECM_channel_id=1).encode()
    assert sniff.plausible_message(good) and sniff.plausible_header(good[:5]) and sniff.plausible_header(good[:4]) is None
    assert not sniff.plausible_message(b"\x06" + good[1:])  # ECMG<=>SCS has no version 6
    assert not sniff.plausible_message(good[:3] + b"\x09\x99" + good[5:])  # unknown message_type
    assert not sniff.plausible_message(good + b"\x00")  # message_length disagrees
    assert not sniff.plausible_message(good[:4] + bytes([good[4] - 1]) + good[5:-1])  # TLV overruns
    assert not sniff.plausible_message(bytes.fromhex("0300020000"))  # no parameter at all
    assert sniff.plausible_message(M.DataProvision(protocol_version=5, client_id=1, data_id=1, datagram=(b"x",)).encode())
    assert not sniff.plausible_message(b"GET / HTTP/1.1\r\n\r\n")


# --- tolerated deviation: data_id in EMMG<=>MUX v1 ----------------------------------------------


def test_v1_data_id_decodes_with_a_warning():
    frame = v1_data_id_provision(ltkm()).hex()
    status, out, err = run(["decode", frame])
    assert status == 0
    assert "emmg-mux v1 data_provision (0x0211)" in out and "data_id                        1" in out
    assert "! deviation v1-data_id: data_id (0x0008) in an EMMG<=>MUX v1 message" in out
    assert err.startswith("bcast-sp4 decode: input 1 message 1: warning: deviation v1-data_id:") and err.count("\n") == 1
    status, objects, _ = run_json([frame])
    assert status == 0 and objects[0]["deviations"] == ["v1-data_id"] and objects[0]["params"]["data_id"] == 1


def test_strict_refuses_v1_data_id_and_other_violations_stay_errors():
    frame = v1_data_id_provision(b"\x01")
    status, _, err = run(["decode", "--strict", frame.hex()])
    assert status == 2 and "error_status 0x000a (unknown parameter_type): parameter_type 0x0008 not allowed in data_provision v1" in err
    twice = frame[:3] + (int.from_bytes(frame[3:5], "big") + 6).to_bytes(2, "big") + frame[5:] + bytes.fromhex("000800020002")
    status, _, err = run(["decode", twice.hex()])
    assert status == 2 and "error_status 0x000c" in err and "data_id given more than once" in err


# --- input problems ---------------------------------------------------------------------------------


def test_odd_length_and_non_hex_input_say_what_is_wrong():
    status, out, err = run(["decode", "030", "03zz"])
    assert status == 2 and out == ""
    lines = err.splitlines()
    assert lines[0] == "bcast-sp4 decode: input 1: odd number of hex digits (3) in '030': each byte is two digits, is one missing?"
    assert lines[1] == "bcast-sp4 decode: input 2: not hexadecimal: 'z' in '03zz'"


def test_truncated_last_message_names_what_is_missing():
    status, out, err = run(["decode", E9 + E9[:20]])
    assert status == 2 and "stream_error" in out
    assert err == ("bcast-sp4 decode: input 1 message 2: error_status 0x0001 (invalid message): the input ends inside "
                   "a message: truncated stream_error (0x0106): message_length 18 announces 23 bytes, only 10 present\n")
    status, _, err = run(["decode", E9 + "0301"])
    assert "2 trailing bytes, too few for a message header (5)" in err


def test_a_file_given_as_hex_points_to_pcap(capture):
    status, _, err = run(["decode", str(capture)])
    assert status == 2 and f"is a file, not hex: to read a capture use --pcap {capture}" in err


def test_non_pcap_file_named_once(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, not a capture")
    status, out, err = run(["decode", "--pcap", str(path)])
    assert status == 2 and out == "" and err.count(str(path)) == 1 and err.count("\n") == 1
    assert "not a pcap or pcapng file" in err
    status, _, err = run(["decode", "--pcap", str(tmp_path / "missing.pcap")])
    assert status == 2 and err.count("missing.pcap") == 1 and "No such file" in err


def test_no_input_on_a_terminal_shows_usage():
    status, out, err = run(["decode"], tty=True)
    assert status == 2 and out == ""
    assert err.startswith("usage: bcast-sp4 decode") and "no input: give hex messages as arguments, --pcap FILE" in err


def test_empty_stdin_exits_1_with_a_hint():
    status, out, err = run(["decode"], stdin="\n  \n")
    assert (status, out, err) == (1, "", "bcast-sp4 decode: hint: no input: stdin held no hex line\n")


def test_no_input_on_a_real_terminal_does_not_wait():
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "bcast_sp4", "decode"], stdin=terminal, capture_output=True,
                                text=True, timeout=60, cwd=ROOT)
    finally:
        os.close(controller)
        os.close(terminal)
    assert result.returncode == 2 and "usage: bcast-sp4 decode" in result.stderr and result.stdout == ""


def test_port_needs_a_capture():
    status, _, err = run(["decode", "--port", "2222", E9])
    assert status == 2 and "--port applies to --pcap captures only" in err


# --- a reader that closes the pipe early -------------------------------------------------------------------


def test_closed_pipe_ends_quietly(tmp_path):
    """The real CLI, its stdout piped into a reader that takes one line and closes the pipe."""
    lines = tmp_path / "many.hex"
    lines.write_text("\n".join([E9] * 20000) + "\n")  # ~1.7 MB of text output: far beyond a pipe buffer
    with open(lines) as stdin:
        decoder = subprocess.Popen([sys.executable, "-m", "bcast_sp4", "decode"], stdin=stdin,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        reader = subprocess.run([sys.executable, "-c", "import sys; print(sys.stdin.readline(), end='')"],
                                stdin=decoder.stdout, capture_output=True, text=True, timeout=60)
        decoder.stdout.close()  # only the reader held the pipe's read end; it has exited
        _, stderr = decoder.communicate(timeout=120)
    assert reader.stdout.startswith("ecmg-scs v3 stream_error (0x0106)")
    assert stderr == b"" and decoder.returncode == 0
