"""Run a script with yoton 2.2 ("orig") or ours ("ours") in a fresh interpreter.

The script gets the yoton of that implementation (checked: it fails if it
imports another) and the extra arguments in ``sys.argv[1:]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
from interop_helpers import impl_path

_CHECK = (
    "import os, sys, yoton\n"
    "assert os.path.realpath(yoton.__file__).startswith(os.path.realpath(sys.argv[1])), yoton.__file__\n"
    "del sys.argv[1]\n"
)


def script_command(impl: str, code: str, *args, env: dict | None = None):
    """Return ``(argv, env, cwd)`` to run ``code`` with yoton ``impl``."""
    path = impl_path(impl)
    environ = dict(os.environ, PYTHONPATH=path, PYTHONIOENCODING="utf-8", **(env or {}))
    return [sys.executable, "-c", _CHECK + code, path, *map(str, args)], environ, tempfile.gettempdir()


def run_script(
    impl: str, code: str, *args, timeout: float = 30.0, check: bool = True, stdin: str = "", env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``code`` with yoton ``impl``; fail the test if it exits non-zero (with ``check``)."""
    argv, environ, cwd = script_command(impl, code, *args, env=env)
    proc = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, encoding="utf-8", env=environ, timeout=timeout, cwd=cwd
    )
    if check and proc.returncode:
        pytest.fail(f"{impl} script exited with {proc.returncode}:\n{proc.stderr}")
    return proc
