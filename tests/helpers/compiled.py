"""offload installed compiled (``setup.py`` with ``OFFLOAD_USE_MYPYC=1``), as the Nix package is.

``install_compiled(dest)`` builds a copy of this checkout with mypyc, as pip builds any
install (no build isolation: this environment's mypy and setuptools), into ``dest/site``: a
``PYTHONPATH`` entry under which ``import offload`` is the compiled build. The copy keeps the
checkout clean (setuptools builds in the source tree). About 25 s of gcc on this machine at
the Nix package's optimisation, 12 s at none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "src", "bin")


def scheduler_compiled() -> bool:
    """Is the scheduler this process imports the compiled build (its policy a C extension)?
    A test that patches a method of a compiled class sees no call from compiled code."""
    from offload.scheduler.policy import core

    return not (core.__file__ or "").endswith(".py")


def copy_source(dest: Path) -> Path:
    """What a build of offload reads, copied to ``dest/source`` (bytecode caches left out)."""
    source = dest / "source"
    source.mkdir(parents=True)
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    return source


def pip_install(
    source: Path, *args: str, compiled: bool = True, opt_level: str = "3"
) -> subprocess.CompletedProcess[str]:
    """``pip install --no-deps --no-build-isolation ARGS SOURCE``, compiled if asked (at the C
    compiler's ``opt_level``)."""
    env = dict(
        os.environ, OFFLOAD_USE_MYPYC="1" if compiled else "0", OFFLOAD_MYPYC_OPT_LEVEL=opt_level
    )
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", *args, str(source)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def install_compiled(dest: Path, opt_level: str = "3") -> Path:
    """offload built compiled into ``dest/site``; returns that directory. The tests build at
    ``opt_level`` 0 (the same C, half of gcc's time), the bench as the Nix package does."""
    site = dest / "site"
    done = pip_install(copy_source(dest), "--target", str(site), opt_level=opt_level)
    assert done.returncode == 0, done.stdout + done.stderr
    return site
