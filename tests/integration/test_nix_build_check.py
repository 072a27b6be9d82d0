"""`offload build --check` and `--repair` against the real nix-build 2.8.

A check builds a valid output again and compares: offload says what nix-build says of a
nondeterministic build, of a valid output checked, of one never built (refused, nothing
built), and names the derivation Nix names. The project is ``tests.helpers.nix_build_compare``'s.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from tests.helpers.nix_build_compare import COMMON, both, errors, made_project, run_in


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return made_project(tmp_path)


def test_check_reports_a_nondeterministic_build(project: Path) -> None:
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    first_nix, first = both(project, "-A", "random", *nonce)
    assert first_nix.returncode == first.returncode == 0
    nix, offload = both(project, "-A", "random", *nonce, "--check")
    assert nix.returncode == offload.returncode == 104
    assert offload.stdout == nix.stdout == ""
    assert "may not be deterministic" in errors(offload.stderr)
    assert errors(offload.stderr) == errors(nix.stderr)


@pytest.mark.parametrize("mode", ["--check", "--repair"])
def test_checking_a_built_output_says_what_nix_build_says(project: Path, mode: str) -> None:
    args = ("-A", "ok", "--argstr", "nonce", uuid.uuid4().hex)
    assert run_in(["nix-build", *COMMON, *args], project).returncode == 0
    nix, offload = both(project, *args, mode)
    assert nix.returncode == offload.returncode == 0, offload.stderr
    assert offload.stdout == nix.stdout
    assert offload.stderr == nix.stderr  # no "you did not specify '--add-root'" warning


def _valid(drv: str) -> bool:
    """Whether ``drv``'s outputs are all valid in the local store."""
    outputs = subprocess.run(
        ["nix-store", "--query", "--outputs", drv], check=True, capture_output=True, text=True
    ).stdout.split()
    return subprocess.run(["nix-store", "--check-validity", *outputs], check=False).returncode == 0


def test_check_of_an_output_never_built_is_refused_and_builds_nothing(project: Path) -> None:
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    nix, offload = both(project, "-A", "random", *nonce, "--check")
    assert nix.returncode == offload.returncode == 1
    assert offload.stdout == nix.stdout == ""
    said = errors(nix.stderr).splitlines()[0]
    assert said.endswith("are not valid, so checking is not possible")
    error, hint = offload.stderr.splitlines()  # nix-build's line, and a hint
    assert error == said
    assert hint.startswith("hint: build it first without --check")
    drv = said.split("'")[1]
    assert drv.endswith(f"-random-{nonce[2]}.drv")
    assert not _valid(drv)  # offload built nothing (nor did nix-build)


def test_check_names_the_unbuilt_derivation_nix_names(project: Path) -> None:
    # random is asked for first, but Nix's goals go by the .drv's name: ok is named. Once ok
    # is built, random is the one left.
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    for built in ((), ("ok",)):
        for attr in built:
            assert run_in(["nix-build", *COMMON, "-A", attr, *nonce], project).returncode == 0
        nix, offload = both(project, "-A", "random", "-A", "ok", *nonce, "--check")
        assert nix.returncode == offload.returncode == 1
        said = errors(nix.stderr).splitlines()[0]
        assert f"-{'random-' + nonce[2] if built else 'ok'}.drv'" in said
        more = "" if built else " (and 1 more)"
        assert offload.stderr.splitlines()[0] == said + more
