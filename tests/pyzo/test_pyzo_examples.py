"""The example scripts in the pyzo wheel's ``pyzo/yoton/tests`` folder print the same with ours.

Each example runs, unchanged but for what is listed below, in a subprocess
with yoton 2.2 and with ours; the outputs must match. The runs happen a few at
a time, started by a module fixture (most of an example's time is waiting).

Changes to every example: the named ports (``localhost:test`` ...) are
renamed, unique to the run, implementation and example, and chosen to hash
above the usual ephemeral ports, so that examples running at the same time and
outgoing connections do not collide (no example prints a port).
Per example:

* ``hello_world.py``: its last cell is left out (it reads 2.2's per-connection
  I/O thread attributes, ``_sendingThread`` and ``_receivingThread``, which
  have no counterpart in ours).
* ``hops.py``, ``hello_world.py``: they make contexts with ``verbose`` > 0;
  2.2 then prints "Yoton: ..." lines on stdout, ours logs them on the "yoton"
  logger (INFO): those lines are not compared.
* ``event_driven1.py``: a replier raises; 2.2 prints the error on stdout, ours
  logs it (stderr when logging is not configured): that block is not
  compared, and ours' stderr must show the error instead.
* ``event_driven2.py``: its delays (2, 4, 6, 8 s) are divided by 10;
  ``event_driven1.py``: its pause between requests (0.5 s) too; ``status.py``:
  the delays of its sends (1 to 2.5 s) are divided by 5 (they only pace the
  examples; the waits for messages to travel stay as they are).
* ``status.py``: it prints ``id(channel)``: ids become labels; two channels
  receive each state in an order that depends on the network, so the lines
  of its event-loop part are compared sorted.
* ``status.py``: its event loop is stopped by the first "stop" received; a
  second channel's "stop" may or may not be handled before (with 2.2 too):
  one "stop" line is compared.
* ``utest.py`` (2.2's unit tests): run from a folder two levels below one
  holding the implementation's ``yoton`` (it imports ``../..``); its unittest
  verdicts are compared. Which replier serves which request in its
  load-balancing test, and how many requests are served before its "stop",
  depend on timing (with 2.2 too): only that they were served is compared.

The examples pace themselves with sleeps; when the outputs differ, both
implementations run the example again (up to ``RETRIES`` times) before the
test fails, so a run of 2.2 that a loaded machine made miss its timing does
not count against ours.

Left out: ``test_networkPackageQueue.py`` (exercises 2.2's internal queue
class ``yoton.misc.TinyPackageQueue``, which has no counterpart),
``test_speed.py`` (a benchmark: prints timings and plots with matplotlib),
``count_lines_of_code.py`` (counts the lines of 2.2's own source files),
``_test_inExternalCode.py`` and ``_test_message_stuff.py`` (time numpy/scipy
and string joins; they do not use yoton).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from _orig import orig_path, pyzo_path
from interop_helpers import SRC

from yoton.wire.naming import port_hash

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(pyzo_path()) / "pyzo" / "yoton" / "tests"
RUN = [
    "hello_world.py",
    "hops.py",
    "message_type.py",
    "reqrep.py",
    "routing_splitting.py",
    "status.py",
    "event_driven1.py",
    "event_driven2.py",
    "test_rapid_reconnect.py",
    "utest.py",
]
LEFT_OUT = [
    "test_networkPackageQueue.py",
    "test_speed.py",
    "count_lines_of_code.py",
    "_test_inExternalCode.py",
    "_test_message_stuff.py",
]
TAG = uuid.uuid4().hex[:6]


_NAMES: dict = {}
_NAMES_LOCK = threading.Lock()  # (examples are prepared in the fixture's worker threads)


def _port_name(port_name: str, impl: str, example: str) -> str:
    """A new name for a named port of an example: unique to this run, implementation and
    example, and hashed above Linux's usual ephemeral ports (up to 60999), so that
    neither the examples running at the same time nor their own outgoing
    connections hold it (2.2 binds without retrying elsewhere)."""
    key = (port_name, impl, example)
    with _NAMES_LOCK:
        if key not in _NAMES:
            # (and away from pyzo's command server, which tests/pyzo/test_pyzo_commandline.py
            # runs on its fixed port meanwhile: an example's peer dialling it was served there)
            taken = {port_hash(name) for name in _NAMES.values()} | {port_hash("pyzoserver")}
            for k in range(100000):
                candidate = f"{port_name}{TAG}{k}"
                port = port_hash(candidate)
                if 61000 <= port <= 65500 and not any(abs(port - other) < 8 for other in taken):
                    _NAMES[key] = candidate
                    break
        return _NAMES[key]


def _prepare(name: str, impl: str) -> str:
    source = (EXAMPLES / name).read_text(encoding="utf-8")
    source = re.sub(r"((?:localhost|publichost):)([A-Za-z]\w*)", lambda m: m[1] + _port_name(m[2], impl, name), source)
    if name == "hello_world.py":
        source = source[: source.rindex("\n##")]
    if name == "event_driven2.py":
        for seconds in (2, 4, 6, 8):
            source = source.replace(f"pub.send, {seconds},", f"pub.send, {seconds / 10},")
    if name == "event_driven1.py":
        source = source.replace("time.sleep(0.5)", "time.sleep(0.05)")
    if name == "status.py":
        source = re.sub(
            r"call_later\(pub1.send, ([\d.]+),", lambda m: f"call_later(pub1.send, {float(m[1]) / 5},", source
        )
    return source


def _run(impl: str, name: str, base: Path) -> subprocess.CompletedProcess:
    yoton_dir = (SRC if impl == "ours" else Path(orig_path())) / "yoton"
    root = base / f"{impl}-{name[:-3]}"
    cwd = root / "a" / "b"
    cwd.mkdir(parents=True)
    try:
        (root / "yoton").symlink_to(yoton_dir, target_is_directory=True)
    except OSError:
        shutil.copytree(yoton_dir, root / "yoton")
    script = cwd / name
    script.write_text(_prepare(name, impl), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONIOENCODING="utf-8")
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, encoding="utf-8", env=env, cwd=cwd, timeout=100
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{(impl, example): Future of its CompletedProcess}, a few running at a time."""
    base = tmp_path_factory.mktemp("examples")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=6)
    # the longest first, so the others fill in around them
    order = ["utest.py", "status.py"] + [name for name in RUN if name not in ("utest.py", "status.py")]
    futures = {(impl, name): pool.submit(_run, impl, name, base) for name in order for impl in ("orig", "ours")}
    yield futures
    pool.shutdown(wait=True)


_VERBOSE = re.compile(r"Yoton: (?:waiting|hosting|connected) at [\w.]+:\d+\.")


def _normalize(name: str, impl: str, proc: subprocess.CompletedProcess) -> list:
    if name in ("hops.py", "hello_world.py"):
        # 2.2's verbose lines, printed from its threads: they may share a line with
        # others or leave empty ones
        lines = [line for line in _VERBOSE.sub("", proc.stdout).splitlines() if line]
    else:
        lines = proc.stdout.splitlines()
    if name == "event_driven1.py" and impl == "orig":
        start = lines.index("yoton.RepChannel: error handling request:")
        del lines[start : start + 3]  # the header, the error text, and the empty line the text ends with
    if name == "status.py":
        labels = {}
        lines = [
            re.sub(r"^\d+", lambda m: labels.setdefault(m.group(), f"channel{len(labels) + 1}"), line) for line in lines
        ]
        head, loop = lines[:5], lines[5:]
        loop = sorted(re.sub(r"^channel\d", "channel", line) for line in loop)
        # the first "stop" handler stops the event loop: the second channel's
        # "stop" may or may not be handled before that (with either yoton)
        lines = head + [line for k, line in enumerate(loop) if not line.endswith(" stop") or k == len(loop) - 1]
    if name == "utest.py":
        verdicts = sorted(
            line.split("...")[-1].strip() + " " + line.split(" ")[0]
            for line in proc.stderr.splitlines()
            if line.startswith("test_")
        )
        summary = [line for line in proc.stderr.splitlines() if line in ("OK", "FAILED")]
        handled = [line for line in lines if line.startswith("request")]
        # which replier serves which request, and how many are served before the
        # "stop" reply ends the event loop, depends on timing (with either yoton)
        well_formed = all(re.fullmatch(r"request msg\d from [12] handled by context [123]\.", line) for line in handled)
        return verdicts + summary + [f"{bool(handled)} requests handled, well formed: {well_formed}"]
    return lines


def test_every_example_is_run_or_left_out_with_a_reason():
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(RUN + LEFT_OUT)


#: How often an example runs again with both yotons when their outputs differ: the examples
#: pace themselves with sleeps, and on a loaded machine yoton 2.2's own run can miss one
#: (its utest.py then reports a FAIL of its own).
RETRIES = 2


@pytest.mark.parametrize("name", RUN)
def test_example_prints_the_same_with_ours(name, runs, tmp_path):
    orig, ours = runs["orig", name].result(), runs["ours", name].result()
    tries = []
    for attempt in range(RETRIES + 1):
        if attempt:
            base = tmp_path / f"again{attempt}"
            orig, ours = _run("orig", name, base), _run("ours", name, base)
        for impl, proc in (("orig", orig), ("ours", ours)):
            assert proc.returncode == 0, f"{name} with {impl} exited with {proc.returncode}:\n{proc.stderr}"
        expected = _normalize(name, "orig", orig)
        assert expected, orig.stdout  # (the example printed something)
        got = _normalize(name, "ours", ours)
        if got == expected:
            break
        tries.append((got, expected))
    else:
        raise AssertionError(f"{name}: ours printed otherwise than yoton 2.2 in every run: {tries}")
    if name == "event_driven1.py":
        assert "error handling request 'reduce'" in ours.stderr and "I do not like 2." in ours.stderr
    if name == "utest.py":
        assert "ok" in " ".join(expected) and "OK" in expected
