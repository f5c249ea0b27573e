"""pyzo 4.22's kernels and kernel broker run on ours, unchanged, on both sides.

Each session (tests/pyzo/pyzo_ide.py, in a subprocess) runs pyzo's real
KernelBroker with a shell that does what pyzo's shell does; the broker starts
pyzo's real kernel (``pyzokernel/start.py <port>``, PYTHONPATH = pyzoDir)
from a pyzoDir whose vendored ``yoton`` is replaced by the one under test.
One kernel serves the checks in turn (print, ``input()`` with its echo, a
traceback, introspection, interrupt), then a restart gives a second kernel,
which is terminated; its process must be gone. The sessions run at the same
time (they mostly wait), each step waiting for its condition with a deadline.

Sessions: ours on both sides; ours in the IDE with yoton 2.2 in the kernel and
the reverse; 2.2 on both sides (the reference: the harness itself is right);
ours in kernels on the oldest interpreters present (3.8, 3.9); and a kernel
that serves introspection from its main loop (``_run_mode`` 0 and
``_process_events_local``, PYZO_INTROSPECT_IN_MAIN_THREAD=1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from _orig import orig_path, pyzo_path
from interop_helpers import SRC
from old_pythons import find_python

pytestmark = pytest.mark.timeout(180)

HARNESS = Path(__file__).resolve().parent / "pyzo_ide.py"
ALL_STEPS = ["start", "stdout", "input", "traceback", "introspect", "interrupt", "restart", "terminate"]

# name: (IDE yoton, kernel yoton, kernel Python version or None for this one, steps, extra environment)
SESSIONS = {
    "ours-ours": ("ours", "ours", None, ALL_STEPS, {}),
    "ours-ide_orig-kernel": ("ours", "orig", None, ALL_STEPS, {}),
    "orig-ide_ours-kernel": ("orig", "ours", None, ALL_STEPS, {}),
    "orig-orig": ("orig", "orig", None, ALL_STEPS, {}),
    "ours-ours_py3.8": ("ours", "ours", "3.8", ALL_STEPS, {}),
    "ours-ours_py3.9": ("ours", "ours", "3.9", ALL_STEPS, {}),
    "ours-ours_main-thread-introspection": (
        "ours",
        "ours",
        None,
        ["start", "stdout", "introspect", "terminate"],
        {"PYZO_INTROSPECT_IN_MAIN_THREAD": "1"},
    ),
}


def _yoton_dir(impl: str) -> Path:
    return (SRC if impl == "ours" else Path(orig_path())) / "yoton"


def _pyzo_dir(base: Path, kernel_impl: str) -> Path:
    """A pyzoDir for the broker: pyzo's kernel package, and ``yoton`` = the kernel's yoton."""
    folder = base / f"pyzo-{kernel_impl}"
    if not folder.exists():
        folder.mkdir(parents=True)
        for name, target in (
            ("pyzokernel", Path(pyzo_path()) / "pyzo" / "pyzokernel"),
            ("yoton", _yoton_dir(kernel_impl)),
        ):
            try:
                (folder / name).symlink_to(target, target_is_directory=True)
            except OSError:  # (no symlinks here: a copy does as well)
                shutil.copytree(target, folder / name)
    return folder


class Session:
    def __init__(self, name, base: Path):
        ide, kernel, version, steps, extra_env = SESSIONS[name]
        self.name, self.ide, self.kernel, self.steps = name, ide, kernel, steps
        self.skip = None
        exe = sys.executable if version is None else find_python(version)
        if exe is None:
            self.skip, self.proc = f"no Python {version} on this machine", None
            return
        config = {
            "pyzo_package": str(Path(pyzo_path()) / "pyzo"),
            "pyzo_dir": str(_pyzo_dir(base, kernel)),
            "kernel_exe": exe,
            "steps": steps,
        }
        ide_path = str(SRC) if ide == "ours" else orig_path()
        env = dict(os.environ, PYTHONPATH=ide_path, PYTHONIOENCODING="utf-8", **extra_env)
        self.proc = subprocess.Popen(
            [sys.executable, str(HARNESS), json.dumps(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=env,
            cwd=tempfile.gettempdir(),
        )
        self._result = None

    def result(self):
        if self._result is None:
            try:
                out, err = self.proc.communicate(timeout=150)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
                err += "\n(the session was killed after 150 s)"
            lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            steps = {line["step"]: line for line in lines if "step" in line}
            tail = next((line for line in lines if "transcript" in line), {})
            self._result = steps, tail, err
        return self._result


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """Start every session at once (they mostly wait on kernels); results are read on demand."""
    base = tmp_path_factory.mktemp("pyzodirs")
    started = {name: Session(name, base) for name in SESSIONS}
    yield started
    for session in started.values():
        if session.proc is not None and session.proc.poll() is None:
            session.proc.kill()
            session.proc.communicate()


@pytest.mark.parametrize("name", list(SESSIONS))
def test_pyzo_session(sessions, name):
    session = sessions[name]
    if session.skip:
        pytest.skip(session.skip)
    steps, tail, stderr = session.result()
    report = "\n".join(
        f"  {step}: {'ok' if steps.get(step, {}).get('ok') else 'FAILED'} {steps.get(step, {}).get('detail')!r}"
        for step in session.steps
    )
    transcript = "".join(f"[{stream}]{text}" for stream, text in tail.get("transcript", []))
    context = f"\nsteps:\n{report}\ntranscript:\n{transcript}\nharness stderr:\n{stderr[-3000:]}"
    assert [step for step in session.steps if not steps.get(step, {}).get("ok")] == [], context
    # the IDE side and the kernel ran the yotons they should
    assert Path(tail["yoton"]).resolve().parent == _yoton_dir(session.ide).resolve(), context
    kernel_version = steps["stdout"]["detail"]["kernel_yoton"]
    assert (kernel_version == "2.2") == (session.kernel == "orig"), context
    wanted = SESSIONS[name][2]
    if wanted:
        assert steps["start"]["detail"]["version"] == [int(part) for part in wanted.split(".")], context
    if "restart" in session.steps:
        pids = steps["restart"]["detail"]
        assert pids["old"] == steps["start"]["detail"]["pid"] and pids["new"] != pids["old"]
