"""`offload-hook` under real Nix 2.8: `nix-build --option build-hook offload-hook` on the fleet.

These are the checks of Nix's own tests/nixos/remote-builds.nix, plus the ones that show where
the hook decides better than build-remote. Where a derivation was built is proved by its
output's content (the builder's speed file, or "local") and by which stores hold it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from offload.history.db import History
from offload.history.tails import name_of, tails
from offload.report.html import render_html
from offload.report.model import load_hook_model
from offload.slots import NIX_CURRENT_LOAD, slot_key
from tests.helpers.fleets import drop_member, member_processes, private_fleet_fixture
from tests.helpers.hook_runs import (
    coordinator_pids,
    hook_env,
    leaves,
    nix_build,
    nix_build_argv,
    outputs,
    start_nix_build,
)
from tests.helpers.nix_files import SPEED, nix_file
from tests.helpers.offload_run import wait_for
from tests.helpers.processes import stop

MEMBERS = ("hk1", "hk2")

hook_fleet = private_fleet_fixture(
    [MemberSpec(name, 1.0, 1) for name in MEMBERS], "ofh", scope="module"
)


pytestmark = pytest.mark.usefixtures("coordinators_stopped")


def holders(fleet: Fleet, path: str) -> set[str]:
    return {name for name in MEMBERS if fleet.store_has(name, path)}


def test_graph_uses_the_local_machine_and_the_builders(hook_fleet: Fleet, tmp_path: Path) -> None:
    # With -j1 Nix offers the local slot for the first leaf: as fast as the builders and with
    # nothing to copy, it is declined and built here (build-remote would have sent it away);
    # the others go to the builders while the local slot is busy.
    file = nix_file(tmp_path, leaves(4, "/bin/sleep 1; "))
    paths = outputs(nix_build(hook_fleet, tmp_path, file, "-j1"))
    where = {path: Path(path).read_text().strip() for path in paths}
    assert "local" in where.values()
    remote = [path for path, speed in where.items() if speed != "local"]
    assert remote
    for path in remote:
        assert holders(hook_fleet, path), f"{path} is on no builder"
    for path, speed in where.items():
        if speed == "local":
            assert not holders(hook_fleet, path)


def test_the_hook_keeps_what_each_build_was_built_on_for_priorities_and_its_report(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # b is built on a: the history says so (as offload build's runs say their graphs), and
    # from it a's tail, the work after a, which orders the coordinator's waiting derivations.
    body = (
        f'rec {{ a = mk "a" "{SPEED} > $out" {{}}; b = mk "b" "/bin/cat ${{a}} > $out" {{}}; }}\n'
    )
    file = nix_file(tmp_path, body)
    outputs(nix_build(hook_fleet, tmp_path, file, "-A", "b", "-j0"))
    with History(tmp_path / "state" / "history.sqlite") as history:
        edges = history.recent_deps()
        records = history.builds()
        built = {(record.pname, record.name) for record in records}
    assert [(name_of(drv), name_of(dep)) for drv, dep in edges] == [("b", "a")]
    assert built == {("a", "a"), ("b", "b")}
    # Their phases, as offload build's copies have them: none were kept, and offload history
    # showed '-' for the sending, building and fetching of every hook build.
    # Each waits for its session there first, as a copy waits for its slot.
    for record in records:
        assert [p.phase for p in record.phases] == ["waiting", "sending", "building", "fetching"]
        # Its time is its build's, as an offload build copy's: no wait or copy teaches it.
        (building,) = [p for p in record.phases if p.phase == "building"]
        assert (building.started, building.finished) == (record.started, record.finished)
    assert tails(edges, {"b": 3.0}.__getitem__) == {"a": 3.0, "b": 0.0}
    # And `offload report --hook` draws them: b asked, a then b its critical path.
    page = tmp_path / "hook.html"
    offload = str(Path(sys.executable).parent / "offload")
    done = subprocess.run(
        [offload, "report", "--hook", "-o", str(page)],
        env=hook_env(hook_fleet, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("report of offload-hook's builds (2 copies on ")
    text = page.read_text()
    assert '<div data-fact="asked">asked<b>b</b></div>' in text
    assert "<h2>Critical path (2 builds, " in text


def test_two_builds_run_at_once_on_two_builders(hook_fleet: Fleet, tmp_path: Path) -> None:
    stamp = "/bin/date +%s.%N >> {tmp}/$name; /bin/sleep 2; /bin/date +%s.%N >> {tmp}/$name; "
    file = nix_file(tmp_path, leaves(2, stamp.format(tmp=tmp_path)))
    paths = outputs(nix_build(hook_fleet, tmp_path, file, "-j0"))
    assert [holders(hook_fleet, p) for p in paths] in ([{"hk1"}, {"hk2"}], [{"hk2"}, {"hk1"}])
    (s0, e0), (s1, e1) = (
        [float(x) for x in (tmp_path / f"leaf{i}").read_text().split()] for i in range(2)
    )
    assert s0 < e1
    assert s1 < e0


def test_logs_are_where_nix_keeps_them(hook_fleet: Fleet, tmp_path: Path) -> None:
    file = nix_file(tmp_path, '[ (mk "talk" "echo hello from $salt; echo done > $out" {}) ]\n')
    salt = file.read_text().split('"')[1]
    outputs(nix_build(hook_fleet, tmp_path, file, "-j0"))
    drv = subprocess.run(
        ["nix-instantiate", str(file)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    log = subprocess.run(
        ["nix-store", "--read-log", drv], capture_output=True, text=True, check=True
    ).stdout
    assert f"hello from {salt}" in log


def test_nix_build_says_where_each_derivation_builds_once(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # Nix says "building '...' on 'ssh://...'" at the accept; the hook said it again, with the
    # builder's name, on the next line (now only with -v).
    file = nix_file(tmp_path, leaves(2))
    done = nix_build(hook_fleet, tmp_path, file, "-j0")
    outputs(done)
    building = [line for line in done.stderr.splitlines() if line.startswith("building '")]
    assert len(building) == 2, done.stderr
    assert all("' on 'ssh://hk" in line for line in building)
    verbose = nix_build(hook_fleet, tmp_path, nix_file(tmp_path, leaves(1), "v.nix"), "-j0", "-v")
    assert f"' on '{MEMBERS[0]}'" in verbose.stderr or f"' on '{MEMBERS[1]}'" in verbose.stderr


def test_a_failing_derivation_fails_the_build_as_nix_says_it(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    file = nix_file(tmp_path, '[ (mk "broken" "echo about to fail; exit 3" {}) ]\n')
    done = nix_build(hook_fleet, tmp_path, file, "-j0")
    assert done.returncode == 100, done.stderr
    assert "builder for" in done.stderr
    assert "failed" in done.stderr
    assert "about to fail" in done.stderr
    # Its history record says why, as an `offload build` failure's does (it said nothing).
    drv = subprocess.run(
        ["nix-instantiate", str(file)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    # Worded as Nix's own hook words it ("error: build of ... on ... failed: ..."); offload's
    # line had no "error:", and its copies named no derivation (six at once: six alike).
    [said] = [line for line in done.stderr.splitlines() if line.startswith("error: build of")]
    assert said.startswith(f"error: build of '{drv}' on 'hk"), said
    assert said.endswith(f"failed: builder for '{drv}' failed with exit code 3"), said
    assert "copying inputs of 'broken' to 'hk" in done.stderr, done.stderr

    def failed() -> list[dict[str, object]]:
        shown = subprocess.run(
            [str(Path(sys.executable).parent / "offload"), "history", "--json", "--drv", drv],
            env=hook_env(hook_fleet, tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        return list(json.loads(shown.stdout)["builds"])

    # Written by the coordinator's history thread once the build has ended.
    wait_for(lambda: bool(failed()), 20, "the failed build in the history")
    [build] = failed()
    assert build["status"] == "failed"
    assert f"builder for '{drv}' failed with exit code 3" in str(build["error"])
    # And `offload report --hook` says it on the build's bar, as it does a run's failure.
    with History(tmp_path / "state" / "history.sqlite") as history:
        page = render_html(load_hook_model(history, since=None))
    assert "error: builder for " in page


def test_a_dead_builder_is_skipped_once_and_remembered(hook_fleet: Fleet, tmp_path: Path) -> None:
    # A fast builder whose port refuses connections, listed first: the first derivation finds
    # it dead and backs it off; the others never try it again.
    config = tmp_path / "ssh_config"
    config.write_text(
        hook_fleet.ssh_config.read_text() + "\nHost deadhost\n  HostName 127.0.0.1\n  Port 9\n"
    )
    machines = tmp_path / "machines"
    live = hook_fleet.machines_file.read_text()
    dead = live.splitlines()[0].replace("ssh://hk1", "ssh://deadhost").split()
    dead[3], dead[4] = "2", "8"  # two slots, speed 8: the first choice
    machines.write_text(" ".join(dead) + "\n" + live)
    file = nix_file(tmp_path, leaves(3))
    done = subprocess.run(
        nix_build_argv(file, f"@{machines}", "-j0"),
        env=hook_env(hook_fleet, tmp_path, sshopts=f"-F {config}"),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert len(outputs(done)) == 3
    assert done.stderr.count("builder 'deadhost' failed") == 1, done.stderr
    # The way out is the hook's: nix-build refuses offload build's --exclude it was told.
    failed = next(line for line in done.stderr.splitlines() if "'deadhost' failed" in line)
    assert "or leave it out by choosing the others with `offload use`)" in failed
    assert "--exclude" not in failed
    backoff = json.loads((tmp_path / "state" / "backoff.json").read_text())
    assert backoff["deadhost"]["until"] > time.time()


@pytest.fixture
def all_slots_held(hook_fleet: Fleet) -> Iterator[list[int]]:
    fds = []
    try:
        for name in MEMBERS:
            path = NIX_CURRENT_LOAD / f"{slot_key(hook_fleet.member(name).uri)}-0"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize(
    ("coordinator", "said"),
    # The coordinator accepts and waits for a slot; a hook on its own can only postpone.
    [("1", "frees first"), ("0", "postpone")],
    ids=["coordinator-waits", "in-process-postpones"],
)
def test_every_slot_busy_waits_then_builds(
    hook_fleet: Fleet, tmp_path: Path, all_slots_held: list[int], coordinator: str, said: str
) -> None:
    file = nix_file(tmp_path, leaves(1))
    proc = start_nix_build(
        hook_fleet, tmp_path, file, "-j0", "-v", OFFLOAD_HOOK_COORDINATOR=coordinator
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: any(said in line for line in seen), 60, f"{said!r} in {seen}")
        assert proc.poll() is None, "built while every slot was held"
        if coordinator == "1":  # accepted ("building ... on"): `offload status` says it waits
            wait_for(lambda: _queued(hook_fleet, tmp_path) == ["leaf0"], 20, "leaf0 queued")
        for fd in all_slots_held:
            fcntl.flock(fd, fcntl.LOCK_UN)
        out, _ = proc.communicate(timeout=120)
    finally:
        stop(proc)
        reader.join()
    assert proc.returncode == 0, "".join(seen)
    assert holders(hook_fleet, out.split()[0])
    # Placed, it waits no more (told within the coordinator's TELL_EVERY).
    wait_for(lambda: _queued(hook_fleet, tmp_path) == [], 20, "nothing queued")


def _queued(fleet: Fleet, tmp_path: Path) -> list[str]:
    """What `offload status --json` says waits in offload-hook's coordinator for a slot."""
    argv = [sys.executable, "-m", "offload", "status", "--json"]
    argv += ["--builders", f"@{fleet.machines_file}"]
    shown = subprocess.run(
        argv, env=hook_env(fleet, tmp_path), capture_output=True, text=True, check=True
    )
    return [queued["drv"] for queued in json.loads(shown.stdout)["queued"]]


def test_offload_use_chooses_the_builder(hook_fleet: Fleet, tmp_path: Path) -> None:
    env = hook_env(hook_fleet, tmp_path)
    chosen = subprocess.run(
        [
            sys.executable,
            "-m",
            "offload",
            "use",
            "hk2",
            "--for",
            "10m",
            "--builders",
            f"@{hook_fleet.machines_file}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert chosen.returncode == 0, chosen.stderr
    assert "hk2" in chosen.stdout
    file = nix_file(tmp_path, leaves(2))
    done = nix_build(hook_fleet, tmp_path, file, "-j0")
    for path in outputs(done):
        assert holders(hook_fleet, path) == {"hk2"}
    assert "offload use" in done.stderr


def _serve_pids(fleet: Fleet) -> dict[str, set[int]]:
    return {
        name: {
            pid for pid, cmd in member_processes(fleet.member(name)) if "nix-store --serve" in cmd
        }
        for name in MEMBERS
    }


def test_two_nix_builds_share_one_coordinator_and_its_sessions(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # Two nix-builds at once, each with its own hook processes: one coordinator serves them all,
    # and the serve sessions it opened for the first are the ones the next build uses.
    files = [nix_file(tmp_path, leaves(2), name=f"b{i}.nix") for i in range(2)]
    runs = [start_nix_build(hook_fleet, tmp_path, file, "-j0") for file in files]
    try:
        done = [proc.communicate(timeout=180) for proc in runs]
    finally:
        for proc in runs:
            stop(proc)
    for proc, (_, err) in zip(runs, done, strict=True):
        assert proc.returncode == 0, err
    assert len(coordinator_pids(tmp_path / "state")) == 1
    before = _serve_pids(hook_fleet)
    assert any(before.values())
    outputs(nix_build(hook_fleet, tmp_path, nix_file(tmp_path, leaves(2, "echo again; ")), "-j0"))
    after = _serve_pids(hook_fleet)
    assert after == before, "the second build opened sessions instead of reusing the kept ones"


def test_an_idle_coordinator_exits_and_closes_its_sessions(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    file = nix_file(tmp_path, leaves(1))
    outputs(nix_build(hook_fleet, tmp_path, file, "-j0", OFFLOAD_HOOK_IDLE="1"))
    state = tmp_path / "state"
    wait_for(lambda: not coordinator_pids(state), 30, "the idle coordinator to exit")
    assert not list(state.glob("hook-*.sock"))
    wait_for(lambda: not any(_serve_pids(hook_fleet).values()), 30, "its sessions to close")


def test_without_a_coordinator_the_hook_builds_in_its_own_process(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    file = nix_file(tmp_path, leaves(1))
    [path] = outputs(nix_build(hook_fleet, tmp_path, file, "-j0", OFFLOAD_HOOK_COORDINATOR="0"))
    assert holders(hook_fleet, path)
    assert not coordinator_pids(tmp_path / "state")


def test_a_key_file_ssh_did_without_is_said_in_the_build_log(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # The line names a key that does not exist; ssh logged in with the fleet config's own,
    # and offload build said so, but the hook said nothing.
    missing = tmp_path / "nosuchkey"
    lines = []
    for line in hook_fleet.machines_file.read_text().splitlines():
        fields = line.split()
        fields[2] = str(missing)
        lines.append(" ".join(fields))
    machines = tmp_path / "machines"
    machines.write_text("\n".join(lines) + "\n")
    file = nix_file(tmp_path, leaves(2, "echo keyed; "))
    done = nix_build(hook_fleet, tmp_path, file, "-j0", builders=f"@{machines}")
    outputs(done)
    said = [line for line in done.stderr.splitlines() if f"{missing} does not exist" in line]
    assert said, done.stderr
    assert all("so ssh logged in with another key" in line for line in said)
    assert f"column 3 of {machines}:" in said[0]
    assert len(said) <= len(MEMBERS)  # once per builder, not per build


def test_a_stopped_coordinator_is_said_and_the_hook_decides_alone(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # Every nix-build hung without a word while the coordinator was stopped (SIGSTOP, or a
    # hang): its socket took each hook's connection, and the hook waited for ever. Nor may a
    # hook hand it Nix's pipes then: kept in its socket, they kept Nix from seeing the end.
    outputs(nix_build(hook_fleet, tmp_path, nix_file(tmp_path, leaves(1)), "-j0"))
    (pid,) = coordinator_pids(tmp_path / "state")
    os.kill(pid, signal.SIGSTOP)
    try:
        file = nix_file(tmp_path, leaves(1, "echo alone; "))
        done = nix_build(hook_fleet, tmp_path, file, "-j0")
        # The next hooks give it half a second, not 10 s each: a stopped coordinator cost a
        # nix-build of 200 derivations half an hour (tester).
        again = nix_build(hook_fleet, tmp_path, nix_file(tmp_path, leaves(1, "echo two; ")), "-j0")
    finally:
        os.kill(pid, signal.SIGCONT)
    [path] = outputs(done)
    assert holders(hook_fleet, path)
    outputs(again)
    # Said as a structured message: Nix passes it on to its client (a daemon's, the user).
    said = f"offload-hook: warning: no coordinator (the coordinator, pid {pid}, did not answer"
    assert f"{said} within 10 s" in done.stderr, done.stderr
    assert "deciding in this process" in done.stderr
    assert f"{said} within 0.5 s" in again.stderr, again.stderr
    # Woken, it finds the hook gone, and serves the next one.
    outputs(nix_build(hook_fleet, tmp_path, nix_file(tmp_path, leaves(1, "echo after; ")), "-j0"))
    assert coordinator_pids(tmp_path / "state") == [pid]


lost_fleet = private_fleet_fixture(
    [MemberSpec(name, 1.0, 1) for name in ("hl1", "hl2")], "ofl", scope="function"
)


def test_a_builder_lost_mid_build_is_left_for_another(lost_fleet: Fleet, tmp_path: Path) -> None:
    # Accepted already, the coordinator builds it elsewhere: Nix cares not where.
    marker = tmp_path / "started"
    body = f'[ (mk "long" "echo x > {marker}; /bin/sleep 3; {SPEED} > $out" {{}}) ]\n'
    proc = start_nix_build(lost_fleet, tmp_path, nix_file(tmp_path, body), "-j0")
    try:
        wait_for(marker.exists, 60, "the remote build to start")
        [building] = [
            name
            for name in ("hl1", "hl2")
            if any("sleep 3" in cmd for _, cmd in member_processes(lost_fleet.member(name)))
        ]
        drop_member(lost_fleet.member(building))
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    other = "hl2" if building == "hl1" else "hl1"
    assert lost_fleet.store_has(other, out.split()[0])
    assert f"builder '{building}' failed" in err

    # History keeps both: the build lost with its builder was not in it.
    def kept() -> set[tuple[str, str]]:
        with History(tmp_path / "state" / "history.sqlite") as history:
            return {(b.machine, b.status) for b in history.builds(hook=True)}

    wait_for(lambda: len(kept()) == 2, 20, f"both builds in the history: {kept()}")
    assert kept() == {(building, "lost"), (other, "built")}
    # With why, as `offload build` keeps its lost builds: the hook's had no error.
    with History(tmp_path / "state" / "history.sqlite") as history:
        [lost] = [b for b in history.builds(hook=True) if b.status == "lost"]
    assert lost.error
    assert lost.error.split(":")[0] in err, (lost.error, err)


def test_a_derivation_no_machine_can_build_is_said_with_what_each_offers(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # Nix 2.8 itself says only "unable to start any build" (and its own system's mismatch).
    body = '[ (mk "arm" "echo > $out" { system = "aarch64-linux"; }) ]\n'
    done = nix_build(hook_fleet, tmp_path, nix_file(tmp_path, body), "-j0")
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if "no machine can build" in line]
    assert len(said) == 1, done.stderr
    assert "-arm.drv', which needs aarch64-linux: the builders offer 'hk1' x86_64-linux" in said[0]
    assert said[0].endswith("; and the local machine builds nothing here: max-jobs is 0")


def test_a_derivation_only_a_builder_offload_use_leaves_out_could_build_names_it(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # A tester with an ARM board: `offload use` chose the board, and an x86 derivation was
    # said unbuildable with only what the board offers, nothing of the x86 builder left out.
    machines = tmp_path / "machines"
    hk1 = next(line for line in hook_fleet.machines_file.read_text().splitlines() if "hk1" in line)
    machines.write_text(f"{hk1}\nssh://nx-arm.invalid aarch64-linux - 1 1\n")
    env = hook_env(hook_fleet, tmp_path)
    use = [sys.executable, "-m", "offload", "use", "nx-arm.invalid", "--builders", f"@{machines}"]
    chosen = subprocess.run(use, env=env, capture_output=True, text=True, check=False)
    assert chosen.returncode == 0, chosen.stderr
    file = nix_file(tmp_path, '[ (mk "x" "echo > $out" {}) ]\n')
    done = nix_build(hook_fleet, tmp_path, file, "-j0", builders=f"@{machines}")
    assert done.returncode != 0
    [said] = [line for line in done.stderr.splitlines() if "no machine can build" in line]
    assert said.endswith("; `offload use` leaves out 'hk1', which could (`offload use --clear`)")


def test_a_builder_whose_nix_lacks_the_system_its_line_claims_points_at_doctor(
    hook_fleet: Fleet, tmp_path: Path
) -> None:
    # A tester's ARM board line on an x86 builder: Nix's refusal there ("... is required to
    # build ..., but I am a ...") came with nothing pointing at the line.
    columns = next(
        line for line in hook_fleet.machines_file.read_text().splitlines() if "hk1" in line
    ).split()
    columns[1] = "aarch64-linux"
    machines = tmp_path / "machines"
    machines.write_text(" ".join(columns) + "\n")
    file = nix_file(tmp_path, '[ (mk "board" "echo > $out" { system = "aarch64-linux"; }) ]\n')
    done = nix_build(hook_fleet, tmp_path, file, "-j0", builders=f"@{machines}")
    assert done.returncode != 0
    [said] = [line for line in done.stderr.splitlines() if "is required to build" in line]
    assert "on 'hk1' failed: a 'aarch64-linux'" in said, said
    assert said.endswith(
        "(the machines line of 'hk1' claims a system or feature its Nix does"
        " not have: `offload doctor hk1` checks it)"
    )
