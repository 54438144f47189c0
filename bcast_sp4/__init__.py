"""bcast-sp4: OMA BCAST service protection over the SP-4 interface (DVB SimulCrypt, ETSI TS 103 197)."""

__version__ = "0.1.0"
