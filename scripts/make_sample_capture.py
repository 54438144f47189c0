#!/usr/bin/env python3
"""Write etc/samples/sp4-session.pcap: SP-4 sessions produced by bcast-sp4's own role machines.

* ECMG<=>SCS on tcp/2222: a DRM Profile and a Smartcard Profile STKM session (channel and stream
  setup, channel_test, three CW_provision / ECM_response pairs with real STKMs made with the
  example keys of etc/keys.example.toml, stream close, channel close);
* EMMG<=>MUX on tcp/5000: channel, stream, bandwidth request and an LTKM (PROV-LTKM-1) in a
  data_provision, addressed to the lab terminal's device of etc/lab/subscribers.toml; a second
  LTKM, for a device no file knows, as UDP data_provision to udp/5000.

The replies are what the project's ECMG and MUX machines answer. Packet times start at ``NOW``
(inside the example keys' validity, so ``bcast-sp4 decode --keys`` finds them valid) and the TEKs
come from a seeded generator (:func:`sample_teks`), so the file is the same on every run and the
decoder's tests can check the TEK identifiers it shows against this script. Rerun after a format
change: ``python3 scripts/make_sample_capture.py``.
"""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bcast_sp4.bcast import ltkm_drm, traffic  # noqa: E402
from bcast_sp4.bcast.ecm import STKMSource  # noqa: E402
from bcast_sp4.bcast.keys import KeyRole  # noqa: E402
from bcast_sp4.config import load_keyfile  # noqa: E402
from bcast_sp4.tools.capture import PcapWriter, TcpFlow  # noqa: E402
from bcast_sp4.bcast.ecm_request import CasMode  # noqa: E402
from bcast_sp4.machines.ecmg import ECMGConfig, ECMGConnection, ECMGResources  # noqa: E402
from bcast_sp4.machines.mux import ClientConfig, MuxConfig, MuxConnection, MuxCore, RouteConfig, RouteKind  # noqa: E402
from bcast_sp4.machines.outputs import Send  # noqa: E402
from bcast_sp4.wire import ecmg_scs as e  # noqa: E402
from bcast_sp4.wire import emmg_mux as x  # noqa: E402
from bcast_sp4.wire.params import CPCWCombination  # noqa: E402

NOW = 1_764_000_000.0  # 2025-11-24, inside the example keys' validity
DRM, CARD, CLIENT = 0x00010001, 0x00020001, 0x00010001
SAMPLE = ROOT / "etc" / "samples" / "sp4-session.pcap"
#: (client port, Super_CAS_id, protection, ECM_channel_id, TEK seed) of each STKM session
ECMG_SESSIONS = (
    (40001, DRM, traffic.TrafficProtection.SRTP, 1, 1),
    (40002, CARD, traffic.TrafficProtection.IPSEC, 2, 2),
)
#: the lab terminal's device (etc/lab/subscribers.toml) and one that no file knows
LAB_DEVICE = (bytes.fromhex("0ba5e0000001"), bytes.fromhex("d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"))
OTHER_DEVICE = (b"device-0002", bytes(range(2, 18)))


def sample_teks(protection, seed: int) -> list:
    """The TEK material of CP 0..3 of one session (CP n's CW carries ``sample_teks(...)[n]``)."""
    rnd = random.Random(seed)
    return [traffic.generate(protection, lambda n: bytes(rnd.getrandbits(8) for _ in range(n))) for _ in range(4)]


def ecmg_session(writer: PcapWriter, machine: ECMGConnection, port: int, scid: int, protection, channel: int,
                 seed: int) -> None:
    flow = TcpFlow(writer, ("127.0.0.1", port), ("127.0.0.1", 2222))
    flow.handshake()

    def exchange(message) -> None:
        flow.send(message.encode())
        for output in machine.receive(message, NOW):
            if isinstance(output, Send):
                flow.reply(output.message.encode())

    exchange(e.ChannelSetup(ECM_channel_id=channel, Super_CAS_id=scid))
    exchange(e.ChannelTest(ECM_channel_id=channel))
    exchange(e.StreamSetup(ECM_channel_id=channel, ECM_stream_id=1, ECM_id=1, nominal_CP_duration=100))
    teks = [traffic.encode_cw(tek) for tek in sample_teks(protection, seed)]
    for cp in range(3):
        exchange(e.CWProvision(ECM_channel_id=channel, ECM_stream_id=1, CP_number=cp, CP_duration=100,
                               CP_CW_combination=(CPCWCombination(cp, teks[cp]), CPCWCombination(cp + 1, teks[cp + 1]))))
    exchange(e.StreamCloseRequest(ECM_channel_id=channel, ECM_stream_id=1))
    exchange(e.ChannelClose(ECM_channel_id=channel))
    flow.close()


def emmg_session(writer: PcapWriter, keys) -> None:
    route = RouteConfig(kind=RouteKind.LTKM, data_id=1, destination=("127.0.0.1", 6001), max_bandwidth=200)
    core = MuxCore(MuxConfig(clients={CLIENT: ClientConfig(client_id=CLIENT, routes={1: route})}))
    machine = MuxConnection(core)
    flow = TcpFlow(writer, ("127.0.0.1", 40010), ("127.0.0.1", 5000))
    flow.handshake()

    def exchange(message) -> None:
        flow.send(message.encode())
        for output in machine.receive(message, NOW):
            if isinstance(output, Send):
                flow.reply(output.message.encode())

    sek = next(k for k in keys.keys() if k.role is KeyRole.SERVICE and k.authentication_key)
    ltkms = [ltkm_drm.build_ltkm(device_id, device_key, [sek], issued_at=NOW, sequence=n)
             for n, (device_id, device_key) in enumerate((LAB_DEVICE, OTHER_DEVICE), 1)]
    exchange(x.ChannelSetup(client_id=CLIENT, data_channel_id=1, section_TSpkt_flag=2))
    exchange(x.StreamSetup(client_id=CLIENT, data_channel_id=1, data_stream_id=1, data_id=1, data_type=0))
    exchange(x.StreamBWRequest(client_id=CLIENT, data_channel_id=1, data_stream_id=1, bandwidth=100))
    exchange(x.DataProvision(client_id=CLIENT, data_channel_id=1, data_stream_id=1, data_id=1, datagram=(ltkms[0],)))
    writer.write_udp(("127.0.0.1", 40011), ("127.0.0.1", 5000),
                     x.DataProvision(client_id=CLIENT, data_id=1, datagram=(ltkms[1],)).encode())
    exchange(x.StreamCloseRequest(client_id=CLIENT, data_channel_id=1, data_stream_id=1))
    exchange(x.ChannelClose(client_id=CLIENT, data_channel_id=1))
    flow.close()


def build() -> bytes:
    """The sample capture's bytes."""
    keys = load_keyfile(ROOT / "etc" / "keys.example.toml")
    modes = {DRM: CasMode.DRM_PROFILE, CARD: CasMode.SMARTCARD_PROFILE}
    resources = ECMGResources(ECMGConfig(cas_modes=modes))
    source = STKMSource(keys, modes)
    out = io.BytesIO()
    writer = PcapWriter(out, start=NOW)
    for port, scid, protection, channel, seed in ECMG_SESSIONS:
        ecmg_session(writer, ECMGConnection(resources, source), port, scid, protection, channel, seed)
    emmg_session(writer, keys)
    return out.getvalue()


def main() -> int:
    SAMPLE.parent.mkdir(exist_ok=True)
    SAMPLE.write_bytes(build())
    print(f"wrote {SAMPLE} ({SAMPLE.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
