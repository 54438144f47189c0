"""Cross-check against Wireshark's SimulCrypt dissector (a peer no one here wrote).

One instance of every message type of both interfaces, once with every optional parameter and
once with none, goes into a pcap as TCP payloads (data_provision also as UDP); ``tshark`` decodes
it, and every header field and parameter value it reports must equal ours, with nothing flagged
malformed. Fails, never skips, when tshark is missing (``.ci/run`` installs it).
"""

import json
import shutil
import subprocess

import pytest

from bcast_sp4 import wire
from bcast_sp4.tools.capture import PcapWriter, TcpFlow
from bcast_sp4.wire.message import ABSENT, ONE, SOME, VERSION_GROUPS
from bcast_sp4.wire.params import CPCWCombination, Kind

from ..tshark_json import problems

ECMG_PORT, EMMG_PORT = 2222, 5000


def _value(ptype, group, seed):
    kind = ptype.kind
    if ptype.values is not None:
        return sorted(ptype.values)[seed % len(ptype.values)]
    if kind is Kind.I16:
        return -300 - seed if seed % 2 else 250 + seed
    if kind is Kind.U8:
        return 3 + seed
    if kind is Kind.U16:
        return 0x1234 + seed
    if kind is Kind.U32:
        return 0x00020000 + seed if ptype.name in ("Super_CAS_id", "client_id") else 0x01020304 + seed
    if kind is Kind.BOOL:
        return bool(seed % 2)
    if kind is Kind.BYTES:
        if ptype.name == "error_information":
            return bytes([0, 0x10 + seed])
        return bytes(range(seed, seed + 12))
    cw_len = 8 if group == 0 else 16
    return CPCWCombination(100 + seed, bytes(range(seed, seed + cw_len)))


def build(cls, version, full):
    group = VERSION_GROUPS[cls.INTERFACE][version]
    fields = {}
    for seed, (ptype, cards) in enumerate(cls.PARAMS):
        card = cards[group]
        if card is ABSENT or (not full and card not in (ONE, SOME)):
            continue
        if card.repeated:
            fields[ptype.name] = tuple(_value(ptype, group, seed + k) for k in range(2 if full else 1))
        else:
            fields[ptype.name] = _value(ptype, group, seed)
    return cls(protocol_version=version, **fields)


def instances():
    out = []
    for cls in sorted(wire.MESSAGE_CLASSES.values(), key=lambda c: c.MESSAGE_TYPE):
        for version in (2, 3):
            for full in (True, False):
                out.append(build(cls, version, full))
    # the v1 shapes too (no ECM_id / data_id, 8-byte CWs)
    out += [build(cls, 1, True) for cls in wire.MESSAGE_CLASSES.values()]
    return out


def run_tshark(path):
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.fail("tshark is not installed: the Wireshark cross-check cannot run (apt-get install tshark)")
    cmd = [
        tshark, "-r", str(path), "-T", "json", "--no-duplicate-keys",
        "-d", f"tcp.port=={ECMG_PORT},simulcrypt", "-d", f"tcp.port=={EMMG_PORT},simulcrypt",
        "-d", f"udp.port=={EMMG_PORT},simulcrypt",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


#: parameters whose value packet-simulcrypt.c does not decode (digest simulcrypt.md §3.2)
UNDECODED = {"CW_encryption"}


def as_list(x):
    return x if isinstance(x, list) else [x]


def wireshark_value(ptype, text):
    if ptype.kind in (Kind.BYTES, Kind.CP_CW):
        return bytes.fromhex(text.replace(":", ""))
    return int(text, 0)


def our_value(ptype, value):
    if ptype.kind is Kind.CP_CW:
        return value.CP_number.to_bytes(2, "big") + value.CW
    if ptype.kind is Kind.BOOL:
        return int(value)
    return value


def test_wireshark_decodes_every_message_as_we_do(tmp_path):
    messages = instances()
    path = tmp_path / "all.pcap"
    sent = []  # (transport, message) in capture order
    with open(path, "wb") as f:
        writer = PcapWriter(f)
        flows = {
            wire.Interface.ECMG_SCS: TcpFlow(writer, ("127.0.0.1", 40001), ("127.0.0.1", ECMG_PORT)),
            wire.Interface.EMMG_MUX: TcpFlow(writer, ("127.0.0.1", 40002), ("127.0.0.1", EMMG_PORT)),
        }
        for flow in flows.values():
            flow.handshake()
        for message in messages:
            flows[message.INTERFACE].send(message.encode())
            sent.append(("tcp", message))
            if message.NAME == "data_provision" and message.protocol_version >= 2:
                udp = message.__class__(
                    protocol_version=message.protocol_version,
                    client_id=message.client_id,
                    data_id=message.data_id,
                    datagram=message.datagram,
                )
                writer.write_udp(("127.0.0.1", 40003), ("127.0.0.1", EMMG_PORT), udp.encode())
                sent.append(("udp", udp))
        for flow in flows.values():
            flow.close()

    output = run_tshark(path)
    packets = [p["_source"]["layers"] for p in json.loads(output)]
    assert problems(packets) == []
    dissected = [layers for layers in packets if "simulcrypt" in layers]
    assert len(dissected) == len(sent)

    for (transport, message), layers in zip(sent, dissected):
        assert transport in layers
        layer = layers["simulcrypt"]
        header = layer["simulcrypt.header"]
        frame = message.encode()
        assert int(header["simulcrypt.version"], 0) == message.protocol_version
        assert int(header["simulcrypt.message.type"], 0) == message.MESSAGE_TYPE
        assert int(header["simulcrypt.message.len"]) == len(frame) - 5
        table = {p.code: p for p, _cards in message.PARAMS}
        expected = []
        group = VERSION_GROUPS[message.INTERFACE][message.protocol_version]
        for ptype, cards in message.PARAMS:
            value = getattr(message, ptype.name)
            items = value if cards[group].repeated else () if value is None else (value,)
            expected += [(ptype.code, our_value(ptype, item)) for item in items]
        got = []
        for param in as_list(layer["simulcrypt.message"]["simulcrypt.parameter"]):
            code = int(param["simulcrypt.parameter.type"], 0)
            ptype = table[code]
            text = param[f"simulcrypt.{ptype.name.lower()}"]
            if ptype.name in UNDECODED:  # Wireshark shows only the length: compare that
                value = next(v for c, v in expected[len(got):] if c == code)
                assert int(param["simulcrypt.parameter.len"]) == len(value) and text == ""
                got.append((code, value))
            else:
                got.append((code, wireshark_value(ptype, text)))
        assert got == expected, message.NAME
