"""yoton 2.2's module paths import from ours, with the names 2.2 had there.

The reference is yoton 2.2's own source: for each of its modules, the public
names the module itself defines (by ``def``, ``class`` or assignment, not by
importing them), and for ``yoton`` and ``yoton.channels``, whose purpose is
to re-export, every public name. Internals of 2.2 without a counterpart here
are listed in ``LEFT_OUT`` with the reason; everything else must import.
"""

from __future__ import annotations

import ast
import importlib
import json
import sys
from pathlib import Path

import pytest
from _orig import orig_path, run_orig

pytestmark = pytest.mark.timeout(60)

MODULES = [
    "yoton",
    "yoton.misc",
    "yoton.events",
    "yoton.core",
    "yoton.connection",
    "yoton.connection_tcp",
    "yoton.connection_itc",
    "yoton.context",
    "yoton.clientserver",
    "yoton.channels",
    "yoton.channels.channels_base",
    "yoton.channels.channels_pubsub",
    "yoton.channels.channels_reqrep",
    "yoton.channels.channels_state",
    "yoton.channels.channels_file",
    "yoton.channels.message_types",
]
REEXPORTING = {"yoton", "yoton.channels"}

_QUEUES = "2.2's internal message queues (ours are deques inside the channels and connections)"
_THREADS = "2.2's I/O, timer and replier threads (ours: one I/O loop per context, a timer scheduler)"
_SOCKETS = "2.2's socket helpers and buffer sizes for its I/O threads"
_HANDSHAKE = "2.2's handshake/socket/thread failure texts (ours report more specific reasons)"
LEFT_OUT = {
    "yoton.misc": {"PackageQueue": _QUEUES, "TinyPackageQueue": _QUEUES},
    "yoton.events": {
        "CallableObject": "2.2's internal wrapper of a handler",
        "TheTimerThread": _THREADS,
        "theTimerThread": _THREADS,
    },
    "yoton.core": {
        name: _SOCKETS
        for name in (
            "BUF_MAX_LEN",
            "BUFFER_SIZE_IN",
            "BUFFER_SIZE_OUT",
            "EINTR",
            "can_send",
            "can_recv",
            "send_all",
            "recv_all",
        )
    },
    "yoton.connection": {
        **{
            name: "2.2's internal connection states"
            for name in (
                "STATUS_CLOSED",
                "STATUS_CLOSING",
                "STATUS_WAITING",
                "STATUS_HOSTING",
                "STATUS_CONNECTED",
                "STATUSMAP",
            )
        },
        "InterConnection": "a stub 2.2 never implemented",
        "UDPConnection": "a stub 2.2 never implemented",
        "STOP_INVALID_REASON": "ours refuses no reason text",
        "STOP_HANDSHAKE_TIMEOUT": _HANDSHAKE,
        "STOP_HANDSHAKE_FAILED": _HANDSHAKE,
    },
    "yoton.connection_tcp": {
        **{
            name: _THREADS
            for name in (
                "HostThread",
                "HandShaker",
                "BaseIOThread",
                "SendingThread",
                "ReceivingThread",
                "SOCKET_BUFFERS_SIZE",
            )
        },
        **{
            name: _HANDSHAKE
            for name in ("STOP_SOCKET_ERROR", "STOP_HANDSHAKE_TIMEOUT", "STOP_HANDSHAKE_FAILED", "STOP_THREAD_ERROR")
        },
    },
    "yoton.clientserver": {"SocketHandler": _THREADS},
    "yoton.channels.channels_pubsub": {
        name: "2.2's internal sync-mode states" for name in ("QUEUE_NULL", "QUEUE_OK", "QUEUE_FULL")
    },
    "yoton.channels.channels_reqrep": {"ThreadForReqChannel": _THREADS},
    "yoton.channels.message_types": {
        "Packer": "2.2's codec internals (ours: yoton.wire.codec)",
        "Unpacker": "2.2's codec internals (ours: yoton.wire.codec)",
        "STDINENC": "ours reads the stdin encoding when it needs it",
    },
}


def _defined_names(path: Path) -> set:
    """Public names a module binds itself at top level (also inside if/try blocks)."""
    names = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    for elt in target.elts if isinstance(target, ast.Tuple) else [target]:
                        if isinstance(elt, ast.Name):
                            names.add(elt.id)
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return {name for name in names if not name.startswith("_")}


@pytest.fixture(scope="module")
def names_of_22():
    """{module: public names} of yoton 2.2, asked from the original in a subprocess."""
    code = (
        "import importlib, inspect, json\n"
        f"out = {{}}\nfor name in {MODULES!r}:\n"
        "    mod = importlib.import_module(name)\n"
        "    out[name] = [n for n, v in vars(mod).items() if not n.startswith('_')\n"
        "                 and not (inspect.ismodule(v) and not v.__name__.startswith('yoton'))]\n"
        "print(json.dumps(out))\n"
    )
    return json.loads(run_orig(code))


@pytest.mark.parametrize("module", MODULES)
def test_module_path_of_22_has_its_names(module, names_of_22):
    ours = importlib.import_module(module)
    if module in REEXPORTING:
        wanted = set(names_of_22[module])
    else:
        source = Path(orig_path()).joinpath(*module.split(".")).with_suffix(".py")
        if not source.exists():
            source = source.with_suffix("") / "__init__.py"
        wanted = _defined_names(source) & set(names_of_22[module])
    left_out = LEFT_OUT.get(module, {})
    assert not set(left_out) - wanted, "LEFT_OUT names a name 2.2 does not have there"
    missing = sorted(name for name in wanted - set(left_out) if not hasattr(ours, name))
    assert missing == []
    # deep imports work, and give our objects
    for name in wanted - set(left_out):
        value = getattr(importlib.import_module(module), name)
        assert value is not None or name in ("V2", "PY2")


def test_compat_modules_live_apart_and_give_the_real_objects():
    import yoton
    import yoton.channels.channels_file
    import yoton.clientserver
    from yoton.channels.channels_reqrep import TimeoutError as TE
    from yoton.clientserver import RequestServer, do_request

    assert RequestServer is yoton.RequestServer and do_request is yoton.do_request
    assert yoton.channels.channels_file.FileWrapper is yoton.FileWrapper
    assert yoton.channels.FileWrapper is yoton.FileWrapper and TE is yoton.TimeoutError
    assert yoton.clientserver.__file__.replace("\\", "/").endswith("yoton/_compat22/clientserver.py")
    # attribute access without an import, as after 2.2's "import yoton"
    assert yoton.misc.slot_hash("foo.txt.pub-sub") == 15285871923228
    assert yoton.core.HEADER_FORMAT == "<7Q" and yoton.channels_reqrep.REQREP_SEQ_REF == 2**63
    assert yoton.app.embed_event_loop is not None and yoton.events.app is yoton.app
    assert yoton.str is str and yoton.bytes is bytes
    with pytest.raises(AttributeError):
        yoton.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        importlib.import_module("yoton.no_such_module")
    # the real layout is untouched: yoton.channels is our package, not the compat folder
    assert Path(yoton.channels.__file__).parent.name == "channels"
    assert Path(yoton.channels.__file__).parent.parent.name == "yoton"
    assert "yoton.channels" in sys.modules
