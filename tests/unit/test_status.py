"""`offload status` from real lock, backoff and choice files in a temporary state directory."""

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from offload.backoff import UNKNOWN_REASON, Health, save_backoff
from offload.cli.status import format_status, status_json
from offload.config.machines import parse_machines
from offload.config.pool import Pool
from offload.config.settings import LocalMachine
from offload.hook_queue import QUEUED_FILE, Queued, record_queued
from offload.slots import SlotLocks, slot_key
from offload.status import pool_status
from offload.transport.persist import SharedPaths
from offload.transport.ssh import ssh_target
from offload.use import Choice, write_choice
from tests.helpers.users import as_another_user

SYSTEM = "x86_64-linux"
NOBODY = 65534  # a user who cannot open root's slot files
MACHINES = f"ssh://fast {SYSTEM} - 2 4\nssh://slow {SYSTEM} - 1 1\n"
# What a backed-off machine's line ends with: the command that puts it back, once fixed.
RESET_SLOW = " (fixed since? `offload machines --reset slow` tries it from the next run)"


def pool() -> Pool:
    machines, _ = parse_machines(MACHINES, source="m", system=SYSTEM)
    return Pool(LocalMachine(1.0, 2, (SYSTEM,), frozenset()), tuple(machines))


def test_slots_held_backoff_and_choice_are_shown_per_machine(tmp_path: Path) -> None:
    now = time.time()
    locks = SlotLocks(tmp_path / "current-load")
    held = [
        locks.try_acquire(slot_key("ssh://fast"), 2, until=now + 60),
        locks.try_acquire("local", 2),
    ]
    try:
        why = "connection refused by 127.0.0.1:22"
        save_backoff(tmp_path / "backoff.json", {"slow": Health(2, now + 180, why)}, now)
        write_choice(tmp_path, Choice(("fast",), now, now + 3600))
        status = pool_status(pool(), [tmp_path], locks, now)
    finally:
        for fd in held:
            assert fd is not None
            os.close(fd)
    by_name = {m.name: m for m in status.machines}
    assert list(by_name) == ["local", "fast", "slow"]
    assert (by_name["fast"].in_use, by_name["fast"].slots) == (1, 2)
    # The holder wrote its expected end with millisecond precision.
    assert abs(by_name["fast"].expected_free[0] - (now + 60)) < 0.01
    assert (by_name["local"].in_use, by_name["local"].expected_free) == (1, ())
    assert by_name["slow"].in_use == 0
    assert by_name["slow"].backoff == Health(2, now + 180, why)
    assert by_name["fast"].backoff is None
    assert by_name["fast"].by_nix == 0  # offload holds it
    assert [m.chosen for m in status.machines] == [False, True, False]
    text = format_status(status, now)
    assert text.splitlines()[0].split()[0] == "MACHINE"
    assert text.splitlines()[2].split()[:2] == ["fast", "1/2"]
    assert "(late)" not in text.splitlines()[2]
    # Its holder's estimate passed: the build runs longer than guessed, which is said.
    late = format_status(status, now + 61).splitlines()[2].split()
    assert late[2:4] == [time.strftime("%H:%M:%S", time.localtime(now + 60)), "(late)"], late
    assert "(2 failures)" in text.splitlines()[3]
    assert text.splitlines()[-1].startswith("offload use: fast (until ")
    assert f"slow: backed off: {why}{RESET_SLOW}" in text.splitlines()
    data = status_json(status)
    assert status.machines[2].as_json()["backoff"] == {
        "failures": 2,
        "until": now + 180,
        "reason": why,
    }
    assert data["use"] == {"machines": ["fast"], "until": now + 3600, "dir": str(tmp_path)}


def test_a_choice_for_days_says_its_date(tmp_path: Path) -> None:
    # `offload use fast --for 3d` said "until 19:46:13", as if it ended today.
    now = time.time()
    write_choice(tmp_path, Choice(("fast",), now, now + 3 * 86400))
    status = pool_status(pool(), [tmp_path], SlotLocks(tmp_path / "current-load"), now)
    day = time.strftime("%Y-%m-%d", time.localtime(now + 3 * 86400))
    assert format_status(status).splitlines()[-1].startswith(f"offload use: fast (until {day} ")


def test_nothing_held_and_no_choice(tmp_path: Path) -> None:
    status = pool_status(pool(), [tmp_path], SlotLocks(tmp_path / "current-load"), time.time())
    assert {(m.in_use, m.backoff, m.chosen) for m in status.machines} == {(0, None, True)}
    assert status.choice is None
    assert format_status(status).splitlines()[-1].startswith("offload use: none")


def test_the_later_backoff_of_two_state_directories_wins(tmp_path: Path) -> None:
    now = time.time()
    user, system = tmp_path / "user", tmp_path / "system"
    save_backoff(user / "backoff.json", {"fast": Health(1, now + 60)}, now)
    save_backoff(system / "backoff.json", {"fast": Health(3, now + 540)}, now)
    status = pool_status(pool(), [user, system], SlotLocks(tmp_path / "cl"), now)
    assert status.machines[1].backoff == Health(3, now + 540)


def test_a_backoff_without_a_reason_says_it_is_not_known(tmp_path: Path) -> None:
    # backoff.json as an offload that kept no reasons wrote it.
    now = time.time()
    (tmp_path / "backoff.json").write_text(f'{{"slow": {{"failures": 1, "until": {now + 60}}}}}')
    status = pool_status(pool(), [tmp_path], SlotLocks(tmp_path / "cl"), now)
    assert f"slow: backed off: {UNKNOWN_REASON}{RESET_SLOW}" in format_status(status).splitlines()
    assert status.machines[2].as_json()["backoff"] == {
        "failures": 1,
        "until": now + 60,
        "reason": None,
    }


def test_a_reason_is_printed_safe_for_a_terminal(tmp_path: Path) -> None:
    now = time.time()
    why = "ssh: banner \x1b[2Jcleared"
    save_backoff(tmp_path / "backoff.json", {"slow": Health(1, now + 60, why)}, now)
    text = format_status(pool_status(pool(), [tmp_path], SlotLocks(tmp_path / "cl"), now))
    assert f"slow: backed off: ssh: banner \\x1b[2Jcleared{RESET_SLOW}" in text.splitlines()


def test_a_builder_with_a_kept_ssh_connection_is_said_connected(tmp_path: Path) -> None:
    fast = pool().machines[0]
    socket_path = SharedPaths(tmp_path / "ssh", ssh_target(fast), "-F cfg").control
    socket_path.parent.mkdir(mode=0o700)  # as ``persist.control_dir`` makes it
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(str(socket_path))
        listening.listen()
        status = pool_status(pool(), [tmp_path], SlotLocks(tmp_path / "cl"), time.time(), "-F cfg")
        # Made with other ssh options, it is another connection.
        other = pool_status(pool(), [tmp_path], SlotLocks(tmp_path / "cl"), time.time(), "")
    assert [m.connected for m in status.machines] == [False, True, False]
    assert [m.connected for m in other.machines] == [False, False, False]
    # Spacing alone in NIX_SSHOPTS is the same connection (ssh gets the same arguments).
    assert SharedPaths(tmp_path / "ssh", ssh_target(fast), " -F  cfg ").control == socket_path
    assert "ssh connections kept open (up to 2 idle minutes): fast" in format_status(status)
    assert status_json(status)["machines"][1]["connected"] is True  # type: ignore[index]
    # A socket nobody listens on any more (a master killed outright) is no connection.
    after = pool_status(pool(), [tmp_path], SlotLocks(tmp_path / "cl"), time.time(), "-F cfg")
    assert socket_path.exists()
    assert not any(m.connected for m in after.machines)
    assert "ssh connections kept" not in format_status(after)


@pytest.mark.parametrize("made", ["open to others", "another user's", "a symlink"])
def test_a_socket_in_a_directory_others_could_write_is_no_kept_connection(
    tmp_path: Path, made: str
) -> None:
    # The /tmp fallback of kept masters (``persist.location``) is a name anyone can take first.
    fast = pool().machines[0]
    directory = tmp_path / "ssh"
    if made == "a symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        directory.symlink_to(tmp_path / "elsewhere")
    else:
        directory.mkdir(mode=0o733 if made == "open to others" else 0o700)
        directory.chmod(0o733 if made == "open to others" else 0o700)  # past the umask
        if made == "another user's":
            os.chown(directory, 65534, 65534)  # the tests run as root (README)
    socket_path = SharedPaths(directory, ssh_target(fast), "").control
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(str(socket_path))  # named through the symlink, as ssh would
        listening.listen()
        status = pool_status(pool(), [tmp_path], SlotLocks(tmp_path / "cl"), time.time())
        if made != "a symlink":  # the same socket counts once the directory is private
            directory.chmod(0o700)
            os.chown(directory, os.getuid(), os.getgid())
            ours = pool_status(pool(), [tmp_path], SlotLocks(tmp_path / "cl"), time.time())
            assert [m.connected for m in ours.machines] == [False, True, False]
    assert [m.connected for m in status.machines] == [False, False, False]


def test_a_time_no_clock_shows_in_a_state_file_is_a_question_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not offload's (a hand edit, a damaged file): status was an internal error on it.
    from offload.cli import main

    (tmp_path / "loads.json").write_text(
        '{"fast": {"slots": 1, "full": 2, "said": "load 9 on 1 core", "reported": 1e300}}'
    )
    (tmp_path / "slot-fallback.json").write_text(
        '{"fast": {"reason": "no flock", "learned": 1e300}}'
    )
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    assert main(["status", "--builders", "ssh://fast"]) == 0
    out = capsys.readouterr().out
    assert "fast: loaded (hook coordinator, reported ?): load 9 on 1 core" in out


def test_a_choice_ending_at_a_date_no_clock_shows_is_a_question_mark() -> None:
    from offload.cli.status import _day_and_clock

    assert _day_and_clock(1e300) == "?"
    assert _day_and_clock(0.0).startswith("1970-01-0")  # another day: its date is said


def test_a_user_counts_the_slots_root_holds_in_nixs_own_directory() -> None:
    # A user's own slots are in its state directory; root's (the daemon's hook's) in Nix's,
    # 0600: a user's status showed the builders idle while the daemon's hook used them. Run
    # as nobody, which cannot open root's slot file and reads its lock alone.
    base = Path(tempfile.mkdtemp(prefix="ofl-status-", dir="/tmp"))
    try:
        base.chmod(0o755)
        nix = SlotLocks(base / "nix")
        (base / "nix").chmod(0o755)
        held = nix.try_acquire(slot_key("ssh://fast"), 2, until=time.time() + 60)
        assert held is not None
        (base / "nix" / f"{slot_key('ssh://fast')}-0").chmod(0o600)
        own = base / "own"
        own.mkdir()
        os.chown(own, NOBODY, NOBODY)
        code = (
            "import sys, time\n"
            "from pathlib import Path\n"
            "from offload.slots import SlotLocks\n"
            "from offload.status import pool_status\n"
            "from tests.unit.test_status import pool\n"
            f"own, nix = Path({str(own)!r}), Path({str(base / 'nix')!r})\n"
            "slots = SlotLocks(own / 'cl', make=False, others=SlotLocks(nix, make=False))\n"
            "status = pool_status(pool(), [own], slots, time.time())\n"
            "print(*(f'{m.name}={m.in_use}' for m in status.machines))\n"
        )
        nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        done = subprocess.run(
            [*nobody, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=Path(__file__).resolve().parents[2],
        )
        os.close(held)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["local=0", "fast=1", "slow=0"]
    finally:
        shutil.rmtree(base)


def test_a_state_directory_this_user_may_not_search_is_no_error(tmp_path: Path) -> None:
    # Made by `sudo offload build` (root's, 0700): the whole status was "error: cannot use
    # .../current-load/local-1: Permission denied" for the user.
    tmp_path.chmod(0o755)
    state = tmp_path / "state"
    (state / "current-load").mkdir(parents=True)
    (state / "current-load" / "local-1").touch()
    state.chmod(0o700)

    def status() -> str:
        found = pool_status(pool(), [state], SlotLocks(state / "current-load", make=False), 0.0)
        return " ".join(f"{m.name}:{m.slots}" for m in found.machines)

    assert as_another_user(status) == "local:2 fast:2 slow:1"


def test_a_choice_of_machines_not_in_the_pool_is_ignored_as_the_hook_ignores_it(
    tmp_path: Path,
) -> None:
    # Status showed no machine chosen; the hook builds on the whole pool then, saying so.
    write_choice(tmp_path, Choice(("gone",), 0.0, None))
    status = pool_status(pool(), [tmp_path], SlotLocks(tmp_path / "current-load"), 1.0)
    assert [m.chosen for m in status.machines] == [True, True, True]


def test_who_builds_what_is_said_per_machine_soonest_end_first(tmp_path: Path) -> None:
    now = time.time()
    build = SlotLocks(tmp_path / "current-load", program="build")
    hook = SlotLocks(tmp_path / "current-load", program="hook")
    older = SlotLocks(tmp_path / "current-load")  # an offload that names no program
    key = slot_key("ssh://fast")
    held = [
        build.try_acquire(key, 4, until=now + 90, drv="zlib-1.3"),
        hook.try_acquire(key, 4, until=now + 30, drv="hello-2.12"),
        older.try_acquire(key, 4),
    ]
    try:
        status = pool_status(pool(), [tmp_path], build, now)
    finally:
        for fd in held:
            assert fd is not None
            os.close(fd)
    fast = next(m for m in status.machines if m.name == "fast")
    me = getpass.getuser()
    assert [(b.drv, b.program, b.user, b.pid) for b in fast.builds] == [
        ("hello-2.12", "offload-hook", me, os.getpid()),
        ("zlib-1.3", "offload build", me, os.getpid()),
        (None, None, me, os.getpid()),
    ]
    clock = time.strftime("%H:%M:%S", time.localtime(now + 30))
    line = next(x for x in format_status(status, now + 60).splitlines() if "building" in x)
    assert line == (
        f"fast: building hello-2.12 ({me}, offload-hook, until {clock} (late)), "
        f"zlib-1.3 ({me}, offload build, until "
        f"{time.strftime('%H:%M:%S', time.localtime(now + 90))}), a build ({me})"
    )
    assert fast.as_json()["builds"][0] == {
        "drv": "hello-2.12",
        "program": "offload-hook",
        "user": me,
        "pid": os.getpid(),
        "until": pytest.approx(now + 30, abs=0.001),
    }
    # A machine nobody builds on has no such line.
    assert not any(x.startswith(("local:", "slow:")) for x in format_status(status).splitlines())


def test_a_choice_only_the_daemons_hook_has_says_whose_it_is(tmp_path: Path) -> None:
    # `offload use` written for the nix-daemon's hook only: status said "offload use: slow"
    # as the user's, while `offload use` said none and the user's own hook used every builder.
    own, daemons = tmp_path / "own", tmp_path / "daemons"
    own.mkdir()
    daemons.mkdir()
    now = time.time()
    write_choice(daemons, Choice(("slow",), now, None))
    status = pool_status(pool(), [own, daemons], SlotLocks(tmp_path / "current-load"), now)
    assert format_status(status).splitlines()[-1] == (
        f"offload use: slow (until cleared), the nix-daemon's hook's ({daemons}): yours has none"
    )
    assert status_json(status)["use"] == {"machines": ["slow"], "until": None, "dir": str(daemons)}
    write_choice(own, Choice(("fast",), now, None))  # the user's own: said as before
    status = pool_status(pool(), [own, daemons], SlotLocks(tmp_path / "current-load"), now)
    assert format_status(status).splitlines()[-1] == "offload use: fast (until cleared)"


def test_derivations_the_hook_accepted_and_keeps_waiting_are_said(tmp_path: Path) -> None:
    # Nix prints "building ... on 'fast'" at the accept; status showed only the slots held.
    now = time.time()
    record_queued(tmp_path / QUEUED_FILE, [Queued(f"leaf{i}", now - 10 + i) for i in range(10)])
    status = pool_status(pool(), [tmp_path], SlotLocks(tmp_path / "current-load"), now)
    [line] = [line for line in format_status(status).splitlines() if "waiting for a" in line]
    first = time.strftime("%H:%M:%S", time.localtime(now - 10))
    assert line.startswith(
        f"offload-hook: 10 accepted, waiting for a builder slot: leaf0 (since {first}), leaf1 "
    )
    assert line.endswith("leaf7 (since " + time.strftime("%H:%M:%S", time.localtime(now - 3))
                         + "), and 2 more")  # fmt: skip
    assert [q.drv for q in status.queued] == [f"leaf{i}" for i in range(10)]
    assert json.loads(json.dumps(status_json(status)))["queued"][0] == {
        "drv": "leaf0",
        "since": now - 10,
    }
