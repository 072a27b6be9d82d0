"""offload's build, beside pyproject.toml: with ``OFFLOAD_USE_MYPYC=1`` the scheduler is compiled.

mypyc compiles the policy, the job graph and the simulator (``COMPILED``) to C extension
modules from the same source: the same decisions (``tests/integration/test_compiled.py``),
planned 1.5-1.8x faster (docs/BENCHMARKS.md, "Session 21"). The Nix package builds it so;
without the variable (pip's default) offload is pure Python. Compiling needs mypy and a C
compiler where the package is built: ``OFFLOAD_USE_MYPYC=1 pip install --no-build-isolation .``
with mypy installed. An editable install is never compiled: a compiled module beside its source
would shadow every later edit of that source.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

SCHEDULER = Path("src/offload/scheduler")
COMPILED = [
    SCHEDULER / "dag.py",
    SCHEDULER / "simulate.py",
    *sorted((SCHEDULER / "policy").glob("[a-z]*.py")),
]


def extensions() -> list[object]:
    if os.environ.get("OFFLOAD_USE_MYPYC") != "1":
        return []
    if "editable_wheel" in sys.argv:
        sys.exit(
            "OFFLOAD_USE_MYPYC=1: an editable install is never compiled (a compiled module would"
            " hide later edits of its source); install without -e, or unset OFFLOAD_USE_MYPYC"
        )
    try:
        from mypyc.build import mypycify
    except ImportError:
        sys.exit(
            "OFFLOAD_USE_MYPYC=1: mypyc (from mypy) is not where offload is being built;"
            " install mypy there and build with pip's --no-build-isolation"
        )

    # mypyc type-checks what it compiles and everything that imports, with whatever mypy the
    # builder has (nixpkgs' is not the one `make lint` pins). Only the types matter to the C it
    # makes: pyproject's strict lint options are left out (no config file), and the modules it
    # does not compile are read for their types, their findings not reported.
    options = ["--config-file=", "--follow-imports=silent"]
    return list(
        mypycify(
            [*options, *map(str, COMPILED)], opt_level="3", group_name="offload_scheduler"
        )
    )


setup(ext_modules=extensions())
