"""Cross-check Smartcard Profile STKMs against Wireshark's MIKEY dissector (a peer no one here wrote).

Each message goes into a pcap as a UDP payload (Ethernet/IPv4/UDP with correct checksums, written by
:class:`bcast_sp4.tools.capture.PcapWriter`); tshark decodes it as MIKEY with checksum validation on. Nothing
may be flagged malformed or raise an expert item, and the fields tshark reports must equal ours.
NULL-encrypted twins let the dissector show the Key data sub-payload, so the key fields are compared
too. Fails, never skips, when tshark is missing (``.ci/run`` installs it).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from bcast_sp4.bcast.keys import ServiceKey
from bcast_sp4.bcast.stkm_drm import AccessCriteriaDescriptor
from bcast_sp4.bcast.stkm_mikey import EncrAlg, build_stkm
from bcast_sp4.bcast.traffic import (
    IPsecMaterial,
    SRTPMaterial,
    TrafficProtection,
    generate,
    key_material_plaintext,
)
from bcast_sp4.tools.capture import PcapWriter

PORT = 2269  # MIKEY's registered port; decoded explicitly with -d anyway
MSK = ServiceKey(
    key_id=0x00010001, key=bytes.fromhex("0f0e0d0c0b0a09080706050403020100"),
    key_domain_id=bytes.fromhex("02f810"),
)
FIXTURE_TEK = SRTPMaterial(
    master_key=bytes.fromhex("00112233445566778899aabbccddeeff"),
    master_salt=bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacad"),
)


def cases():
    """(name, material, build kwargs): every protection, each also as a NULL-encrypted twin."""
    rng = random.Random(2269).randbytes
    base = [("fixture", FIXTURE_TEK, {})]
    base += [(p.name, generate(p, rng), {}) for p in TrafficProtection]
    base.append(("ipsec-auth-next-ac", generate(TrafficProtection.IPSEC, rng, authenticated=True), {
        "next_material": generate(TrafficProtection.IPSEC, rng, authenticated=True),
        "access_criteria": [AccessCriteriaDescriptor(1, b"\x0c")],
    }))
    base.append(("srtp-no-mki", generate(TrafficProtection.SRTP, rng, mki_length=0), {"csb_id": 0xCAFE}))
    return [
        (f"{name}-{encryption.name}", material, {**kwargs, "encryption": encryption, "counter": 7})
        for name, material, kwargs in base
        for encryption in (EncrAlg.AES_CM_128, EncrAlg.NULL)
    ]


def run_tshark(path) -> ET.Element:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.fail("tshark is not installed: the Wireshark MIKEY cross-check cannot run (apt-get install tshark)")
    result = subprocess.run(
        [tshark, "-n", "-r", str(path), "-d", f"udp.port=={PORT},mikey",
         "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE", "-T", "pdml"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return ET.fromstring(result.stdout)


def write_pcap(path, payloads):
    with open(path, "wb") as f:
        writer = PcapWriter(f)
        for payload in payloads:
            writer.write_udp(("127.0.0.1", 40000), ("127.0.0.1", PORT), payload)


def fields(packet: ET.Element, name: str) -> list[ET.Element]:
    return [f for f in packet.iter("field") if f.get("name") == name]


def problems(packet: ET.Element) -> list[str]:
    bad = [f.get("showname") or f.get("name") for f in packet.iter("field")
           if (f.get("name") or "").startswith(("_ws.malformed", "_ws.expert"))]
    bad += [p.get("name") for p in packet.iter("proto") if (p.get("name") or "").startswith("_ws.")]
    return bad


def value(packet: ET.Element, name: str, index: int = 0) -> str:
    found = fields(packet, name)
    assert len(found) > index, f"tshark reported no {name}"
    return found[index].get("value") or ""


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    built = [(name, material, kwargs, build_stkm(material, MSK, **kwargs)) for name, material, kwargs in cases()]
    path = tmp_path_factory.mktemp("mikey") / "stkm.pcap"
    write_pcap(path, [msg for *_, msg in built])
    packets = run_tshark(path).findall("packet")
    assert len(packets) == len(built)
    return list(zip(built, packets))


def test_no_malformed_or_expert_items(decoded):
    for (name, _, _, _), packet in decoded:
        assert fields(packet, "mikey.hdr"), f"{name}: not dissected as MIKEY"
        assert problems(packet) == [], f"{name}: {problems(packet)}"
        for status in ("ip.checksum.status", "udp.checksum.status"):
            assert fields(packet, status)[0].get("show") == "1", f"{name}: {status} not Good"


def test_header_and_payload_fields_match(decoded):
    for (name, material, kwargs, msg), packet in decoded:
        csb_id = kwargs.get("csb_id", MSK.key_id)
        assert int(fields(packet, "mikey.csb_id")[0].get("show"), 0) == csb_id, name
        assert fields(packet, "mikey.type")[0].get("show") == "0"
        assert fields(packet, "mikey.cs_id_map_type")[0].get("show") == "1"
        assert [f.get("show") for f in fields(packet, "mikey.ext.type")] == ["3", "5"], name
        assert value(packet, "mikey.ext.data", 0) == "000302f810010400010001"
        assert value(packet, "mikey.ext.data", 1)[:2] == "02"  # STKM subtype
        assert fields(packet, "mikey.t.ts_type")[0].get("show") == "2"
        assert int(fields(packet, "mikey.kemac.encr_alg")[0].get("show")) == kwargs["encryption"]
        assert fields(packet, "mikey.kemac.mac_alg")[0].get("show") == "1"
        assert value(packet, "mikey.kemac.mac") == msg[-20:].hex(), name
        if kwargs["encryption"] is EncrAlg.AES_CM_128:
            key_data = value(packet, "mikey.kemac.key_data")
            assert key_data and key_data in msg.hex(), name


def test_key_fields_match_in_null_twins(decoded):
    checked = 0
    for (name, material, kwargs, _), packet in decoded:
        if kwargs["encryption"] is not EncrAlg.NULL:
            continue
        plain = key_material_plaintext(material)
        if isinstance(material, IPsecMaterial):
            key, salt, kind = plain, None, "0"
        else:
            key, salt, kind = plain[:16], plain[16:], "1"
        assert fields(packet, "mikey.key.type")[0].get("show") == kind, name
        assert value(packet, "mikey.key.data") == key.hex(), name
        assert int(fields(packet, "mikey.key.data.len")[0].get("show")) == len(key)
        if salt is None:
            assert not fields(packet, "mikey.key.salt"), name
        else:
            assert value(packet, "mikey.key.salt") == salt.hex(), name
        ident = material.identifier
        assert fields(packet, "mikey.key.kv")[0].get("show") == ("1" if ident else "0"), name
        if ident:
            assert value(packet, "mikey.key.kv.spi") == ident.hex(), name
        checked += 1
    assert checked == len(decoded) // 2


def test_checker_sees_malformed_input(tmp_path):
    # The checker must be able to fail: a truncated STKM has to show up as malformed.
    msg = build_stkm(FIXTURE_TEK, MSK, counter=1)
    path = tmp_path / "bad.pcap"
    write_pcap(path, [msg[:-30]])
    (packet,) = run_tshark(path).findall("packet")
    assert problems(packet)
