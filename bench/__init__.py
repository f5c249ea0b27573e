"""yoton benchmark suite: ours vs the original yoton 2.2 vs pyzmq, two processes over 127.0.0.1.

Run from the repository root::

    pip install -e ".[dev,bench]"
    python -m bench                 # full run (a few minutes), table + profiles
    python -m bench --quick         # smoke run: 1 repetition, small counts
    python -m bench --help

See :mod:`bench.driver` for what is measured and :mod:`bench.worker` for the
subprocess that runs one side of a measurement.
"""
