"""The bundled sample capture (scripts/make_sample_capture.py) decodes completely, here and in Wireshark,
and ``decode --keys`` shows the TEK identifiers the script put in it."""

import importlib.util
import io
import json
import shutil
import subprocess

import pytest

from bcast_sp4.bcast import stkm_drm, stkm_mikey
from bcast_sp4.config import load_keyfile
from bcast_sp4.tools.cli import main

from ..integration.harness import ROOT

SAMPLE = ROOT / "etc" / "samples" / "sp4-session.pcap"
LAB_KEYS = ROOT / "etc" / "lab" / "keys.toml"


def make_sample():
    spec = importlib.util.spec_from_file_location("make_sample_capture", ROOT / "scripts" / "make_sample_capture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_is_what_the_script_makes():
    assert make_sample().build() == SAMPLE.read_bytes()


def test_keys_show_the_tek_identifiers_the_script_generated():
    script = make_sample()
    out, err = io.StringIO(), io.StringIO()
    assert main(["decode", "--json", "--pcap", str(SAMPLE), "--keys", str(LAB_KEYS), "--type", "ECM_response"], out, err) == 0, err.getvalue()
    objects = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(objects) == 6
    for port, scid, protection, channel, seed in script.ECMG_SESSIONS:
        teks = script.sample_teks(protection, seed)
        responses = [o for o in objects if o["params"]["ECM_channel_id"] == channel]
        assert [o["source"]["dst"] for o in responses] == [f"127.0.0.1:{port}"] * 3
        for response in responses:
            cp = response["params"]["CP_number"]
            payload = response["payloads"][0]
            assert payload["format"] == ("drm-stkm" if scid >> 16 == 1 else "mikey-stkm")
            decrypted = payload["decrypted"]
            kind = {"SRTP": "MKI", "IPSEC": "SPI", "ISMACRYP": "KI"}[protection.name]
            assert [(t["cp"], t["traffic_key_id_kind"], t["traffic_key_id"]) for t in decrypted["teks"]] == [
                (cp, kind, teks[cp].identifier.hex()), (cp + 1, kind, teks[cp + 1].identifier.hex())]
            assert all(key["valid_at"]["valid"] for key in decrypted["keys"])
            secrets = [t.master_key if protection.name == "SRTP" else t.encryption_key for t in teks]
            assert not any(secret.hex() in json.dumps(payload) for secret in secrets)
    text, err = io.StringIO(), io.StringIO()
    assert main(["decode", "--pcap", str(SAMPLE), "--keys", str(LAB_KEYS), "--type", "ECM_response"], text, err) == 0
    (_, _, srtp, _, srtp_seed), (_, _, ipsec, _, ipsec_seed) = script.ECMG_SESSIONS
    assert f"SRTP MKI {script.sample_teks(srtp, srtp_seed)[0].identifier.hex()} (4 bytes)" in text.getvalue()
    spi = script.sample_teks(ipsec, ipsec_seed)[2].spi
    assert f"IPsec SPI {spi:#010x} ({spi})" in text.getvalue()


def test_sample_ltkm_verifies_with_the_lab_subscribers():
    out, err = io.StringIO(), io.StringIO()
    argv = ["decode", "--json", "--pcap", str(SAMPLE), "--subscribers", str(ROOT / "etc" / "lab" / "subscribers.toml"),
            "--type", "data_provision"]
    assert main(argv, out, err) == 0, err.getvalue()
    tcp, udp = (json.loads(line)["payloads"][0] for line in out.getvalue().splitlines())
    assert tcp["fields"]["device_id"] == "0ba5e0000001" and tcp["verified"]["keys"][0]["key_id"] == 1
    assert "verified" not in udp and udp["notes"] == ["not verified: no device 6465766963652d30303032 in "
                                                      f"{ROOT / 'etc' / 'lab' / 'subscribers.toml'}"]


def test_sample_decodes_completely_and_its_stkms_decrypt():
    out, err = io.StringIO(), io.StringIO()
    assert main(["decode", "--json", "--pcap", str(SAMPLE), "--port", "2222", "--port", "5000"], out, err) == 0, err.getvalue()
    objects = [json.loads(line) for line in out.getvalue().splitlines()]
    types = [o["type"] for o in objects]
    assert types.count("ECM_response") == 6 and types.count("data_provision") == 2
    assert {o["source"]["transport"] for o in objects if o["type"] == "data_provision"} == {"tcp", "udp"}
    keys = load_keyfile(ROOT / "etc" / "keys.example.toml")
    setups = {o["source"]["src"]: o["params"]["Super_CAS_id"] for o in objects if o["type"] == "channel_setup" and o["interface"] == "ecmg-scs"}
    for o in objects:
        if o["type"] == "ECM_response":
            scid = setups[o["source"]["dst"]]
            parser = stkm_drm if scid >> 16 == 1 else stkm_mikey
            assert parser.parse_stkm(bytes.fromhex(o["params"]["ECM_datagram"]), keys).material is not None


def test_sample_is_clean_in_wireshark():
    tshark = shutil.which("tshark") or pytest.fail("tshark is missing")
    result = subprocess.run(
        [tshark, "-r", str(SAMPLE), "-d", "tcp.port==2222,simulcrypt", "-d", "tcp.port==5000,simulcrypt",
         "-d", "udp.port==5000,simulcrypt", "-o", "simulcrypt.ca_system_id_mikey:0x0002", "-T", "fields",
         "-e", "simulcrypt.message.type", "-e", "_ws.malformed", "-e", "mikey.type"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines() if line.split("\t")[0]]
    assert len(rows) == 41 and not any(row[1] for row in rows)
    assert sum(1 for row in rows if row[2]) == 3  # the three Smartcard Profile STKMs dissected as MIKEY
