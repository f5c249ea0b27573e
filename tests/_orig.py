"""Locate the original yoton 2.2 (from pyzo 4.22.0) for black-box comparison tests.

:func:`orig_path` returns a directory holding the original ``yoton`` package,
so ``PYTHONPATH=<that dir> python -c "import yoton"`` imports the original.
Only ever run it in a subprocess: it must not shadow the yoton under test.
:func:`pyzo_path` returns a directory holding the whole ``pyzo`` package
(its kernel, its IDE modules and its examples for yoton).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PYZO_VERSION = "4.22.0"
_CACHE = Path.home() / ".cache" / "yoton-tests" / f"pyzo-{PYZO_VERSION}"


def _has_yoton(folder: Path) -> bool:
    return (folder / "yoton" / "__init__.py").is_file()


def _download_wheel(folder: Path) -> Path:
    """Download the pyzo wheel into ``folder`` with pip; return its path."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"pyzo=={PYZO_VERSION}",
            "-d",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    wheels = list(folder.glob("pyzo-*.whl"))
    if proc.returncode or not wheels:
        raise RuntimeError(
            f"could not download pyzo=={PYZO_VERSION} to get the original yoton "
            f"(set YOTON_ORIG_PATH / YOTON_PYZO_PATH to skip the download):\n{proc.stdout}\n{proc.stderr}"
        )
    return wheels[0]


def _extract(target: Path, prefix: str, check) -> None:
    """Download the wheel and move its members under ``prefix`` to ``target``/pyzo (atomically)."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        wheel = _download_wheel(Path(tmp))
        staging = Path(tmp) / "extract"
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(prefix)]
            if not members:
                raise RuntimeError(f"{wheel.name} holds nothing under {prefix}")
            zf.extractall(staging, members)
        try:
            os.replace(staging / "pyzo", target / "pyzo")  # atomic; a racing process may win
        except OSError:
            if not check(target):
                raise
            shutil.rmtree(staging, ignore_errors=True)
    if not check(target):
        raise RuntimeError(f"extracting {prefix} into {target} failed")


def orig_path() -> str:
    """Return a directory containing the original ``yoton`` package.

    Uses ``$YOTON_ORIG_PATH`` if set; else a per-user cache, filled on first
    use by downloading the pyzo wheel with pip and extracting ``pyzo/yoton``.
    Raises RuntimeError when the original cannot be had (tests must fail).
    """
    env = os.environ.get("YOTON_ORIG_PATH")
    if env:
        if not _has_yoton(Path(env)):
            raise RuntimeError(f"YOTON_ORIG_PATH={env!r} does not contain a yoton package")
        return env
    if not _has_yoton(_CACHE / "pyzo"):
        _extract(_CACHE, "pyzo/yoton/", lambda t: _has_yoton(t / "pyzo"))
    return str(_CACHE / "pyzo")


def _has_pyzo(folder: Path) -> bool:
    return all(
        (folder / "pyzo" / sub).is_file()
        for sub in ("__init__.py", "yoton/__init__.py", "pyzokernel/start.py", "core/kernelbroker.py")
    )


def pyzo_path() -> str:
    """Return a directory containing the whole ``pyzo`` package of the wheel (IDE and kernel code).

    Its ``pyzo`` folder is pyzo's ``pyzoDir``: ``pyzo/pyzokernel`` (the kernel),
    ``pyzo/core`` (the IDE side), ``pyzo/yoton`` (the vendored yoton 2.2).
    Uses ``$YOTON_PYZO_PATH`` if set; else a second extraction in the same
    per-user cache as :func:`orig_path`. Read it only: tests that need a
    changed copy make one of their own.
    """
    env = os.environ.get("YOTON_PYZO_PATH")
    if env:
        if not _has_pyzo(Path(env)):
            raise RuntimeError(f"YOTON_PYZO_PATH={env!r} does not contain the pyzo package")
        return env
    target = _CACHE / "full"
    if not _has_pyzo(target):
        _extract(target, "pyzo/", _has_pyzo)
    return str(target)


def run_orig(code: str, stdin: str = "", timeout: float = 60) -> str:
    """Run ``code`` in a fresh interpreter that imports the original yoton; return its stdout."""
    env = dict(os.environ, PYTHONPATH=orig_path())
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=tempfile.gettempdir(),
    )
    if proc.returncode:
        raise RuntimeError(f"original yoton subprocess failed:\n{proc.stderr}")
    return proc.stdout
