"""twistd plugins of bcast-sp4: one ServiceMaker per role (tapnames bcast-ecmg, bcast-scs, ...).

This module holds ServiceMaker objects only; each imports its tap module lazily. The folder is
not a package (no __init__.py), as Twisted's plugin system requires.
"""

from twisted.application.service import ServiceMaker

bcast_ecmg = ServiceMaker(
    "bcast-sp4 ECMG / STKM generator",
    "bcast_sp4.tap.ecmg",
    "ECMG<=>SCS server answering CW_provision with OMA BCAST STKMs (DRM Profile, Smartcard Profile MIKEY)",
    "bcast-ecmg",
)

bcast_mux = ServiceMaker(
    "bcast-sp4 MUX (LTKM / STKM play-out)",
    "bcast_sp4.tap.mux",
    "EMMG/PDG<=>MUX server (TCP + UDP) emitting OMA BCAST LTKMs and STKMs as paced UDP datagrams",
    "bcast-mux",
)

bcast_emmg = ServiceMaker(
    "bcast-sp4 EMMG / LTKM generator",
    "bcast_sp4.tap.emmg",
    "EMMG/PDG<=>MUX client sending DRM Profile LTKMs (subscriber file, spool directory) over TCP or UDP",
    "bcast-emmg",
)

bcast_scs = ServiceMaker(
    "bcast-sp4 SCS (SimulCrypt synchroniser, TEK generator, scrambler)",
    "bcast_sp4.tap.scs",
    "ECMG<=>SCS client: TEK per crypto-period, STKMs synchronised to the MUX, SRTP / IPsec / ISMACryp scrambling",
    "bcast-scs",
)

bcast_terminal = ServiceMaker(
    "bcast-sp4 reference terminal",
    "bcast_sp4.tap.terminal",
    "OMA BCAST reference terminal (LTKM -> SEK/PEK, STKM -> TEK, SRTP / IPsec / ISMACryp decryption) and lab content source",
    "bcast-terminal",
)

bcast_lab = ServiceMaker(
    "bcast-sp4 lab head-end",
    "bcast_sp4.tap.lab",
    "MUX, ECMGs, EMMG, SCS, scramblers and a reference terminal in one process, with a per-period report",
    "bcast-lab",
)
