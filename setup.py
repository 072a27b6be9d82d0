"""offload's build, beside pyproject.toml: with ``OFFLOAD_USE_MYPYC=1`` the scheduler is compiled.

mypyc compiles the policy, the job graph and the simulator (``COMPILED``) to C extension
modules from the same source: the same decisions (``tests/integration/test_compiled.py``),
planned 1.5-1.8x faster (docs/BENCHMARKS.md, "Session 21"). The Nix package builds it so;
without the variable (pip's default) offload is pure Python. Compiling needs mypy and a C
compiler where the package is built: ``OFFLOAD_USE_MYPYC=1 pip install --no-build-isolation .``
with mypy installed.

mypyc type-checks and writes the C (about 3 s) only for a step that builds: not for the
metadata steps a build runs first (``egg_info``, ``dist_info``; ``sdist``), which need no
extension. A build whose compiled modules would land beside their source is never compiled
(an editable install, ``setup.py develop``, ``build_ext --inplace``): a module compiled there
would hide every later edit of that source.

``OFFLOAD_MYPYC_OPT_LEVEL`` (0-3, default 3) is the C compiler's optimisation: the tests build
at 0, the same C in half of gcc's time; the Nix package and the bench build at 3.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Distribution, setup

SCHEDULER = Path("src/offload/scheduler")
COMPILED = [
    SCHEDULER / "dag.py",
    SCHEDULER / "simulate.py",
    *sorted((SCHEDULER / "policy").glob("[a-z]*.py")),
]
# The steps that build nothing: their metadata is the same with or without the extensions.
METADATA_ONLY = frozenset({"egg_info", "dist_info", "sdist"})
# The steps that build into the source tree: what they are to the user, and what to do instead.
IN_PLACE = {
    "editable_wheel": ("an editable install", "install without -e"),
    "develop": ("setup.py develop", "install with pip install . instead"),
    "build_ext": ("build_ext --inplace", "build without --inplace"),
}


class CompilingDistribution(Distribution):
    """Compiles (``extensions``) once the command line is read, for the steps that build."""

    def run_commands(self) -> None:
        if os.environ.get("OFFLOAD_USE_MYPYC") == "1" and not set(self.commands) <= METADATA_ONLY:
            steps = [c for c in ("editable_wheel", "develop") if c in self.commands]
            if _inplace(self.get_option_dict("build_ext")):  # -i, or setup.cfg's
                steps.append("build_ext")
            if steps:
                what, instead = IN_PLACE[steps[0]]
                sys.exit(
                    f"OFFLOAD_USE_MYPYC=1: {what} is never compiled (a compiled module beside"
                    f" its source would hide later edits of it); {instead}, or unset"
                    " OFFLOAD_USE_MYPYC"
                )
            self.ext_modules = extensions()
        super().run_commands()


def _inplace(options: dict[str, tuple[str, object]]) -> bool:
    """build_ext's ``inplace`` as setuptools reads it: (where, value), the command line's 1 or
    a config file's text, true as distutils' strtobool reads it ("inplace = 0" is off)."""
    _, value = options.get("inplace", ("", False))
    if isinstance(value, str):
        return value.strip().lower() in {"1", "y", "yes", "t", "true", "on"}
    return bool(value)


def extensions() -> list[object]:
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
    level = os.environ.get("OFFLOAD_MYPYC_OPT_LEVEL", "3")
    if level not in {"0", "1", "2", "3"}:
        sys.exit(f"OFFLOAD_MYPYC_OPT_LEVEL={level!r}: not an optimisation level; give 0 to 3")
    return list(
        mypycify([*options, *map(str, COMPILED)], opt_level=level, group_name="offload_scheduler")
    )


setup(distclass=CompilingDistribution)
