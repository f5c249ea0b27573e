"""``python -m bench``: run the benchmark suite (see ``python -m bench --help``)."""

import sys

from .driver import main

if __name__ == "__main__":
    sys.exit(main())
