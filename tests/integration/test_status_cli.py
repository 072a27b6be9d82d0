"""`offload status` as a command: it sees a slot held in the slot directory Nix's own hook uses,
says who builds what in offload's, and ``--watch`` keeps redrawing until it is stopped."""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.slots import NIX_CURRENT_LOAD, SlotLocks, slot_key
from tests.helpers.nix_files import marker_script, nix_file
from tests.helpers.offload_run import wait_for, wait_for_marker
from tests.helpers.processes import start, stop

pytestmark = pytest.mark.skipif(
    not os.access(NIX_CURRENT_LOAD.parent, os.W_OK), reason="needs Nix's current-load (root)"
)


@pytest.fixture
def machines(tmp_path: Path) -> Path:
    # A name of this test's own, so no other run's slots are counted (or disturbed).
    path = tmp_path / "machines"
    path.write_text(f"ssh://st{os.getpid()} x86_64-linux - 2 1\n")
    return path


@pytest.fixture
def held_slot() -> Iterator[Path]:
    """Slot 0 of the test machine, flocked as Nix's build-remote holds it."""
    path = NIX_CURRENT_LOAD / f"{slot_key(f'ssh://st{os.getpid()}')}-0"
    NIX_CURRENT_LOAD.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)
        for slot in range(2):
            path.with_name(f"{slot_key(f'ssh://st{os.getpid()}')}-{slot}").unlink(missing_ok=True)


def status_argv(machines: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "offload", "status", "--builders", f"@{machines}", *args]


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}


def test_a_slot_held_like_nix_does_is_in_use(
    machines: Path, held_slot: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        status_argv(machines, "--json", "-j", "0"),
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    (machine,) = data["machines"]
    assert (machine["name"], machine["in_use"], machine["slots"]) == (f"st{os.getpid()}", 1, 2)
    assert machine["expected_free"] == []  # Nix writes no expected end
    assert machine["by_nix"] == 1  # its file is empty, as Nix leaves it
    assert data["slot_dir"] == str(NIX_CURRENT_LOAD)
    assert held_slot.exists()


@contextlib.contextmanager
def watching(machines: Path, tmp_path: Path, snapshots: int) -> Iterator[subprocess.Popen[str]]:
    """`offload status --watch --json` running, once it has printed ``snapshots``; stopped
    after the block (its output in ``tmp_path / "out"``)."""
    out = tmp_path / "out"
    with out.open("w") as sink:
        proc = start(
            status_argv(machines, "--watch", "--interval", "0.1", "--json", "-j", "0"),
            env=env(tmp_path),
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: out.read_text().count("\n") >= snapshots, 30, "snapshots")
            yield proc
        finally:
            stop(proc)


def test_watch_redraws_until_stopped(machines: Path, held_slot: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with watching(machines, tmp_path, 3) as proc:
        assert proc.poll() is None
    snapshots = [json.loads(line) for line in out.read_text().splitlines()[:3]]
    assert all(s["machines"][0]["in_use"] == 1 for s in snapshots)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 0), (signal.SIGTERM, 143)])
def test_a_watch_ends_on_ctrl_c_with_0_and_on_sigterm_as_any_command(
    machines: Path, tmp_path: Path, signum: int, code: int
) -> None:
    # Ctrl-C is how a watch ends (as `watch` ends); SIGTERM stops it as it stops any command.
    # Both were 0 when the signal came in the sleep, 130 and 143 when it came in a redraw.
    with watching(machines, tmp_path, 2) as proc:
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == code


def test_slots_held_by_offload_and_by_nix_are_told_apart(
    machines: Path, held_slot: Path, tmp_path: Path
) -> None:
    key = slot_key(f"ssh://st{os.getpid()}")
    fd = SlotLocks(NIX_CURRENT_LOAD).try_acquire(key, 2, until=4_000_000_000.0)
    assert fd is not None
    try:
        done = subprocess.run(
            status_argv(machines, "-j", "0"),
            env=env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith(f"st{os.getpid()}"))
    assert "2/2 (1 by Nix's hook)" in row


def test_a_slot_nix_holds_after_offload_let_it_go_is_nix_s(fleet, tmp_path: Path) -> None:
    # offload (a hook coordinator, say) built on fast and let slot 0 go: its line stays in the
    # file, as it does when offload is killed. Nix's own hook takes the slot next and leaves the
    # file as it finds it. Status said the slot was offload's, free by that old time.
    (line,) = (
        x for x in fleet.machines_file.read_text().splitlines() if x.startswith("ssh://fast")
    )
    machines = tmp_path / "machines"
    machines.write_text(f"{line}\n")
    fd = SlotLocks(NIX_CURRENT_LOAD).try_acquire(slot_key(line.split()[0]), 1, time.time() - 60)
    assert fd is not None
    os.close(fd)
    marker, gate = tmp_path / "building", tmp_path / "gate"
    wait = f"while [ ! -e {gate} ]; do /bin/sleep 0.05; done; echo > $out"
    file = nix_file(tmp_path, f'{{ held = mk "held" "{marker_script(marker, wait)}" {{}}; }}\n')
    argv = ["nix-build", str(file), "-A", "held", "--no-out-link", "-j", "0"]
    argv += ["--builders", f"@{machines}", "--option", "substituters", ""]
    proc = start(argv, env=fleet.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_marker(marker, proc, 60)  # Nix's hook holds slot 0 while it builds
        done = subprocess.run(
            status_argv(machines, "--json"),
            env=env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    finally:
        gate.touch()
        try:
            proc.communicate(timeout=60)
        finally:
            stop(proc)
    assert proc.returncode == 0
    (fast,) = (m for m in json.loads(done.stdout)["machines"] if m["name"] == "fast")
    assert (fast["in_use"], fast["by_nix"], fast["expected_free"]) == (1, 1, [])


def test_local_builds_of_a_run_given_more_jobs_are_all_in_use(tmp_path: Path) -> None:
    # offload build -j 3 holds local-0 to local-2; status, reading Nix's max-jobs (1 here),
    # looked at local-0 alone and said "local 1/1" with three builds running.
    shared = Path(tempfile.mkdtemp(prefix="ost", dir="/tmp"))  # the local build users' too
    shared.chmod(0o777)
    wait = f"i=0; while [ ! -e {shared}/go ] && [ $i -lt 600 ]; do /bin/sleep 0.1; i=$((i+1)); done"
    body = " ".join(
        f'(mk "held-{i}" "/bin/touch {shared}/building-{i}; {wait}; echo > $out" {{}})'
        for i in range(3)
    )
    file = nix_file(tmp_path, f"[ {body} ]\n")
    argv = [sys.executable, "-m", "offload", "build", str(file), "--no-out-link"]
    run_env = {**env(tmp_path), "NIX_CONFIG": "substituters =\nmax-jobs = 1"}
    proc = start([*argv, "--builders", "", "-j", "3"], env=run_env, stderr=subprocess.PIPE)
    status = [sys.executable, "-m", "offload", "status", "--builders", ""]
    try:
        wait_for(lambda: len(list(shared.glob("building-*"))) == 3, 60, "three local builds")
        done = subprocess.run(
            [*status, "--json"], env=run_env, capture_output=True, text=True, timeout=60, check=True
        )
        said = subprocess.run(
            status, env=run_env, capture_output=True, text=True, timeout=60, check=True
        )
    finally:
        (shared / "go").touch()
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            stop(proc)
            shutil.rmtree(shared)
    assert proc.returncode == 0, err
    (local,) = (m for m in json.loads(done.stdout)["machines"] if m["name"] == "local")
    assert local["slots"] == 1  # as configured
    assert local["in_use"] >= 3  # at least this run's (another run's local builds count too)
    # Who builds what: this run's three builds, by their names, user and program.
    ours = [b for b in local["builds"] if b["pid"] == proc.pid]
    assert sorted(b["drv"] for b in ours) == ["held-0", "held-1", "held-2"]
    assert {(b["program"], b["user"]) for b in ours} == {("offload build", getpass.getuser())}
    (line,) = (x for x in said.stdout.splitlines() if x.startswith("local: building "))
    for i in range(3):
        assert f"held-{i} ({getpass.getuser()}, offload build" in line


def test_a_backed_off_builder_s_line_says_the_command_that_tries_it_again(
    tmp_path: Path,
) -> None:
    """A run backs off a builder whose port refuses; status said so with no way back (a
    fixed builder stayed left out for up to its backoff, 60 s x 3^n); its command works."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
        config = tmp_path / "ssh_config"
        config.write_text(f"Host sb{os.getpid()}\n  HostName 127.0.0.1\n"
                          f"  Port {closed.getsockname()[1]}\n  BatchMode yes\n")  # fmt: skip
        machines = tmp_path / "machines"
        machines.write_text(f"ssh://sb{os.getpid()} x86_64-linux - 1 1\n")
        file = nix_file(tmp_path, '{ one = mk "one" "echo > $out" {}; }')
        run_env = {**env(tmp_path), "NIX_SSHOPTS": f"-F {config}"}
        argv = [sys.executable, "-m", "offload", "build", str(file), "-A", "one", "--no-out-link",
                "--builders", f"@{machines}", "--option", "substituters", ""]  # fmt: skip
        built = subprocess.run(
            argv, env=run_env, capture_output=True, text=True, timeout=120, check=False
        )
        assert built.returncode == 0, built.stderr
    said = subprocess.run(status_argv(machines), env=env(tmp_path), capture_output=True,
                          text=True, timeout=30, check=True).stdout  # fmt: skip
    line = next(line for line in said.splitlines() if "backed off:" in line)
    command = line.split("`")[1]
    assert command == f"offload machines --reset sb{os.getpid()}", line
    reset = [sys.executable, "-m", "offload", *command.split()[1:], "--builders", f"@{machines}"]
    subprocess.run(reset, env=env(tmp_path), capture_output=True, timeout=30, check=True)
    said = subprocess.run(status_argv(machines), env=env(tmp_path), capture_output=True,
                          text=True, timeout=30, check=True).stdout  # fmt: skip
    assert "backed off" not in said, said


@pytest.mark.parametrize("interval", ["inf", "nan", "0", "-1", "soon"])
def test_an_interval_that_is_no_time_to_wait_is_a_one_line_error(
    machines: Path, interval: str
) -> None:
    done = subprocess.run(
        status_argv(machines, "--watch", "--interval", interval),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[0].startswith("error: offload status: argument --interval: ")
    assert done.stderr.splitlines()[1:] == ["hint: see offload status --help"]
