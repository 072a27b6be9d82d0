"""Slots counted on the builder itself, by every client: real shells, a real fleet, two clients.

The wrapper's slot lock is run with real ``sh`` and ``flock`` first (with a directory of the
test bind-mounted over ``/nix/var/nix`` in a mount namespace of its own, so this host's Nix
state is left alone). Then
two clients build at once onto one shared member: two ``offload build`` runs, or one and a
``nix-build`` with ``offload-hook``. Each client runs in a mount
namespace of its own with its own ``current-load`` directory bind-mounted over Nix's, and its
own state directory: this host's slot locks cannot coordinate them, as on two hosts (they share
this host's store, which only makes their outputs easy to check). The builds append start and
end stamps to a file from inside the member, which is the member's own record of how many
builds ran there at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from offload.fleet import Fleet, MemberSpec, client_argv
from offload.slots import NIX_CURRENT_LOAD
from offload.transport.links.turns import TURN
from offload.transport.wrapper import (
    SLOT_BUSY_EXIT,
    SLOT_DIRS,
    WANT_FRESH,
    parse_count,
    parse_slot,
    serve_command,
)
from tests.helpers import processes
from tests.helpers.fleets import private_fleet_fixture
from tests.helpers.flocks import held
from tests.helpers.nix_files import nix_file, out_path
from tests.helpers.offload_run import (
    offload_argv,
    offload_env,
    peak_running,
    second_while_first,
    stop_coordinators,
    wait_for,
)

SLOTS = 2
shared_fleet = private_fleet_fixture(
    [MemberSpec("shared", 1, SLOTS)],
    "ofls",
    doc="One member with two slots, shared by the clients of a test.",
)

# A mount namespace of its own, where a directory of the test is bind-mounted over Nix state.
PRIVATE_NIX_VAR = ["unshare", "-m", "--propagation", "private", "sh", "-c"]
NOBODY = 65534  # a user who cannot write this host's Nix state


def wrapped(
    slots: int, program: list[str], lock_dir: Path, client: str = "-", *, waited: bool = False
) -> list[str]:
    """The wrapper around ``program``, with ``lock_dir`` mounted over /nix/var/nix, asked for
    a slot by ``client`` (``waited``: after a busy answer)."""
    mount = f'mount --bind {lock_dir} /nix/var/nix && exec "$@"'
    script = serve_command()[2]
    asked = [str(slots), client, str(int(waited)), "-"]  # "-": the cores are not known
    return [*PRIVATE_NIX_VAR, mount, "sh", "sh", "-c", script, "sh", *asked, *program]


def slot_file(root: Path, slot: int) -> Path:
    return root / Path(SLOT_DIRS[0]).name / f"slot-{slot}"


def test_a_session_holds_a_slot_while_it_runs_and_a_full_builder_says_busy(tmp_path):
    first = processes.start(
        wrapped(1, ["/bin/cat"], tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None
        line = first.stdout.readline()
        assert parse_slot(line) == "0"
        assert parse_count(line) == "nix"  # every account that writes the Nix state counts here
        assert held(slot_file(tmp_path, 0))
        assert slot_file(tmp_path, 0).read_text().startswith("offload pid=")
        second = subprocess.run(
            wrapped(1, ["/bin/true"], tmp_path), capture_output=True, text=True, check=False
        )
        assert second.returncode == SLOT_BUSY_EXIT  # the serve program was never started
        assert parse_slot(second.stdout) == "busy"
        assert oct(slot_file(tmp_path, 0).parent.stat().st_mode & 0o777) == "0o700"
    finally:
        processes.stop(first)  # a dead holder: the lock goes with it
    assert not held(slot_file(tmp_path, 0))
    again = subprocess.run(
        wrapped(1, ["/bin/true"], tmp_path), capture_output=True, text=True, check=False
    )
    assert (again.returncode, parse_slot(again.stdout)) == (0, "0")


def test_a_user_who_cannot_write_the_nix_state_counts_in_its_home_and_says_so(tmp_path):
    # `offload doctor` tells such a builder's count apart: clients logging in as another
    # account count theirs apart there (doctor.slot_facts.slots_check).
    home = Path(tempfile.mkdtemp(prefix="ofl-slots-home-", dir="/tmp"))
    try:
        os.chown(home, NOBODY, NOBODY)
        nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        mount = f'mount --bind {tmp_path} /nix/var/nix && exec "$@"'
        argv = [*PRIVATE_NIX_VAR, mount, "sh", *nobody, "env", f"HOME={home}", "sh", "-c"]
        done = subprocess.run(
            [*argv, serve_command()[2], "sh", "1", "-", "0", "-", "/bin/true"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert (parse_slot(done.stdout), parse_count(done.stdout)) == ("0", "home")
        assert (home / SLOT_DIRS[1] / "slot-0").exists()
        assert not (tmp_path / Path(SLOT_DIRS[0]).name).exists()
    finally:
        shutil.rmtree(home)


def test_without_flock_the_program_still_starts_and_says_so(tmp_path):
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path)}
    argv = ["/bin/sh", "-c", serve_command({"remote-program": "/bin/true"}, slots=2)[2], "sh"]
    done = subprocess.run(
        [*argv, "2", "-", "0", "/bin/true"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert parse_slot(done.stdout) == "noflock"


def ask(tmp_path: Path, client: str, *, waited: bool = False) -> tuple[int, str | None]:
    """One session start on a one-slot builder that ends at once: (exit code, its slot)."""
    argv = wrapped(1, ["/bin/true"], tmp_path, client, waited=waited)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.returncode, parse_slot(done.stdout)


def test_a_new_session_yields_a_free_slot_to_another_client_waiting_for_one(tmp_path):
    locks = slot_file(tmp_path, 0).parent
    holder = processes.start(
        wrapped(1, ["/bin/cat"], tmp_path, "a"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert parse_slot(holder.stdout.readline()) == "0"
        # Client b finds the slot held: it says on the builder that it waits.
        assert ask(tmp_path, "b") == (SLOT_BUSY_EXIT, "busy")
        assert (locks / "want-b").exists()
        assert not (locks / "want-a").exists()
    finally:
        processes.stop(holder)
    # The slot is free, but b waits: a's next session yields it, and a does not wait for it
    # (it asks again not waiting, and yields again, while b's marker is fresh: a waiter that
    # asks seldom, a lone offload-hook, still finds the slot free).
    assert ask(tmp_path, "a") == (SLOT_BUSY_EXIT, "yield")
    assert ask(tmp_path, "a") == (SLOT_BUSY_EXIT, "yield")
    assert not (locks / "want-a").exists()
    # b, having waited, takes it and takes its marker away.
    assert ask(tmp_path, "b", waited=True) == (0, "0")
    assert not (locks / "want-b").exists()
    # a, having waited (a real busy answer), is not held back by its own marker.
    (locks / "want-a").touch()
    assert ask(tmp_path, "a", waited=True) == (0, "0")
    # A marker older than WANT_FRESH is someone gone: nobody yields to it.
    (locks / "want-c").touch()
    old = time.time() - WANT_FRESH - 1
    os.utime(locks / "want-c", (old, old))
    assert ask(tmp_path, "d") == (0, "0")
    assert not (locks / "want-d").exists()  # d never waited
    # A client that gets a slot waits no more, asked as a waiter or not (a session it opened
    # ahead was answered busy): its marker goes, or others yield to it for WANT_FRESH s.
    (locks / "want-e").touch()
    assert ask(tmp_path, "e") == (0, "0")
    assert not (locks / "want-e").exists()


def test_a_client_id_the_shell_cannot_trust_names_no_file(tmp_path):
    argv = wrapped(1, ["/bin/true"], tmp_path)
    argv[argv.index("-")] = "a b"  # as if given by something other than offload
    locks = slot_file(tmp_path, 0).parent
    holder = processes.start(
        wrapped(1, ["/bin/cat"], tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        holder.stdout.readline()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    finally:
        processes.stop(holder)
    assert parse_slot(done.stdout) == "busy"
    assert not list(locks.glob("want-*"))  # taken for no id: no marker


# -- two clients, one builder ------------------------------------------------------------------


def on_a_host_of_its_own(home: Path, argv: list[str]) -> list[str]:
    """``argv`` with a ``current-load`` of its own (module docstring)."""
    (home / "current-load").mkdir(parents=True)
    NIX_CURRENT_LOAD.mkdir(exist_ok=True)
    return client_argv(home / "current-load", argv)


def client(fleet: Fleet, tmp_path: Path, name: str, file: Path) -> subprocess.Popen[str]:
    """``offload build FILE -j 0`` as if on a host of its own."""
    home = tmp_path / name
    argv = offload_argv(file, "--builders", f"@{fleet.machines_file}", "-j", "0")
    return processes.start(
        on_a_host_of_its_own(home, [*argv, "--no-out-link", "--json"]),
        env=offload_env(fleet, home),
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stamped(log: Path, then: str) -> str:
    stamp = "$(/bin/date +%s.%N)"
    return f"echo start {stamp} >> {log}; {then}; echo end {stamp} >> {log}"


def jobs(tmp_path: Path, name: str, script: str, count: int) -> Path:
    body = (
        'builtins.listToAttrs (builtins.genList (i: { name = "j${toString i}"; value = '
        f'mk "{name}-${{toString i}}" "{script}" {{}}; }}) {count})\n'
    )
    (tmp_path / name).mkdir()
    return nix_file(tmp_path / name, body)


def test_two_clients_never_hold_more_than_the_builders_slots(shared_fleet, tmp_path):
    log = tmp_path / "stamps"
    files = {
        who: jobs(tmp_path, who, stamped(log, f"/bin/sleep 0.4; echo {who} > $out"), 4)
        for who in ("one", "two")
    }
    clients = {who: client(shared_fleet, tmp_path / who, "c", f) for who, f in files.items()}
    for who, proc in clients.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{who}: {err}"
        built = [json.loads(x) for x in out.splitlines() if '"job_finished"' in x]
        assert sorted(e["status"] for e in built) == ["built"] * 4
    for who, file in files.items():
        for i in range(4):
            assert Path(out_path(file, f"j{i}")).read_text() == f"{who}\n"
    stamps, peak = peak_running(log)
    assert stamps == 16
    # Each client alone would fill both slots: four at once without the builder's count.
    assert peak <= SLOTS


def test_a_client_that_keeps_a_builder_busy_still_lets_a_waiting_client_take_turns(
    shared_fleet, tmp_path
):
    # A has several turns' worth of builds for both slots; B comes once A builds there.
    logs = {who: tmp_path / f"stamps-{who}" for who in ("a", "b")}
    counts = {"a": 4 * int(TURN) * SLOTS, "b": 2}
    files = {
        who: jobs(tmp_path, who, stamped(log, f"/bin/sleep 0.5; echo {who} > $out"), counts[who])
        for who, log in logs.items()
    }
    first = client(shared_fleet, tmp_path / "a", "c", files["a"])
    second_while_first(
        first,
        logs["a"].exists,
        "client A's first build",
        lambda: client(shared_fleet, tmp_path / "b", "c", files["b"]),
    )
    for who, file in files.items():
        for i in range(counts[who]):
            assert Path(out_path(file, f"j{i}")).read_text() == f"{who}\n"
    starts = {
        who: sorted(
            float(t) for kind, t in map(str.split, log.read_text().splitlines()) if kind == "start"
        )
        for who, log in logs.items()
    }
    # B was not starved: it built while A still had builds to start (first come, first
    # served would have kept both slots A's until A ran out of work).
    assert starts["b"][0] < starts["a"][-1]
    assert max(starts["b"]) < starts["a"][-1]
    both = tmp_path / "stamps"
    both.write_text(logs["a"].read_text() + logs["b"].read_text())
    stamps, peak = peak_running(both)
    assert stamps == 2 * (counts["a"] + counts["b"])
    assert peak <= SLOTS


def test_a_killed_client_frees_its_slots_on_the_builder_at_once(shared_fleet, tmp_path):
    member_var = shared_fleet.dir / "shared" / "nix" / "var" / "nix"
    marker = tmp_path / "long"
    long_file = jobs(tmp_path, "long", f"echo > {marker}-$name; /bin/sleep 60; echo > $out", SLOTS)
    holder = client(shared_fleet, tmp_path / "long", "c", long_file)
    try:
        wait_for(lambda: len(list(tmp_path.glob("long-*"))) == SLOTS, 60, "both long builds")
        assert all(held(slot_file(member_var, s)) for s in range(SLOTS))
        log = tmp_path / "stamps"
        waiter = client(
            shared_fleet,
            tmp_path / "quick",
            "c",
            jobs(tmp_path, "quick", stamped(log, "echo > $out"), 1),
        )
        try:
            assert waiter.stdout is not None
            # The second client finds every slot held on the builder and waits for one.
            while '"phase": "queued"' not in (line := waiter.stdout.readline()):
                assert line, "the second client ended without waiting for a slot"
            killed_at = time.time()
            holder.send_signal(signal.SIGTERM)
            holder.communicate(timeout=30)
            wait_for(
                lambda: (
                    not any(held(slot_file(member_var, s)) for s in range(SLOTS)) or log.exists()
                ),
                10,
                "the killed client's slots to be free on the builder",
            )
            _, err = waiter.communicate(timeout=60)
            assert waiter.returncode == 0, err
        finally:
            processes.stop(waiter)
    finally:
        processes.stop(holder)
    started = float(log.read_text().split()[1])
    assert started >= killed_at  # it got a slot only once the killed client had let go


def hook_client(fleet: Fleet, home: Path, file: Path) -> subprocess.Popen[str]:
    """``nix-build FILE -j 0`` with ``offload-hook``, as if on a host of its own; its
    coordinator is started inside that host's namespace too."""
    hook = str(Path(sys.executable).parent / "offload-hook")
    argv = ["nix-build", str(file), "--no-out-link", "-j", "0", "--option", "build-hook", hook]
    argv += ["--option", "substituters", "", "--builders", f"@{fleet.machines_file}"]
    return processes.start(
        on_a_host_of_its_own(home, argv),
        env={**fleet.env(), "OFFLOAD_STATE_DIR": str(home / "state")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_offload_build_and_offload_hook_count_each_others_builds_on_the_builder(
    shared_fleet, tmp_path
):
    logs = {who: tmp_path / f"stamps-{who}" for who in ("run", "hook")}
    counts = {"run": 4, "hook": 6}
    # Each client's builds mark that it built there, and its first build holds its slot until
    # the other's mark is there too (at most two minutes), so the two clients surely build there
    # at once, whichever starts first. Only one build of each waits: a slot is left to take.
    marks = {who: tmp_path / f"{who}-started" for who in counts}

    def script(who: str, other: str) -> str:
        gate = (
            f"case $name in {who}-0) n=0; while [ ! -e {marks[other]} ] && [ $n -lt 2400 ]; "
            "do /bin/sleep 0.05; n=$((n + 1)); done;; esac; "
        )
        return f"echo > {marks[who]}; {gate}/bin/sleep 0.6; echo {who} > $out"

    scripts = {"run": script("run", "hook"), "hook": script("hook", "run")}
    files = {
        who: jobs(tmp_path, who, stamped(log, scripts[who]), counts[who])
        for who, log in logs.items()
    }
    try:
        hooked = hook_client(shared_fleet, tmp_path / "hook" / "h", files["hook"])
        run = client(shared_fleet, tmp_path / "run", "c", files["run"])
        out, err = hooked.communicate(timeout=180)
        assert hooked.returncode == 0, err
        assert len(out.split()) == counts["hook"]
        _, err = run.communicate(timeout=180)
        assert run.returncode == 0, err
    finally:
        stop_coordinators(tmp_path / "hook" / "h" / "state")
    for who, file in files.items():
        for i in range(counts[who]):
            assert Path(out_path(file, f"j{i}")).read_text() == f"{who}\n"
    spans = {}
    for who, log in logs.items():
        times = [float(line.split()[1]) for line in log.read_text().splitlines()]
        spans[who] = (min(times), max(times))
    assert all(mark.exists() for mark in marks.values())
    # The two clients contended: each built while the other did.
    assert spans["run"][0] < spans["hook"][1]
    assert spans["hook"][0] < spans["run"][1]
    both = tmp_path / "stamps"
    both.write_text(logs["run"].read_text() + logs["hook"].read_text())
    stamps, peak = peak_running(both)
    assert stamps == 2 * (counts["run"] + counts["hook"])
    # Either client alone fills both slots: up to four at once if they did not count each other.
    assert peak <= SLOTS


def test_the_hook_waits_for_a_slot_another_client_holds_on_the_builder(shared_fleet, tmp_path):
    member_var = shared_fleet.dir / "shared" / "nix" / "var" / "nix"
    locks = slot_file(member_var, 0).parent
    locks.mkdir(mode=0o700, exist_ok=True)
    # Another client, as the builder sees it: both slot files held under flock.
    fds = [os.open(slot_file(member_var, s), os.O_WRONLY | os.O_CREAT, 0o600) for s in range(2)]
    log = tmp_path / "stamps"
    file = jobs(tmp_path, "waits", stamped(log, "echo waited > $out"), 1)
    state = tmp_path / "h" / "state"
    try:
        for fd in fds:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        hooked = hook_client(shared_fleet, tmp_path / "h", file)
        watchdog = threading.Timer(120, hooked.kill)
        watchdog.start()
        try:
            assert hooked.stderr is not None
            while "every slot there is held by another client" not in (
                line := hooked.stderr.readline()
            ):
                assert line, "nix-build ended without waiting for a slot on the builder"
            assert not log.exists()  # accepted, and waiting: nothing built there yet
            released = time.time()
            for fd in fds:
                os.close(fd)
            fds = []
            out, err = hooked.communicate(timeout=60)
        finally:
            watchdog.cancel()
            processes.stop(hooked)
        assert hooked.returncode == 0, err
        assert Path(out.split()[0]).read_text() == "waited\n"
    finally:
        for fd in fds:
            os.close(fd)
        stop_coordinators(state)
    assert float(log.read_text().split()[1]) >= released


def busy_in_summary(stderr: str, machine: str) -> float:
    """The busy seconds of ``machine``'s row in a run's plain summary."""
    (row,) = (line.split() for line in stderr.splitlines() if line.startswith(f"{machine} "))
    busy = row[5]  # machine built fetched failed stopped busy sent received
    minutes, _, seconds = busy.rstrip("s").rpartition("m")
    return 60 * float(minutes or 0) + float(seconds)


@contextlib.contextmanager
def waiting_for_both_slots(
    fleet: Fleet, tmp_path: Path, name: str
) -> Iterator[tuple[subprocess.Popen[str], Callable[[], None], Path]]:
    """A run of one build on ``shared`` once it says it waits there, while the test, another
    client, holds both of the builder's slots: (the run, what lets the slots go, the slot
    directory). The slots are let go and the run stopped at the end whatever happens."""
    member_var = fleet.dir / "shared" / "nix" / "var" / "nix"
    slots = slot_file(member_var, 0).parent
    slots.mkdir(mode=0o700, exist_ok=True)
    fds = [os.open(slot_file(member_var, s), os.O_WRONLY | os.O_CREAT, 0o600) for s in range(2)]

    def release() -> None:
        for fd in fds:
            os.close(fd)
        fds.clear()

    file = jobs(tmp_path, name, "/bin/sleep 0.5; echo > $out", 1)
    argv = offload_argv(file, "--builders", f"@{fleet.machines_file}", "-j", "0")
    try:
        for fd in fds:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        run = processes.start(
            [*argv, "--no-out-link"],
            env=offload_env(fleet, tmp_path),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert run.stderr is not None
            while "full: every slot there is held by other clients" not in (
                line := run.stderr.readline()
            ):
                assert line, "the run ended without waiting for a slot on the builder"
            yield run, release, slots
        finally:
            processes.stop(run)
    finally:
        release()


def test_the_summary_counts_no_time_waiting_for_other_clients_as_busy(shared_fleet, tmp_path):
    # Another client holds both of the builder's slots for HOLD s after this run asks for one:
    # the run's summary said the builder was busy for those seconds, while it built nothing of
    # the run's (history left them out already: a copy's time less its waiting).
    hold = 4.0
    with waiting_for_both_slots(shared_fleet, tmp_path, "waits") as (run, release, _):
        time.sleep(hold)  # the other client's builds
        release()
        _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    # About the build's own half a second and its output's fetch; not the wait.
    assert busy_in_summary(err, "shared") < hold, err


def test_a_run_that_waited_on_a_builder_and_ended_leaves_no_want_marker_there(
    shared_fleet, tmp_path
):
    # Its busy answer left want-<id> on the builder, removed only by a slot taken there: a run
    # stopped while it waited (here Ctrl-C) left it for other clients' sessions to delete 10
    # minutes later.
    with waiting_for_both_slots(shared_fleet, tmp_path, "unmarked") as (run, _, slots):
        assert len(list(slots.glob("want-*"))) == 1  # it waits there, and says so
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    assert run.returncode != 0, err
    assert not list(slots.glob("want-*")), err
