"""``python -m yoton``: the same command line as the ``yoton`` console script
(see :mod:`yoton.cli`)."""

import sys

from yoton.cli import main

if __name__ == "__main__":
    sys.exit(main())
