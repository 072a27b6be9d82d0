"""`offload-hook` where most builds start: `nix build` and a nix-daemon's clients.

A nix-daemon runs its build hook itself, with its own settings and environment (no HOME, the
hook's state where the daemon's environment says), for every client that asks it to build: the
way `nixos-rebuild` and a multi-user install reach the builders. The daemon here is a real one
(Nix 2.8), listening on a socket of the test's own (``NIX_DAEMON_SOCKET_PATH``), its clients
reaching it with ``--store unix://``; the fleet is the tests' own. Where a derivation was built
is proved by its output's content (the builder's speed file, or "local") and by which stores
hold it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from offload.history.db import History
from offload.procfs import running
from tests.helpers.fleets import private_fleet_fixture
from tests.helpers.nix_files import SPEED, nix_file
from tests.helpers.offload_run import stop_coordinators, wait_for
from tests.helpers.processes import start, stop

HOOK = str(Path(sys.executable).parent / "offload-hook")
MEMBERS = ("hd1", "hd2")

daemon_fleet = private_fleet_fixture(
    [MemberSpec(name, 1.0, 1) for name in MEMBERS], "ofhd", scope="module"
)


def _leaves(count: int) -> str:
    items = " ".join(f'(mk "leaf{i}" "{SPEED} > $out" {{}})' for i in range(count))
    return f"[ {items} ]\n"


def _built_on_builders(fleet: Fleet, paths: list[str]) -> None:
    """Each output was built by a builder, which holds it, and is in the local store too."""
    assert paths
    for path in paths:
        assert Path(path).read_text().strip() != "local", path
        assert any(fleet.store_has(name, path) for name in MEMBERS), f"{path} is on no builder"


def test_nix_build_uses_the_hook(daemon_fleet: Fleet, tmp_path: Path) -> None:
    file = nix_file(tmp_path, _leaves(2))
    env = {**daemon_fleet.env(), "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    try:
        done = subprocess.run(
            ["nix", "--extra-experimental-features", "nix-command", "build", "-f", str(file),
             "--no-link", "--json", "-j0", "--option", "build-hook", HOOK,
             "--option", "substituters", "", "--builders", f"@{daemon_fleet.machines_file}"],
            env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    finally:
        stop_coordinators(tmp_path / "state")
    assert done.returncode == 0, done.stderr
    paths = [output for built in json.loads(done.stdout) for output in built["outputs"].values()]
    _built_on_builders(daemon_fleet, paths)


@pytest.fixture
def daemon(daemon_fleet: Fleet, tmp_path: Path) -> Iterator[Path]:
    """A nix-daemon whose build hook is offload-hook (state in ``tmp_path``/state, where the
    tests' own cleanup stops the ssh masters it keeps), no local builds (``max-jobs = 0``): its
    socket, stopped with the coordinator it started. Its builders are the fleet's behind a fast
    one that is dead (its port refuses)."""
    live = daemon_fleet.machines_file.read_text()
    dead = live.splitlines()[0].replace(f"ssh://{MEMBERS[0]}", "ssh://deadhost").split()
    dead[3], dead[4] = "2", "8"  # two slots, speed 8: the first choice
    with _daemon(daemon_fleet, tmp_path, " ".join(dead) + "\n" + live) as socket:
        yield socket


@contextlib.contextmanager
def _daemon(fleet: Fleet, tmp_path: Path, machines: str, max_jobs: int = 0) -> Iterator[Path]:
    """``daemon``'s nix-daemon with ``machines`` its machines file (``deadhost`` in its ssh
    config) and ``max_jobs``."""
    socket = tmp_path / "daemon.socket"
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        fleet.ssh_config.read_text() + "\nHost deadhost\n  HostName 127.0.0.1\n  Port 9\n"
    )
    (tmp_path / "machines").write_text(machines)
    config = (
        f"build-hook = {HOOK}\nbuilders = @{tmp_path / 'machines'}\nmax-jobs = {max_jobs}\n"
        "substituters =\n"
    )
    env = {
        **{k: v for k, v in fleet.env().items() if k not in {"HOME", "NIX_CONFIG"}},
        "NIX_CONFIG": config,
        "NIX_DAEMON_SOCKET_PATH": str(socket),
        "NIX_SSHOPTS": f"-F {ssh_config}",
        "OFFLOAD_STATE_DIR": str(tmp_path / "state"),
    }
    log = tmp_path / "daemon.log"  # a file, not a pipe nobody reads while it runs
    with log.open("wb") as out:
        proc = start(["nix-daemon"], env=env, stdout=out, stderr=out)
    try:
        wait_for(lambda: socket.exists() or proc.poll() is not None, 30, "the daemon's socket")
        assert proc.poll() is None, log.read_text()
        yield socket
    finally:
        stop(proc)
        stop_coordinators(tmp_path / "state")


def test_a_daemon_clients_builds_go_to_the_builders_through_its_hook_faults_said(
    daemon_fleet: Fleet, daemon: Path, tmp_path: Path
) -> None:
    file = nix_file(tmp_path, _leaves(3))
    # The client sets no hook and no builders: the daemon's are used, as for nixos-rebuild.
    # A trusted client's max-jobs is the daemon's for its builds (Nix sends it, 1 unless
    # set): 0 here, or the hook rightly builds these locally (as fast as the builders).
    env = {k: v for k, v in daemon_fleet.env().items() if k != "NIX_CONFIG"}
    done = subprocess.run(
        ["nix-build", str(file), "--no-out-link", "--store", f"unix://{daemon}", "-j0"],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _built_on_builders(daemon_fleet, done.stdout.split())
    # The dead builder was found once, backed off, and the daemon's client was told.
    assert done.stderr.count("builder 'deadhost' failed") == 1, done.stderr
    # The daemon's hook kept its history in the daemon's state directory, through the
    # coordinator it started (one, still serving).
    state = tmp_path / "state"
    with History(state / "history.sqlite") as history:
        assert {record.machine for record in history.builds()} <= set(MEMBERS)
        assert len(history.builds()) == 3
    [pid_file] = state.glob("*.sock.pid")
    assert running(int(pid_file.read_text()))


def test_a_daemon_clients_are_told_the_hooks_errors(daemon_fleet: Fleet, tmp_path: Path) -> None:
    # A machines line the hook refuses: it builds locally and says why. Said as a plain line
    # before its reply, it went to the daemon's log; the user's nix-build heard nothing.
    live = daemon_fleet.machines_file.read_text().splitlines()
    broken = live[0].split()
    broken[3] = "2x"
    file = nix_file(tmp_path, _leaves(1))
    env = {k: v for k, v in daemon_fleet.env().items() if k != "NIX_CONFIG"}
    with _daemon(daemon_fleet, tmp_path, " ".join(broken) + "\n", max_jobs=1) as socket:
        done = subprocess.run(
            ["nix-build", str(file), "--no-out-link", "--store", f"unix://{socket}"],
            env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("offload-hook: error:")]
    assert said, done.stderr
    assert "'2x' is not a whole number of jobs" in said[0]
    assert said[0].endswith("building locally")
    assert Path(done.stdout.split()[0]).read_text().strip() == "local"
