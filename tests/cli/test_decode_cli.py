"""The decode CLI contract: hex and pcap input, text and JSON output, errors on stderr, exit 2."""

import json
import subprocess
import sys

from bcast_sp4 import wire
from bcast_sp4.tools.capture import PcapWriter, TcpFlow
from bcast_sp4.wire import ecmg_scs as E
from bcast_sp4.wire import emmg_mux as M

from .helpers import run

E5 = (
    "030201003c000e00020001000f000200010012000200050014000a000511223344556677880014000a000699aabbccdd"
    "eeff00001300020064000d0004c0ffee01"
)
E9 = "0301060012000e00020001000f0002000170000002000b"
M8 = "030211001a000100040100000100080002000100050008827005deadbeef01"


def test_text_output_names_every_field_and_interprets_codes():
    status, out, err = run(["decode", E5, E9, "030011001300010004000100070003000200010002000102"])
    assert status == 0 and err == ""
    assert "ecmg-scs v3 CW_provision (0x0201)" in out
    assert "CP 6, CW 8 bytes (hidden; --show-keys prints it)" in out and "99aabbccddeeff00" not in out  # a TEK
    assert "CP_duration                    100 (10000 ms)" in out
    assert "0x000b (not enough control words to compute ECM)" in out
    assert "BCAST Drm Profile, user part 0x0007" in out
    assert "0x02 (BCAST binary STKM/LTKM)" in out


def test_json_contract():
    status, out, _ = run(["decode", "--json", E5 + E9, M8])
    assert status == 0
    objects = [json.loads(line) for line in out.splitlines()]
    assert [o["type"] for o in objects] == ["CW_provision", "stream_error", "data_provision"]
    cw = objects[0]
    assert set(cw) == {"interface", "version", "type", "type_code", "params"}
    assert (cw["interface"], cw["version"], cw["type_code"]) == ("ecmg-scs", 3, 0x0201)
    assert cw["params"] == {
        "ECM_channel_id": 1,
        "ECM_stream_id": 1,
        "CP_number": 5,
        "CP_CW_combination": [
            {"CP_number": 5, "CW": None, "CW_length": 8},
            {"CP_number": 6, "CW": None, "CW_length": 8},
        ],
        "CP_duration": 100,
        "access_criteria": "c0ffee01",
    }
    assert objects[1]["params"]["error_status"] == [11]
    assert objects[2]["interface"] == "emmg-mux"
    assert objects[2]["params"] == {"client_id": 0x01000001, "data_id": 1, "datagram": ["827005deadbeef01"]}


def test_cws_only_with_show_keys():
    """A CW is a TEK (or what a scrambler keys with): its bytes only when --show-keys asks."""
    status, out, _ = run(["decode", "--show-keys", E5])
    assert status == 0 and "CP 5, CW 1122334455667788 (8 bytes)" in out and "CP 6, CW 99aabbccddeeff00 (8 bytes)" in out
    status, out, _ = run(["decode", "--json", "--show-keys", E5])
    assert status == 0
    assert json.loads(out)["params"]["CP_CW_combination"] == [
        {"CP_number": 5, "CW": "1122334455667788"},
        {"CP_number": 6, "CW": "99aabbccddeeff00"},
    ]
    for argv in (["decode", E5], ["decode", "--json", E5], ["decode", "--payloads", E5]):
        status, out, _ = run(argv)
        assert status == 0 and "1122334455667788" not in out and "99aabbccddeeff00" not in out, (argv, out)


def test_stdin_lines_and_errors_keep_going():
    bad_version = "09" + E9[2:]
    status, out, err = run(["decode", "--json"], stdin=f"{E9}\n{bad_version}\nzz\n\n0300\n{M8}\n")
    assert status == 2
    assert [json.loads(line)["type"] for line in out.splitlines()] == ["stream_error", "data_provision"]
    lines = err.splitlines()
    assert len(lines) == 3
    assert "input 2" in lines[0] and "error_status 0x0002 (unsupported protocol version)" in lines[0]
    assert "input 3" in lines[1] and "not hexadecimal" in lines[1]
    assert "input 4" in lines[2] and "error_status 0x0001" in lines[2]


def test_emmg_error_uses_emmg_codes():
    unknown_param = M.ChannelTest(client_id=1, data_channel_id=1).encode() + bytes.fromhex("7abc0000")
    frame = unknown_param[:3] + (len(unknown_param) - 5).to_bytes(2, "big") + unknown_param[5:]
    status, _, err = run(["decode", frame.hex()])
    assert status == 2 and "error_status 0x000a (unknown parameter_type)" in err


def test_pcap_tcp_reassembly_and_udp(tmp_path):
    ecmg = [
        E.ChannelSetup(ECM_channel_id=1, Super_CAS_id=0x00020001),
        E.StreamSetup(ECM_channel_id=1, ECM_stream_id=2, ECM_id=1001, nominal_CP_duration=20),
        wire.decode(bytes.fromhex(E5)),
    ]
    emmg = M.DataProvision(client_id=0x00010001, data_id=7, datagram=(b"\x01" * 100,))
    path = tmp_path / "cap.pcap"
    with open(path, "wb") as f:
        writer = PcapWriter(f)
        flow = TcpFlow(writer, ("127.0.0.1", 41000), ("127.0.0.1", 2222))
        flow.handshake()
        stream = b"".join(m.encode() for m in ecmg)
        flow.send(stream[:7])  # a header split over segments
        flow.send(stream[7:40])
        flow.send(stream[40:])  # the rest, two messages in one segment
        flow.reply(E.ChannelTest(ECM_channel_id=1).encode())
        writer.write_udp(("127.0.0.1", 41001), ("127.0.0.1", 5000), emmg.encode())
        writer.write_udp(("127.0.0.1", 41001), ("127.0.0.1", 5999), emmg.encode())  # other port: ignored
        flow.close()
    status, out, err = run(["decode", "--json", "--pcap", str(path), "--port", "2222", "--port", "5000"])
    assert status == 0, err
    objects = [json.loads(line) for line in out.splitlines()]
    assert [o["type"] for o in objects] == ["channel_setup", "stream_setup", "CW_provision", "channel_test", "data_provision"]
    assert objects[1]["params"]["ECM_id"] == 1001
    assert objects[3]["source"]["src"] == "127.0.0.1:2222"
    assert objects[4]["source"]["transport"] == "udp"
    assert objects[4]["params"]["datagram"] == ["01" * 100]


def test_pcap_truncated_stream_reports_error(tmp_path):
    path = tmp_path / "cut.pcap"
    with open(path, "wb") as f:
        flow = TcpFlow(PcapWriter(f), ("127.0.0.1", 41000), ("127.0.0.1", 2222))
        flow.handshake()
        flow.send(bytes.fromhex(E9) + bytes.fromhex(E5)[:20])
    for ports in (["--port", "2222"], []):  # named, or found by content
        status, out, err = run(["decode", "--pcap", str(path), *ports])
        assert status == 2
        assert "stream_error" in out
        assert ("tcp 127.0.0.1:41000 -> 127.0.0.1:2222: error_status 0x0001 (invalid message): the capture ends "
                "inside a message: truncated CW_provision (0x0201): message_length 60 announces 65 bytes, only 20 "
                "present") in err


def test_not_a_capture(tmp_path):
    path = tmp_path / "x.pcap"
    path.write_bytes(b"hello world, not a capture at all")
    status, _, err = run(["decode", "--pcap", str(path), "--port", "1"])
    assert status == 2 and err.count("\n") == 1


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "bcast_sp4", "decode", "--json", E9], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"]["error_status"] == [0x000B]


def test_bcast_error_codes_are_named():
    frame = "0301060012000e00020001000f0002000170000002ff01"  # stream_error 0x8000 + 0x7F01
    status, out, _ = run(["decode", frame])
    assert status == 0 and "0xff01 (BCAST status 0x7f01: NO_KEY_FOR_STREAM (no SEK/PEK" in out and "[project])" in out
    status, out, _ = run(["decode", frame[:-4] + "800d"])  # 0x8000 + 13
    assert status == 0 and "0x800d (BCAST status 13: ILLEGAL_DEVICE (Illegal Device) [C])" in out
    status, out, _ = run(["decode", frame[:-4] + "8016"])  # 0x8000 + 22
    assert "0x8016 (BCAST status 22: INVALID_REQUEST (Invalid Request) [C])" in out
