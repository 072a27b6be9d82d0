"""offload timed as installed: its modules' bytecode compiled before anything is measured.

A pip or Nix install compiles offload's bytecode (as it is for the standard library and the
other packages already). A checkout run with ``PYTHONDONTWRITEBYTECODE`` set, as some
sandboxes and CI images set it, compiles every offload module again at every start: about
0.1 s of each run's start-up that no installed offload pays, and that a bench of fixed costs
would otherwise count. So the bench compiles offload's package once (into its ``__pycache__``
directories, which git ignores) and drops the variable from the environment its tools run in.
Nix's own hook is C++ and unaffected.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import offload

__all__ = ["compiled_env"]


def compiled_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without ``PYTHONDONTWRITEBYTECODE``, offload's bytecode compiled for it."""
    out = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    package = Path(offload.__file__).parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(package)],
        env=out,
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
    )
    return out
