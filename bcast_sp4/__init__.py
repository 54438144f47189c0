"""bcast-sp4: OMA BCAST service protection over the SP-4 interface (DVB SimulCrypt, ETSI TS 103 197)."""

__version__ = "0.1.0"


def version_text() -> str:
    """What every ``--version`` prints: ``bcast-sp4 0.1.0 (Twisted 26.10.0)``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        twisted = version("twisted")
    except PackageNotFoundError:
        twisted = "not installed"
    return f"bcast-sp4 {__version__} (Twisted {twisted})"
