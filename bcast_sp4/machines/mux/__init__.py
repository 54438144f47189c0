"""MUX side of EMMG/PDG<=>MUX: channels, streams, bandwidth, LTKM queues and STKM carousels, pure.

TS 103 197 §6 (digest ``simulcrypt.md`` §4, §5.2, §5.4, §6.3-§6.5); OMA BCAST SP-4 seed
§14.1.1.3.4-.5: the BSM's LTKM generator is an EMMG (client_id 0x0001xxxx, data_type 0x00,
section_TSpkt_flag 0x02, data_id -> IP address and port); the MUX puts LTKMs on the air as UDP
datagrams. This project also carries the SCS's STKMs to the MUX over the same protocol (TS 103 197
leaves SCS->MUX to the implementer): the SCS is a data client whose client_id is its Super_CAS_id
and whose data_id is the ECM_id, with data_type 0x02 (the DVB value for ECMs).

Pieces:

* :mod:`.config` -- the allow-list and routes (``(client_id, data_id)`` -> UDP destination).
* :mod:`.limits` -- amplification bounds on STKM routes and the UDP sender identity (issue #13).
* :mod:`.core` -- one :class:`MuxCore` per MUX process: channel and stream registries (its public
  API), bandwidth accounting, the bounded LTKM queues with their egress token buckets, the STKM
  carousels, the UDP input (:mod:`.udp`) and the drop counters (:mod:`.drops`); its records
  (outputs, streams, routes) are in :mod:`.records`. UDP ``data_provision`` goes to
  :meth:`MuxCore.receive_udp`; a co-located SCS calls :meth:`MuxCore.submit_stkm`.
* :mod:`.connection` -- one :class:`MuxConnection` per TCP connection (one data channel), a
  :class:`~bcast_sp4.machines.channel.ServerChannel` that turns messages into core calls; its
  state table is there.

Time is always passed in as ``now`` (seconds). Outputs: ``Send`` (this connection), ``Close``,
``Notify``, plus :class:`Deliver` (a message for another connection: errors about UDP traffic go
to the TCP connection owning the stream) and :class:`Emit` (one datagram to a route's
destination). The adapter calls :meth:`MuxCore.tick` after input when :attr:`MuxCore.dirty` is set
and at :meth:`MuxCore.next_wakeup`.
"""

from .config import MAX_UDP_PAYLOAD, ClientConfig, MuxConfig, RouteConfig, RouteKey, RouteKind
from .connection import MuxConnection
from .core import Deliver, Emit, EmitMany, MuxCore, MuxRoute, MuxStream, UnknownRoute

__all__ = [
    "MAX_UDP_PAYLOAD",
    "ClientConfig",
    "Deliver",
    "Emit",
    "EmitMany",
    "MuxConfig",
    "MuxConnection",
    "MuxCore",
    "MuxRoute",
    "MuxStream",
    "RouteConfig",
    "RouteKey",
    "RouteKind",
    "UnknownRoute",
]
