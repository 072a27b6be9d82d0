"""offload-hook bringing home a path Nix did not lock for it, under real Nix 2.8 and a fleet
member: a dependency the builder names in an output's closure that is missing here. Another
process here may be making that very path under Nix's lock on ``<path>.lock`` (a local build
writes its output in place, then registers it); the hook takes the lock as Nix does, waits for
it, checks the path again and leaves it alone if it is valid now, or brings it home if not.

Only a builder that says more than Nix guarantees names such a path (Nix made the inputs valid
here first): the member's store here says it, by a derivation's output registered there with a
reference to a path only it has, so the build there is already done."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from tests.helpers.fleets import private_fleet_fixture
from tests.helpers.hook_runs import start_nix_build
from tests.helpers.nix_files import nix_file, out_path, valid_locally
from tests.helpers.processes import read_until, start, stop

lock_fleet = private_fleet_fixture([MemberSpec("hl1", 1.0, 1)], "ohl", scope="module")

pytestmark = pytest.mark.usefixtures("coordinators_stopped")

# A local build of the path as Nix runs one: the lock on <path>.lock (flock, exclusive, as
# Nix 2.3 and later take it), the output written in place, then, on "finish", the output
# completed and registered and the lock let go as Nix lets go of it (unlinked, written to,
# closed); on "fail", let go of with the output left invalid.
HOLDER = """
import fcntl, os, subprocess, sys
path, whole = sys.argv[1], sys.argv[2]
fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
with open(path, "w") as out:
    out.write("half\\n")
print("held", flush=True)
if sys.stdin.readline().strip() == "finish":
    with open(path, "w") as out:
        out.write(whole)
    subprocess.run(["nix-store", "--register-validity"], input=path + "\\n\\n0\\n",
                   text=True, check=True)
    os.unlink(path + ".lock")
    os.write(fd, b"d")
os.close(fd)
print("released", flush=True)
"""


def _on_member(fleet: Fleet, *argv: str) -> str:
    done = subprocess.run(
        fleet.ssh_argv("hl1", *argv), capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


@pytest.fixture
def claimed(lock_fleet: Fleet, tmp_path: Path) -> Iterator[tuple[Path, str, str, str]]:
    """A Nix file whose ``top`` the member has already built, with a reference to a path
    ``dep`` it alone has; yields the file, top's path, dep's path and dep's content."""
    file = nix_file(tmp_path, '{ top = mk "top" "echo here > $out" {}; }\n')
    top = out_path(file, "top")
    whole = f"{uuid.uuid4()}\n"
    source = tmp_path / "offload-lock-dep"
    source.write_text(whole)
    dep = _on_member(lock_fleet, "nix-store", "--add", str(source))
    register = (
        'echo there > "$1" && printf "%s\\n\\n1\\n%s\\n" "$1" "$2" | nix-store --register-validity'
    )
    _on_member(lock_fleet, "sh", "-c", register, "sh", top, dep)
    yield file, top, dep, whole
    subprocess.run(["nix-store", "--delete", top, dep], capture_output=True, check=False)
    Path(dep).unlink(missing_ok=True)
    Path(f"{dep}.lock").unlink(missing_ok=True)


def _holder(dep: str, whole: str) -> subprocess.Popen[str]:
    holder = start(
        [sys.executable, "-c", HOLDER, dep, whole],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    return holder


def _let_go(holder: subprocess.Popen[str], how: str) -> None:
    assert holder.stdin is not None
    assert holder.stdout is not None
    holder.stdin.write(f"{how}\n")
    holder.stdin.flush()
    assert holder.stdout.readline() == "released\n"
    assert holder.wait(timeout=30) == 0


def test_a_dependency_a_local_build_holds_is_waited_for_and_left_alone(
    lock_fleet: Fleet, tmp_path: Path, claimed: tuple[Path, str, str, str]
) -> None:
    # Before: the hook removed the local build's output in progress and put the builder's in
    # its place, while the build still held its lock.
    file, top, dep, whole = claimed
    holder = _holder(dep, whole)
    build = start_nix_build(lock_fleet, tmp_path, file, "-A", "top", "-j0")
    try:
        seen: list[str] = []
        read_until(build, f"waiting for lock on '{dep}'", seen)
        assert Path(dep).read_text() == "half\n"  # the build's output, untouched
        before = Path(dep).stat().st_ino
        _let_go(holder, "finish")
        out, err = build.communicate(timeout=120)
        assert build.returncode == 0, "".join(seen) + err
    finally:
        stop(build)
        stop(holder)
    assert out.split() == [top]
    assert Path(dep).stat().st_ino == before  # valid under the lock: not brought home again
    assert valid_locally(dep)
    refs = subprocess.run(
        ["nix-store", "-q", "--references", top], capture_output=True, text=True, check=True
    )
    assert refs.stdout.split() == [dep]


def test_a_dependency_whose_local_build_failed_comes_home_after_the_lock(
    lock_fleet: Fleet, tmp_path: Path, claimed: tuple[Path, str, str, str]
) -> None:
    file, top, dep, whole = claimed
    holder = _holder(dep, whole)
    build = start_nix_build(lock_fleet, tmp_path, file, "-A", "top", "-j0")
    try:
        seen: list[str] = []
        read_until(build, f"waiting for lock on '{dep}'", seen)
        _let_go(holder, "fail")  # the build left its output invalid
        out, err = build.communicate(timeout=120)
        assert build.returncode == 0, "".join(seen) + err
    finally:
        stop(build)
        stop(holder)
    assert out.split() == [top]
    assert Path(dep).read_text() == whole
    verify = subprocess.run(["nix-store", "--verify-path", dep], capture_output=True, check=False)
    assert verify.returncode == 0, verify.stderr
