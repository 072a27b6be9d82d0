"""offload built compiled by mypyc (``setup.py``, ``OFFLOAD_USE_MYPYC=1``) as the Nix package is.

The build is real: pip builds a copy of this checkout with this environment's mypy and gcc
(``tests.helpers.compiled``). Under it, the scheduler's modules are C extensions, and they must
decide exactly as the interpreted source does: ``bench/plan_fingerprint.py`` hashes the
schedules of many random simulations (failures, transfers, first runs, speculation), and the
scheduler's own unit tests run against the compiled build.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.compiled import ROOT, copy_source, install_compiled

# What setup.py compiles, as modules.
COMPILED = [
    "offload.scheduler.dag",
    "offload.scheduler.simulate",
    *sorted(
        f"offload.scheduler.policy.{p.stem}"
        for p in (ROOT / "src/offload/scheduler/policy").glob("[a-z]*.py")
    ),
]
# The unit tests of what is compiled.
SCHEDULER_TESTS = [
    "tests/unit/test_policy.py",
    "tests/unit/test_policy_full.py",
    "tests/unit/test_policy_load.py",
    "tests/unit/test_policy_overrun.py",
    "tests/unit/test_policy_past_run.py",
    "tests/unit/test_policy_slack_margin.py",
    "tests/unit/test_place_by_holders.py",
    "tests/unit/test_pool.py",
    "tests/unit/test_sched_dag.py",
    "tests/unit/test_simulate.py",
    "tests/unit/test_failed_paths.py",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_compiled(tmp_path_factory.mktemp("compiled"), opt_level="0")


def _python(pythonpath: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    return subprocess.run(
        [sys.executable, *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_the_compiled_build_runs_the_scheduler_as_c(site: Path) -> None:
    files = _python(
        site,
        "-c",
        f"import importlib; [print(importlib.import_module(m).__file__) for m in {COMPILED}]",
    )
    assert files.returncode == 0, files.stderr
    shown = files.stdout.split()
    assert len(shown) == len(COMPILED) >= 10
    assert all(Path(f).is_relative_to(site) and f.endswith(".so") for f in shown), shown
    version = _python(site, "-m", "offload", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("offload")


@pytest.mark.parametrize("moves", [False, True], ids=["plain", "moves"])
def test_the_compiled_scheduler_decides_as_the_interpreted_one(site: Path, moves: bool) -> None:
    argv = ["bench/plan_fingerprint.py", "36", *(["--moves"] if moves else [])]
    interpreted, compiled = _python(ROOT / "src", *argv), _python(site, *argv)
    assert interpreted.returncode == 0, interpreted.stderr
    assert compiled.returncode == 0, compiled.stderr
    last = interpreted.stdout.splitlines()[-1]
    assert last.startswith("ALL ")
    assert compiled.stdout.splitlines()[-1] == last


def test_the_scheduler_unit_tests_pass_against_the_compiled_build(site: Path) -> None:
    done = _python(site, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SCHEDULER_TESTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1]
    # They ran against the build, not the source: the one test that cannot (it patches a
    # method compiled code never looks up) said so (tests.helpers.compiled.scheduler_compiled).
    assert "compiled: the simulator calls the policy's own next_decisions" in done.stdout


# Each way to build into the source tree, run as setup.py is run for it, and what it says.
IN_PLACE = {
    "pip install -e": (
        ["-c", "from setuptools import build_meta; build_meta.build_editable('out')"],
        "an editable install is never compiled",
        "install without -e, or unset OFFLOAD_USE_MYPYC",
    ),
    "setup.py develop": (
        ["setup.py", "-q", "develop"],
        "setup.py develop is never compiled",
        "install with pip install . instead, or unset OFFLOAD_USE_MYPYC",
    ),
    "build_ext --inplace": (
        ["setup.py", "-q", "build_ext", "--inplace"],
        "build_ext --inplace is never compiled",
        "build without --inplace, or unset OFFLOAD_USE_MYPYC",
    ),
}


@pytest.mark.parametrize("how", list(IN_PLACE))
def test_a_build_into_the_source_is_never_compiled(tmp_path: Path, how: str) -> None:
    # build_ext --inplace compiled, its .so beside their .py; develop (setuptools 80+ runs
    # pip install -e, isolated) said mypy was missing, and compiled in place on older ones.
    source = copy_source(tmp_path)
    argv, said, hint = IN_PLACE[how]
    done = subprocess.run(
        [sys.executable, *argv],
        env=dict(os.environ, OFFLOAD_USE_MYPYC="1"),
        cwd=source, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    (line,) = [ln for ln in done.stderr.splitlines() if "OFFLOAD_USE_MYPYC" in ln]
    assert said in line
    assert line.endswith(hint)
    assert not list(source.rglob("*.so"))
    assert not (source / "build").exists()  # refused before mypyc wrote anything


def test_without_mypy_extensions_the_mark_leaves_a_class_as_it_is() -> None:
    # An interpreted install need not have mypy_extensions (offload.compiled).
    code = (
        "import sys; sys.modules['mypy_extensions'] = None\n"
        "from offload.compiled import mypyc_attr\n"
        "class A: pass\n"
        "assert mypyc_attr(allow_interpreted_subclasses=True)(A) is A\n"
        "from offload.scheduler.policy.costs import MissingInputs\n"
        "print(MissingInputs({}, 1.0).estimate.__qualname__)"
    )
    done = _python(ROOT / "src", "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "MissingInputs.estimate"


def test_a_compiled_build_without_mypy_says_what_it_needs(tmp_path: Path) -> None:
    source = copy_source(tmp_path)
    build = (
        "import sys; sys.modules['mypyc'] = sys.modules['mypyc.build'] = None\n"
        "from setuptools import build_meta; build_meta.build_wheel('out')"
    )
    done = subprocess.run(
        [sys.executable, "-c", build],
        env=dict(os.environ, OFFLOAD_USE_MYPYC="1"),
        cwd=source, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    (line,) = [ln for ln in done.stderr.splitlines() if "OFFLOAD_USE_MYPYC" in ln]
    assert "install mypy there and build with pip's --no-build-isolation" in line
    assert "Traceback" not in done.stderr


def _type_checked(source: Path) -> subprocess.CompletedProcess[str]:
    """setup.py's build_ext, compiled, with ``true`` for the C compiler and linker: mypyc
    type-checks and writes C, and no gcc runs (25 s here)."""
    return subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext"],
        env=dict(os.environ, OFFLOAD_USE_MYPYC="1", CC="true", LDSHARED="true"),
        cwd=source, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_the_metadata_steps_of_a_compiled_build_do_not_compile(tmp_path: Path) -> None:
    # pip runs setup.py for the build's requirements and metadata before it builds: mypyc
    # type-checked and wrote C at each of them (3 s each), for metadata that needs none.
    source = copy_source(tmp_path)
    steps = (
        "from setuptools import build_meta\n"
        "build_meta.get_requires_for_build_wheel()\n"
        "build_meta.prepare_metadata_for_build_wheel('.')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", steps],
        env=dict(os.environ, OFFLOAD_USE_MYPYC="1"),
        cwd=source, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(source.glob("offload-*.dist-info"))
    assert not (source / "build").exists()  # the step that builds writes its C there (below)


def test_the_compiled_build_checks_types_not_the_lint(tmp_path: Path) -> None:
    # A Nix build has nixpkgs' mypy, not the one make lint pins: what another mypy's strict lint
    # may add about a module the compiled ones import (here strict's unused-ignore) is no error.
    source = copy_source(tmp_path)
    with (source / "src/offload/errors.py").open("a") as errors:
        errors.write("\n_LINT: int = 1  # type: ignore[assignment]\n")
    done = _type_checked(source)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (source / "build/__native_offload_scheduler.c").exists()
    # A type error in what it compiles still stops it: the C would check the wrong type.
    with (source / "src/offload/scheduler/dag.py").open("a") as dag:
        dag.write('\n_WRONG: int = "a"\n')
    done = _type_checked(source)
    assert done.returncode != 0
    assert "dag.py" in done.stdout + done.stderr


def test_an_optimisation_level_that_is_none_is_one_line(tmp_path: Path) -> None:
    source = copy_source(tmp_path)
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext"],
        env=dict(os.environ, OFFLOAD_USE_MYPYC="1", OFFLOAD_MYPYC_OPT_LEVEL="fast"),
        cwd=source, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    (line,) = [ln for ln in done.stderr.splitlines() if "OFFLOAD_MYPYC_OPT_LEVEL" in ln]
    assert line == "OFFLOAD_MYPYC_OPT_LEVEL='fast': not an optimisation level; give 0 to 3"
    assert "Traceback" not in done.stderr
    assert not (source / "build").exists()  # refused before mypyc wrote anything


def test_a_config_files_inplace_is_read_as_setuptools_reads_it(tmp_path: Path) -> None:
    # setup.cfg's "inplace = 0" (off, as distutils reads it) was refused as build_ext
    # --inplace, whatever was built; "inplace = true" is refused, as -i is.
    source = copy_source(tmp_path)
    (source / "setup.cfg").write_text("[build_ext]\ninplace = true\n")
    done = _type_checked(source)
    assert done.returncode != 0
    assert "build_ext --inplace is never compiled" in done.stderr
    (source / "setup.cfg").write_text("[build_ext]\ninplace = 0\n")
    done = _type_checked(source)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (source / "build/__native_offload_scheduler.c").exists()
