"""`offload build` against the real nix-build 2.8 where the evaluation itself builds: an
import from a derivation fetched from the user's cache, failing, timing out, logging as it
builds, and stopped by a signal mid-evaluation; compared as a user reads them.

Builds are local and trivial; a nonce per run makes every build a fresh one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.helpers.nix_build_habits import OFFLINE, OFFLOAD, lay_out, one
from tests.helpers.offload_run import wait_for
from tests.helpers.processes import read_until, start, stop


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return lay_out(tmp_path)


IFD = r"""
{ nonce }:
let
  gen = derivation {
    name = "gen-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo GENERATING >&2; echo '\"generated\"' > $out" ];
  };
in {
  inherit gen;
  top = derivation {
    name = "top-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${import gen} > $out" ];
  };
}
"""


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.parametrize("tool", ["nix", "off"])
def test_an_import_from_derivation_is_fetched_from_the_users_cache(
    project: Path, tool: str
) -> None:
    # A project generating Nix code in a derivation (haskell.nix, crate2nix): nix-build takes
    # the generator's output from a binary cache that has it; offload evaluated without
    # substituters, so it built the generator here (on a real project, from source).
    (project / "ifd.nix").write_text(IFD)
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    gen = _sh("nix-build", "--no-out-link", *OFFLINE, str(project / "ifd.nix"), "-A", "gen", *nonce)
    cache = f"file://{project / 'cache'}"
    _sh("nix", "--extra-experimental-features", "nix-command", "copy", "--to", cache, gen.strip())
    _sh("nix-store", "--delete", gen.strip())
    uses = ("--option", "substituters", cache, "--option", "require-sigs", "false")
    done = one(project, tool, "--no-out-link", "-A", "top", *nonce, *uses, "../ifd.nix")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).read_text() == "generated\n"
    assert "GENERATING" not in done.stderr  # fetched, not built


IFD_FAILING = r"""
{ nonce, script }:
let gen = derivation {
  name = "gen-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" script ];
}; in {
  top = derivation {
    name = "top-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${import gen} > $out" ];
  };
}
"""


@pytest.mark.parametrize(
    ("script", "given", "status"),
    [("exit 1", (), 100), ("/bin/sleep 10", ("--timeout", "1"), 101)],
    ids=["failed", "timed-out"],
)
def test_an_import_from_derivation_that_fails_to_build_exits_as_nix_build(
    project: Path, script: str, given: tuple[str, ...], status: int
) -> None:
    # The evaluation's own build fails: nix-build exits with the build's status, not 1.
    (project / "ifd.nix").write_text(IFD_FAILING)
    for tool in ("nix", "off"):
        nonce = ("--argstr", "nonce", uuid.uuid4().hex, "--argstr", "script", script)
        done = one(project, tool, "--no-out-link", "-A", "top", *nonce, *given, "../ifd.nix")
        assert done.returncode == status, (tool, done.stderr)
        assert done.stdout == ""


IFD_WAITING = r"""
{ nonce, go }:
let
  # Says it started, then waits (10 s at most) for the test to answer that it saw that line.
  wait = "n=0; while [ ! -e ${go} ] && [ $n -lt 100 ]; do /bin/sleep 0.1; n=$((n+1)); done";
  gen = derivation {
    name = "gen-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo GEN-STARTED; ${wait}; [ -e ${go} ] && echo '\"seen\"' > $out" ];
  };
in {
  top = derivation {
    name = "top-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${import gen} > $out" ];
  };
}
"""


@pytest.mark.parametrize("tool", ["nix", "off"])
def test_an_import_from_derivations_build_log_shows_while_it_builds(
    project: Path, tool: str
) -> None:
    # A long import-from-derivation (a generator running for minutes): nix-build shows its
    # log as it comes; offload showed the evaluator's lines only once it had finished.
    (project / "ifd.nix").write_text(IFD_WAITING)
    # Where the builder (a build user, not us) can see the test's answer.
    with tempfile.TemporaryDirectory(dir="/tmp") as answers:
        Path(answers).chmod(0o755)
        go = Path(answers) / "go"
        command = ("nix-build",) if tool == "nix" else OFFLOAD
        args = ("--argstr", "nonce", uuid.uuid4().hex, "--argstr", "go", str(go))
        proc = subprocess.Popen(
            [*command, *OFFLINE, "--no-out-link", "-A", "top", *args, "../ifd.nix"],
            cwd=project / tool,
            env={**os.environ, "OFFLOAD_STATE_DIR": str(project / "state")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        for line in proc.stderr:
            if "GEN-STARTED" in line:
                go.touch()  # the generator is still waiting: its line came while it built
                break
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert Path(out.strip()).read_text() == "seen\n"


IFD_FOREVER = r"""
{ nonce }:
let
  gen = derivation {
    name = "gen-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo GEN-STARTED; /bin/sleep 600; : ${nonce}" ];
  };
in {
  top = derivation {
    name = "top-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${import gen} > $out" ];
  };
}
"""


def _running_with(text: str) -> list[int]:
    """The pids of this host's processes whose command line holds ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_offload_alone_mid_evaluation_stops_the_builds_nix_started(
    project: Path, signum: int
) -> None:
    # `kill PID` (a supervisor's stop) reaches offload, not its Nix: the evaluator, killed
    # outright, left the import-from-derivation's build running; stopped with SIGTERM, Nix
    # stops it, as nix-build's own Ctrl-C does.
    (project / "ifd.nix").write_text(IFD_FOREVER)
    nonce = uuid.uuid4().hex
    proc = start(
        [*OFFLOAD, *OFFLINE, "--no-out-link", "-A", "top", "--argstr", "nonce", nonce,
         "../ifd.nix"],
        cwd=project / "off",
        env={**os.environ, "OFFLOAD_STATE_DIR": str(project / "state")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        read_until(proc, "GEN-STARTED", [])
        assert _running_with(f": {nonce}")  # the generator's builder
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 128 + signum
        wait_for(lambda: not _running_with(f": {nonce}"), 10, "the generator's build to stop")
    finally:
        stop(proc)
        for pid in _running_with(f": {nonce}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
