"""Twisted adapters: thin protocols and factories over the pure machines, one module per role."""
