"""offload-hook and preferLocalBuild derivations under real Nix 2.8, on the session's fleet.

Nix 2.8 asks its hook about a ``preferLocalBuild`` derivation only when it cannot build it
locally (``-j 0`` here): the hook then guesses it as ``offload build`` does, trivial (1 s)
where a build without history is guessed 10 s, and places it by that guess.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.fleet import Fleet
from offload.slots import NIX_CURRENT_LOAD, slot_key
from tests.helpers.hook_runs import start_nix_build
from tests.helpers.nix_files import SPEED, nix_file
from tests.helpers.offload_run import wait_for
from tests.helpers.processes import stop

pytestmark = pytest.mark.usefixtures("coordinators_stopped")

BODY = f"""{{
  env = mk "env" "{SPEED} > $out" {{ preferLocalBuild = true; }};
  plain = mk "plain" "{SPEED} > $out" {{}};
}}
"""


@pytest.fixture
def faster_slots_held(fleet: Fleet) -> Iterator[list[int]]:
    """Every slot of 'fast' (speed 4) and 'medium' (2) held on this host as Nix's own hook
    holds one: an empty file, so no expected end (taken as a default build's, 10 s of work);
    'slow' (1) is free."""
    fds = []
    try:
        for name in ("fast", "medium"):
            for slot in range(2):
                path = NIX_CURRENT_LOAD / f"{slot_key(fleet.member(name).uri)}-{slot}"
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                fds.append(fd)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.ftruncate(fd, 0)  # an earlier holder's line: says nothing once let go, too
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def test_prefer_local_build_on_builders_is_guessed_trivial(
    fleet: Fleet, tmp_path: Path, faster_slots_held: list[int]
) -> None:
    # 'fast' frees in 2.5 s (a default build there). Guessed 10 s, a derivation ends sooner
    # after that on 'fast' (5.3 s) than on the free 'slow' (10.3 s): the coordinator accepts
    # and waits for 'fast'. Guessed trivial (1 s), 'slow' ends it first (1.3 s against 3.05).
    file = nix_file(tmp_path, BODY)
    proc = start_nix_build(fleet, tmp_path, file, "-A", "env", "-A", "plain", "-j0", "-v")
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()

    def decided(name: str) -> str | None:
        return next((line for line in seen if f"-{name}.drv: " in line), None)

    def both() -> bool:
        return decided("env") is not None and decided("plain") is not None

    try:
        wait_for(both, 60, "the hook's decisions on env and plain")
        for fd in faster_slots_held:
            fcntl.flock(fd, fcntl.LOCK_UN)
        out, _ = proc.communicate(timeout=120)
    finally:
        stop(proc)
        reader.join()
    assert proc.returncode == 0, "".join(seen)
    assert "a slot on fast frees first" in str(decided("plain"))
    assert "expected to finish first" in str(decided("env"))
    env, plain = out.split()
    assert (Path(env).read_text().strip(), Path(plain).read_text().strip()) == ("1", "4")


def test_offload_toml_local_slots_do_not_hold_against_nixs_own(
    fleet: Fleet, tmp_path: Path
) -> None:
    # `[local] max-jobs = 4` brought back in the hook a local machine Nix was told not to
    # use (-j 0): the preferLocalBuild derivation was declined for it, and Nix, with no slot
    # of its own, failed ("unable to start any build").
    config = tmp_path / "config"
    (config / "offload").mkdir(parents=True)
    (config / "offload" / "offload.toml").write_text("[local]\nmax-jobs = 4\n")
    file = nix_file(tmp_path, BODY)
    proc = start_nix_build(fleet, tmp_path, file, "-A", "env", "-j0", XDG_CONFIG_HOME=str(config))
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    (built,) = out.split()
    assert Path(built).read_text().strip() in {"1", "2", "4"}  # a builder's speed: not local
