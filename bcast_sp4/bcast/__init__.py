"""OMA BCAST payloads (STKM, LTKM, traffic key material) and key handling: pure functions, no I/O."""
