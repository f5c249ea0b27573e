"""Fixtures for the yoton 2.2 compatibility tests (helpers: tests/compat_run.py).

Many tests here run one scenario script with yoton 2.2 and with ours and
compare what they print: yoton 2.2 is the reference for behaviour.
"""

from __future__ import annotations

import pytest
from compat_run import run_script


@pytest.fixture
def run_both():
    """``run_both(code, *args)`` -> (orig stdout, ours stdout), each from its own run."""

    def run(code: str, *args, timeout: float = 30.0):
        return (
            run_script("orig", code, *args, timeout=timeout).stdout,
            run_script("ours", code, *args, timeout=timeout).stdout,
        )

    return run
