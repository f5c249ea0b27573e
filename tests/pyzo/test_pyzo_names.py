"""Every yoton name pyzo 4.22's own modules use exists in ours, with the meaning pyzo relies on.

Two parts: the names found by reading pyzo's source mechanically (every
``yoton.x.y`` reached from ``import yoton`` and every ``from yoton... import``,
in all of pyzo's modules except its vendored yoton), resolved in ours; and the
attributes pyzo uses on yoton's objects (found by reading pyzo's kernel,
broker and shell), private ones included, checked on real objects.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from _orig import pyzo_path

import yoton

pytestmark = pytest.mark.timeout(30)


def _pyzo_sources():
    root = Path(pyzo_path()) / "pyzo"
    return [path for path in sorted(root.rglob("*.py")) if "yoton" not in path.relative_to(root).parts]


def _yoton_uses():
    """{dotted name: first file using it} for yoton names in pyzo's source."""
    uses = {}
    for path in _pyzo_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "yoton":
                for alias in node.names:
                    uses.setdefault(f"{node.module}:{alias.name}", path.name)
            elif isinstance(node, ast.Attribute):
                chain, inner = [], node
                while isinstance(inner, ast.Attribute):
                    chain.append(inner.attr)
                    inner = inner.value
                if isinstance(inner, ast.Name) and inner.id == "yoton":
                    uses.setdefault("yoton:" + ".".join(reversed(chain)), path.name)
    # (keep the longest chains: yoton.app.embed_event_loop covers yoton.app)
    return {
        name: where
        for name, where in uses.items()
        if not any(other != name and other.startswith(name + ".") for other in uses)
    }


USES = _yoton_uses()


def test_pyzo_uses_what_we_expect_to_check():
    # a sanity check of the reading itself: the names the issue is about are among them
    assert {
        "yoton.clientserver:RequestServer",
        "yoton.clientserver:do_request",
        "yoton:app.embed_event_loop",
        "yoton:RepChannel",
        "yoton:FileWrapper",
        "yoton:Timer",
        "yoton:select_sub_channel",
    } <= set(USES)


@pytest.mark.parametrize("use", sorted(USES))
def test_name_pyzo_uses_exists_in_ours(use):
    module_name, _, dotted = use.partition(":")
    value = importlib.import_module(module_name)
    for part in dotted.split("."):
        value = getattr(value, part)  # AttributeError here: pyzo would fail (see USES[use])
    assert value is not None


# -- attributes pyzo uses on yoton's objects (from reading pyzokernel/, core/kernelbroker.py, core/shell.py) --


def test_attributes_pyzo_uses_on_objects(ctx):
    a, b = ctx(), ctx()
    conn = a.bind("localhost:PYZO", max_tries=256, name="kernel")  # kernelbroker: a hashed name, many tries
    other = b.connect(f"localhost:{conn.port1}", timeout=5.0)
    conn.timeout = 0.5
    for signal in (conn.closed, conn.timedout, other.closed):
        signal.bind(lambda *args: None)
    assert conn.is_connected or conn.is_waiting
    assert isinstance(conn.pid2, int) and isinstance(other.pid2, int)
    assert a.connection_count in (0, 1) and b.connection_count == 1
    a._ctrl_command = yoton.SubChannel(a, "ctrl-command")  # start.py stores channels on the context
    stdin = yoton.FileWrapper(a._ctrl_command, echo=yoton.PubChannel(a, "strm-echo"), isatty=True)
    stdout = yoton.FileWrapper(yoton.PubChannel(a, "strm-out"), 256, isatty=True)
    stdout.fileno = lambda: 1  # start.py assigns fileno on the stdout/stderr wrappers
    assert stdin._channel is a._ctrl_command and stdin.closed is False  # control.py: sys.stdin._channel.close()
    rep = yoton.RepChannel(a, "reqp-introspect")
    rep.set_mode("thread")
    rep.set_mode(0)
    assert rep._run_mode == 0  # interpreter.py, each pass
    rep._process_events_local()
    sub = yoton.SubChannel(b, "strm-out")
    sub.set_sync_mode(True)
    assert sub.recv_selected() == [] and sub.recv_all() == [] and sub.recv(False) == ""
    state = yoton.StateChannel(b, "stat-startup", yoton.OBJECT)
    state.received.bind(lambda channel: channel.recv())
    req = yoton.ReqChannel(b, "reqp-introspect", 0.5)
    future = req.signature("x")
    future.cto = "anything"  # shell.py hangs its own data on futures
    future.add_done_callback(lambda f: f.cancelled() or f.exception())  # (as the shell: cancelled first)
    future.cancel()
    assert future.cancelled()
    timer = yoton.Timer(0.2, oneshot=False)  # kernelbroker's main loop timer
    timer.bind(lambda: None)
    timer.start()
    timer.unbind(None)
    timer.stop()
    b.close_channels()
    a.flush()
    b.flush()
    conn.close()
    yoton.process_events(False)
