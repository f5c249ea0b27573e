"""pyzo's command server (core/commandline.py) on ours: ``from yoton.clientserver import ...``,
requests answered, and pyzo's way of stopping it (``server.stop()`` then a last
``do_request(ADDRESS, "stopserver", 0.1)``) reports "Stopped our command server.".

The module is pyzo's own, loaded from the wheel with a bare stand-in for the
``pyzo`` package (its real ``__init__`` needs Qt). It serves on pyzo's fixed
address ``localhost:pyzoserver``, so a pyzo (or another run of this test) on
the machine holding that port makes the test skip.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from _orig import pyzo_path
from compat_run import run_script

pytestmark = pytest.mark.timeout(60)

SCRIPT = textwrap.dedent("""
    import sys, types
    pyzo = types.ModuleType("pyzo")
    pyzo.__path__ = [sys.argv[1]]
    pyzo.callLater = lambda *args, **kwargs: None  # (the IDE's event loop: not needed here)
    pyzo.editors = None
    core = types.ModuleType("pyzo.core")
    core.__path__ = [sys.argv[1] + "/core"]
    sys.modules["pyzo"], sys.modules["pyzo.core"], pyzo.core = pyzo, core, core
    from pyzo.core import commandline
    if commandline.server is None:
        print("PORT TAKEN", commandline.server_err)
        sys.exit(0)
    print(commandline.is_our_server_running())
    import time
    for i in range(500):  # (yoton 2.2's server listens once its thread runs; pyzo gets there later)
        if commandline.is_pyzo_server_running():
            break
        time.sleep(0.01)
    sys.argv = ["pyzo", "echo", "hi"]
    print(repr(commandline.handle_cmd_args()))
    print(commandline.is_pyzo_server_running())
    commandline.stop_our_server()
    commandline.server.join(5)
    print(commandline.server.is_alive())
""")


def _run(impl):
    return run_script(impl, SCRIPT, str(Path(pyzo_path()) / "pyzo")).stdout


def test_pyzo_command_server_on_ours():
    ours = _run("ours")
    if ours.startswith("PORT TAKEN"):
        pytest.skip(f"pyzo's command server port is in use on this machine: {ours.strip()}")
    assert ours == "True\n\"echo 'hi'\"\nTrue\nStopped our command server.\nFalse\n"
    orig = _run("orig")  # the reference
    if not orig.startswith("PORT TAKEN"):
        assert ours == orig
