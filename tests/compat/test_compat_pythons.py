"""Python versions: ours works from 3.8 on (pyzo runs kernels in whatever Python the
user picks), and older interpreters get a one-line reason instead of a SyntaxError.

The pyzo kernel itself on these interpreters: tests/pyzo/test_pyzo_kernel.py.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import textwrap

import pytest
from interop_helpers import SRC
from old_pythons import find_python

pytestmark = pytest.mark.timeout(60)


def _run(exe: str, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONIOENCODING="utf-8")
    env.pop("PYTHONHOME", None)
    return subprocess.run(
        [exe, "-c", code], capture_output=True, text=True, env=env, timeout=50, cwd=tempfile.gettempdir()
    )


@pytest.mark.parametrize("version", ["2.7", "3.6", "3.7"])
def test_too_old_pythons_get_a_one_line_reason(version):
    exe = find_python(version)
    if exe is None:
        pytest.skip(f"no Python {version} on this machine")
    proc = _run(exe, "import yoton")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ImportError: yoton needs Python 3.8 or newer; this is Python {version} ("), proc.stderr


SMOKE = textwrap.dedent("""
    import sys, yoton
    from yoton.clientserver import do_request
    a, b = yoton.Context(), yoton.Context()
    conn = a.bind("127.0.0.1:0")
    b.connect("127.0.0.1:%d" % conn.port, timeout=5)
    pub, sub = yoton.PubChannel(a, "p"), yoton.SubChannel(b, "p")
    pub.send("hi")
    class R(yoton.RepChannel):
        def add(self, x, y):
            return x + y
    R(a, "r").set_mode("thread")
    out = yoton.FileWrapper(yoton.PubChannel(b, "o"), 4)
    got = yoton.SubChannel(a, "o")
    out.write("abcdef")
    print(sub.recv(5.0), yoton.ReqChannel(b, "r").add(1, 2).result(5), got.recv(5.0) + got.recv(5.0))
    print(yoton.app.process_events is not None, sys.version_info[:2])
""")


@pytest.mark.parametrize("version", ["3.8", "3.9"])
def test_old_pythons_work(version):
    exe = find_python(version)
    if exe is None:
        pytest.skip(f"no Python {version} on this machine")
    proc = _run(exe, SMOKE)
    assert proc.returncode == 0, proc.stderr
    major, minor = version.split(".")
    assert proc.stdout == f"hi 3 abcdef\nTrue ({major}, {minor})\n"
