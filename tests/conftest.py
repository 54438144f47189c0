"""Suite-wide settings.

Hypothesis' per-example ``deadline`` (200 ms by default) is a wall-clock assertion: on a machine
whose cores another process keeps busy an example can take longer without anything being wrong
(``test_framer_reassembles_any_chunking`` did). Time is not what those property tests check, so
the deadline is off; speed lives in ``benchmarks/``.
"""

from hypothesis import settings

settings.register_profile("bcast-sp4", deadline=None)
settings.load_profile("bcast-sp4")
