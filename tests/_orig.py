"""Locate the original yoton 2.2 (from pyzo 4.22.0) for black-box comparison tests.

:func:`orig_path` returns a directory holding the original ``yoton`` package,
so ``PYTHONPATH=<that dir> python -c "import yoton"`` imports the original.
Only ever run it in a subprocess: it must not shadow the yoton under test.
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
    target = _CACHE / "pyzo"
    if _has_yoton(target):
        return str(target)
    _CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=_CACHE) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             f"pyzo=={PYZO_VERSION}", "-d", tmp],
            capture_output=True, text=True, timeout=600,
        )
        wheels = list(Path(tmp).glob("pyzo-*.whl"))
        if proc.returncode or not wheels:
            raise RuntimeError(
                f"could not download pyzo=={PYZO_VERSION} to get the original yoton "
                f"(set YOTON_ORIG_PATH to skip the download):\n{proc.stdout}\n{proc.stderr}"
            )
        staging = Path(tmp) / "extract"
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.startswith("pyzo/yoton/")]
            if not members:
                raise RuntimeError(f"{wheels[0].name} holds no pyzo/yoton package")
            wheel.extractall(staging, members)
        try:
            os.replace(staging / "pyzo", target)  # atomic; a racing process may win
        except OSError:
            if not _has_yoton(target):
                raise
            shutil.rmtree(staging, ignore_errors=True)
    if not _has_yoton(target):
        raise RuntimeError(f"extracting the original yoton into {target} failed")
    return str(target)


def run_orig(code: str, stdin: str = "", timeout: float = 60) -> str:
    """Run ``code`` in a fresh interpreter that imports the original yoton; return its stdout."""
    env = dict(os.environ, PYTHONPATH=orig_path())
    proc = subprocess.run(
        [sys.executable, "-c", code], input=stdin, capture_output=True, text=True,
        env=env, timeout=timeout, cwd=tempfile.gettempdir(),
    )
    if proc.returncode:
        raise RuntimeError(f"original yoton subprocess failed:\n{proc.stderr}")
    return proc.stdout
