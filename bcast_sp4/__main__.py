"""``python -m bcast_sp4``: see :mod:`bcast_sp4.tools.cli`."""

import sys

from .tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
