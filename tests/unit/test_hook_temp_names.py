"""The hook's temporary trees in the store directory, named with the hash part of the path
each becomes (``offload.hook.home``, so that Nix's garbage collector keeps them with that
path's temporary root): what a hook that died leaves is removed by its guard and, once its
process is gone, by the next coordinator; nothing else in the store is."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from offload.hook.guard import guard_argv
from offload.hook.home import TEMP_MARK, sweep_leftovers, temp_name

HASH = "0" * 31 + "1"


def _tree(store: Path, name: str) -> Path:
    tree = store / name
    tree.mkdir()
    (tree / "file").write_text("x\n")
    return tree


def _gone_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def _zombie() -> subprocess.Popen[bytes]:
    """A child that has exited and is not reaped yet (waited for with WNOWAIT)."""
    child = subprocess.Popen(["true"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    return child


def test_a_temporary_name_keeps_the_hash_part_of_its_path() -> None:
    name = temp_name(f"/nix/store/{HASH}-hello-2.12", 3, 7)
    assert name == f"{HASH}-{TEMP_MARK}{os.getpid()}-3-7"


def test_the_guard_of_a_hook_gone_removes_its_temporary_trees_only(tmp_path: Path) -> None:
    pid = _gone_pid()
    mine = _tree(tmp_path, f"{HASH}-{TEMP_MARK}{pid}-0-0")
    others = _tree(tmp_path, f"{HASH}-{TEMP_MARK}{pid + 1}-0-0")
    named_alike = _tree(tmp_path, f"{HASH}-x-{TEMP_MARK}{pid}-0-0")  # a store path's name
    subprocess.run(guard_argv(str(tmp_path), pid, ["true"]), stdin=subprocess.DEVNULL, check=True)
    assert not mine.exists()
    assert others.exists()
    assert named_alike.exists()


def test_a_new_coordinator_sweeps_what_dead_processes_left(tmp_path: Path) -> None:
    dead = _tree(tmp_path, f"{HASH}-{TEMP_MARK}{_gone_pid()}-0-0")
    alive = _tree(tmp_path, f"{HASH}-{TEMP_MARK}{os.getpid()}-0-0")
    path = _tree(tmp_path, f"{HASH}-hello")
    sweep_leftovers(str(tmp_path))
    assert not dead.exists()
    assert alive.exists()
    assert path.exists()


def test_a_new_coordinator_sweeps_what_hooks_before_the_hash_named_trees_left(
    tmp_path: Path,
) -> None:
    # An offload before the trees were named with a hash part wrote .offload-hook-<pid>-<b>-<n>:
    # one its coordinator left (killed mid-copy) stayed until a full collection.
    dead = _tree(tmp_path, f".offload-hook-{_gone_pid()}-0-0")
    alive = _tree(tmp_path, f".offload-hook-{os.getpid()}-0-0")  # an old coordinator still copying
    other = _tree(tmp_path, f".offload-hook-x{_gone_pid()}-0-0")
    sweep_leftovers(str(tmp_path))
    assert not dead.exists()
    assert alive.exists()
    assert other.exists()


def test_a_coordinator_that_died_unreaped_has_its_trees_swept(tmp_path: Path) -> None:
    # A zombie keeps its pid (kill(pid, 0) succeeds) and holds nothing: its trees were kept.
    zombie = _zombie()
    try:
        dead = _tree(tmp_path, f"{HASH}-{TEMP_MARK}{zombie.pid}-0-0")
        sweep_leftovers(str(tmp_path))
        assert not dead.exists()
    finally:
        zombie.wait()
