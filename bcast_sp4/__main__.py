"""``python -m bcast_sp4``: see :mod:`bcast_sp4.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
