"""Pure protocol state machines (no reactor, no sockets, no logging): inputs in, outputs out."""
