"""The bundled sample capture (scripts/main's job) decodes completely, here and in Wireshark."""

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
