"""A backed-off builder under `offload-hook` and real Nix 2.8: said in the log Nix prints, with
why, and never a silent wait (`nix-build --option build-hook offload-hook` on a private fleet).

One member, "hb1" (two slots), and "bad": an ssh alias to the same member with a key it does
not accept, as a user with a wrong key in the machines file has. Its failure is backed off with
why (the refused key and the fix) in backoff.json, which `offload status` and `offload machines
--wide` show. A later nix-build that only "bad" could serve tries it once, says so, and
declines when it fails again (Nix then says it cannot build); one whose builder was fixed since
builds there. With another builder to use, the backed-off one is named once per nix-build.
An accepted derivation (Nix cannot take it back) whose builder fails while only backed-off ones
are left tries one of them at once, and fails with one line once none is left, never waiting
out their backoff.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from offload.backoff import Health, load_backoff, save_backoff
from offload.fleet import Fleet, MemberSpec, client_argv
from offload.slots import NIX_CURRENT_LOAD, SlotLocks, slot_key
from tests.helpers import processes
from tests.helpers.fleets import member_line, private_fleet_fixture
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import events

HOOK = str(Path(sys.executable).parent / "offload-hook")
ONE = '[ (mk "a" "echo a > $out" {}) ]\n'  # one derivation, new to every store (its salt)
REFUSED = "the builder refused the ssh key"  # offload's words for ssh's "Permission denied"

backoff_fleet = private_fleet_fixture([MemberSpec("hb1", 1.0, 2)], "ofbo", scope="module")


pytestmark = pytest.mark.usefixtures("coordinators_stopped")


def _bad_line(fleet: Fleet, tmp_path: Path, *others: str) -> tuple[str, Path]:
    """(machines line, ssh config) of "bad": hb1 reached with a key it does not accept (its
    host key pinned, so only the user key is wrong); ``others`` get aliases of their own in
    the config, the same as "bad" (their lines: ``_alias``)."""
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    config = tmp_path / "ssh_config"
    blocks = [
        f"Host {name}\n  HostName 127.0.0.1\n  Port {fleet.member('hb1').port}\n  User root\n"
        f"  IdentityFile {wrong}\n  IdentitiesOnly yes\n  HostKeyAlias {name}\n  BatchMode yes\n"
        "  LogLevel ERROR\n"
        for name in ("bad", *others)
    ]
    config.write_text(f"{fleet.ssh_config.read_text()}\n" + "".join(blocks))
    return _alias(fleet, "bad", wrong), config


def _alias(fleet: Fleet, name: str, key: Path, jobs: int | None = None, speed: int = 1) -> str:
    """The machines line of ssh alias ``name`` with ``key`` (in the URI too: slot locks are
    named after it, so no other run shares them), hb1's slots unless ``jobs``."""
    cols = member_line(fleet, "hb1").split()
    cols[0], cols[2] = f"ssh://{name}?ssh-key={key}", str(key)
    cols[3], cols[4] = cols[3] if jobs is None else str(jobs), str(speed)
    return " ".join(cols)


def _env(fleet: Fleet, tmp_path: Path, config: Path | None = None, **extra: str) -> dict[str, str]:
    env = {**fleet.env(), "OFFLOAD_STATE_DIR": str(tmp_path / "state"), **extra}
    if config is not None:
        env["NIX_SSHOPTS"] = f"-F {config}"
    return env


def _nix_build(file: Path, machines: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = ["nix-build", str(file), "--no-out-link", "-j0", "--builders", machines]
    argv += ["--option", "build-hook", HOOK, "--option", "substituters", ""]
    # A hook that postponed for the backoff would wait 60 s or more: the timeout catches it.
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=40, check=False)


def _offload(env: dict[str, str], machines: Path, *args: str) -> str:
    argv = [sys.executable, "-m", "offload", *args, "--builders", f"@{machines}"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout


def _hook_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("offload-hook: ")]


def test_the_hook_keeps_why_it_backed_a_builder_off_for_status_and_machines(
    backoff_fleet: Fleet, tmp_path: Path
) -> None:
    line, config = _bad_line(backoff_fleet, tmp_path)
    machines = tmp_path / "machines"
    machines.write_text(line + "\n")
    env = _env(backoff_fleet, tmp_path, config)
    done = _nix_build(nix_file(tmp_path, ONE), "@" + str(machines), env)
    assert done.returncode == 1, done.stderr
    [failed, declined] = _hook_lines(done.stderr)
    assert failed.startswith(f"offload-hook: builder 'bad' failed: {REFUSED} ")
    assert f"{tmp_path}/wrong_key.pub" in failed  # the fix: the key to authorize
    assert "declining '/nix/store/" in declined
    assert "max-jobs is 0" in declined
    [health] = load_backoff(tmp_path / "state" / "backoff.json", time.time()).values()
    assert health.reason is not None
    assert health.reason.startswith(REFUSED)
    assert failed.startswith(f"offload-hook: builder 'bad' failed: {health.reason}; ")
    status = json.loads(_offload(env, machines, "status", "--json"))
    [bad] = [m for m in status["machines"] if m["name"] == "bad"]
    assert bad["backoff"]["reason"] == health.reason
    reset = " (fixed since? `offload machines --reset bad` tries it from the next run)"
    said = _offload(env, machines, "status").splitlines()
    assert f"bad: backed off: {health.reason}{reset}" in said
    [row] = [
        r
        for r in _offload(env, machines, "machines", "--wide").splitlines()
        if r.startswith("bad ")
    ]
    assert f"(1x): {REFUSED}" in row


def _seed(tmp_path: Path, name: str, reason: str | None) -> Health:
    """``name`` backed off for 10 minutes, as an earlier run on this host left it."""
    health = Health(1, time.time() + 600, reason)
    save_backoff(tmp_path / "state" / "backoff.json", {name: health}, time.time())
    return health


def test_a_later_nix_build_names_the_backoff_tries_the_builder_and_declines(
    backoff_fleet: Fleet, tmp_path: Path
) -> None:
    # The user's case: the only builder backed off by the previous run, -j0. Not a silent
    # "waiting for a machine" until killed: the backoff and its cause, one more try, a decline.
    line, config = _bad_line(backoff_fleet, tmp_path)
    earlier = f"{REFUSED} (as the previous nix-build found)"
    health = _seed(tmp_path, "bad", earlier)
    done = _nix_build(nix_file(tmp_path, ONE), line, _env(backoff_fleet, tmp_path, config))
    assert done.returncode == 1, done.stderr
    assert "waiting for a machine" not in done.stderr
    until = time.strftime("%H:%M:%S", time.localtime(health.until))
    [said, retried, failed, declined] = _hook_lines(done.stderr)
    assert said.startswith(
        f"offload-hook: builder 'bad' is backed off until {until} after 1 failure: {earlier}; "
    )
    assert "so builder 'bad' is tried again now" in retried
    assert f"builder 'bad' failed: {REFUSED}" in failed
    assert "declining '/nix/store/" in declined
    [after] = load_backoff(tmp_path / "state" / "backoff.json", time.time()).values()
    assert after.failures == 2
    assert after.reason is not None
    assert after.reason.startswith(REFUSED)


def test_derivations_only_a_backed_off_builder_could_build_are_declined_in_one_line(
    backoff_fleet: Fleet, tmp_path: Path
) -> None:
    # A tester away from home: one line of 330 characters for every derivation declined (a
    # system's nix-build would print hundreds). Three derivations, only "bad" could build them.
    line, config = _bad_line(backoff_fleet, tmp_path)
    _seed(tmp_path, "bad", REFUSED)
    three = "".join(f'(mk "{name}" "echo {name} > $out" {{}}) ' for name in "abc")
    done = _nix_build(
        nix_file(tmp_path, f"[ {three}]\n"), line, _env(backoff_fleet, tmp_path, config)
    )
    assert done.returncode == 1, done.stderr
    declined = [said for said in _hook_lines(done.stderr) if "declining '" in said]
    assert len(declined) == 1, done.stderr
    assert declined[0].endswith("so is every other derivation only they could build, until then")


def test_one_outage_two_nix_builds_meet_is_one_failure_told_to_both(
    backoff_fleet: Fleet, tmp_path: Path
) -> None:
    # A second nix-build that met the same dead builder a moment later counted a second
    # failure (180 s), and a third (540 s) on its next try (hook tester).
    line, config = _bad_line(backoff_fleet, tmp_path)
    env = _env(backoff_fleet, tmp_path, config)
    builds = [_nix_build(nix_file(tmp_path, ONE), line, env) for _ in range(2)]
    told = []
    for done in builds:
        assert done.returncode == 1, done.stderr
        # The first as it failed; the second as the backoff it met ("is backed off until"),
        # and not again as its retry out of turn failed into the same backoff.
        [said] = [
            line
            for line in _hook_lines(done.stderr)
            if "builder 'bad' failed" in line or "builder 'bad' is backed off" in line
        ]  # told once (a review: `next` would pass were it told twice)
        told.append(said.split("backed off until ")[1].split(" ")[0])
    [after] = load_backoff(tmp_path / "state" / "backoff.json", time.time()).values()
    assert after.failures == 1
    # Each is told, of one and the same backoff.
    assert told == [time.strftime("%H:%M:%S", time.localtime(after.until))] * 2


def test_a_builder_fixed_since_its_backoff_builds_at_once(
    backoff_fleet: Fleet, tmp_path: Path
) -> None:
    # hb1 answers now; its remembered backoff must not fail a build only it can do.
    _seed(tmp_path, "hb1", None)  # as an offload that kept no reasons left it
    done = _nix_build(
        nix_file(tmp_path, ONE), member_line(backoff_fleet, "hb1"), _env(backoff_fleet, tmp_path)
    )
    assert done.returncode == 0, done.stderr
    [said, retried] = _hook_lines(done.stderr)
    assert "builder 'hb1' is backed off until " in said
    assert said.endswith("`offload machines --reset hb1` lets it be tried at once")
    assert "why is not known" in said
    assert "so builder 'hb1' is tried again now" in retried
    assert backoff_fleet.store_has("hb1", done.stdout.strip())
    assert load_backoff(tmp_path / "state" / "backoff.json", time.time()) == {}


@pytest.mark.parametrize("coordinator", ["1", "0"], ids=["coordinator", "in-process"])
def test_a_backed_off_builder_left_out_is_named_once_per_nix_build(
    backoff_fleet: Fleet, tmp_path: Path, coordinator: str
) -> None:
    # "bad" would be first choice (faster, more slots); hb1 builds both leaves instead, in
    # hook processes of their own (Nix starts one per accepted derivation): said once for
    # each nix-build, the second one included (not only in the run that backed it off).
    line, config = _bad_line(backoff_fleet, tmp_path)
    cols = line.split()
    cols[3], cols[4] = "4", "8"
    machines = " ".join(cols) + "\n" + member_line(backoff_fleet, "hb1")
    _seed(tmp_path, "bad", f"{REFUSED} (seeded)")
    env = _env(backoff_fleet, tmp_path, config, OFFLOAD_HOOK_COORDINATOR=coordinator)
    for run in range(2):
        body = f'[ (mk "l0" "echo {run} > $out" {{}}) (mk "l1" "echo {run} > $out" {{}}) ]\n'
        done = _nix_build(nix_file(tmp_path, body, name=f"run{run}.nix"), machines, env)
        assert done.returncode == 0, done.stderr
        for path in done.stdout.split():
            assert backoff_fleet.store_has("hb1", path)
        said = _hook_lines(done.stderr)
        assert len(said) == 1, done.stderr
        assert said[0].startswith("offload-hook: builder 'bad' is backed off until ")
        assert said[0].endswith("`offload machines --reset bad` lets it be tried at once")
        assert f"{REFUSED} (seeded)" in said[0]


def _accepted_while_busy(
    tmp_path: Path, uri: str, machines: str, env: dict[str, str]
) -> tuple[int, str, str]:
    """``nix-build -j0`` of ``ONE`` on a client host of its own, where the one slot of the
    builder at ``uri`` is held until Nix says the hook accepted the derivation for it (its
    slot freeing in a second, it is still the best choice). (exit code, stdout, stderr)"""
    home = tmp_path / "client"
    (home / "current-load").mkdir(parents=True)
    fd: int | None = SlotLocks(home / "current-load").try_acquire(
        slot_key(uri), 1, until=time.time() + 1
    )
    assert fd is not None
    argv = ["nix-build", str(nix_file(tmp_path, ONE)), "--no-out-link", "-j0"]
    argv += ["--builders", machines, "--option", "build-hook", HOOK, "--option", "substituters", ""]
    NIX_CURRENT_LOAD.mkdir(exist_ok=True)
    proc = processes.start(
        client_argv(home / "current-load", argv),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    watchdog = threading.Timer(60, proc.kill)  # read_until waits for a line that may not come
    watchdog.start()
    try:
        processes.read_until(proc, f"on '{uri}'", seen)  # accepted for it, as Nix says
        os.close(fd)
        fd = None
        # Waiting out a backoff would take 10 minutes: the timeout catches it.
        out, err = proc.communicate(timeout=40)
    finally:
        watchdog.cancel()
        processes.stop(proc)
        if fd is not None:
            os.close(fd)
    return proc.returncode, out, "".join(seen) + err


def test_an_accepted_build_whose_builder_fails_tries_a_backed_off_one_at_once(
    backoff_fleet: Fleet, tmp_path: Path
) -> None:
    # Accepted for "bad" (4x, its slot busy a second), hb1 backed off by an earlier run: bad
    # fails as the slot frees, and the derivation builds on hb1 now, not in 10 minutes.
    _, config = _bad_line(backoff_fleet, tmp_path)
    bad = _alias(backoff_fleet, "bad", tmp_path / "wrong_key", jobs=1, speed=4)
    machines = f"{bad}\n{member_line(backoff_fleet, 'hb1')}"
    _seed(tmp_path, "hb1", "unreachable (seeded)")
    env = _env(backoff_fleet, tmp_path, config)
    code, out, err = _accepted_while_busy(tmp_path, bad.split()[0], machines, env)
    assert code == 0, err
    assert backoff_fleet.store_has("hb1", out.strip())
    lines = _hook_lines(err)
    assert any(line.startswith(f"offload-hook: builder 'bad' failed: {REFUSED}") for line in lines)
    assert any("so builder 'hb1' is tried again now" in line for line in lines), err
    assert "offload: moved from builder 'bad' to 'hb1': 'bad' failed" in err
    assert load_backoff(tmp_path / "state" / "backoff.json", time.time()).keys() == {"bad"}


def test_an_accepted_build_no_builder_is_left_for_fails_with_one_line(
    backoff_fleet: Fleet, tmp_path: Path
) -> None:
    # As above, but the backed-off builder ("bad2") fails too when tried: the build fails at
    # once, saying why, and the backoff is left for the next run to see.
    _, config = _bad_line(backoff_fleet, tmp_path, "bad2")
    bad = _alias(backoff_fleet, "bad", tmp_path / "wrong_key", jobs=1, speed=4)
    machines = f"{bad}\n{_alias(backoff_fleet, 'bad2', tmp_path / 'wrong_key')}"
    _seed(tmp_path, "bad2", "unreachable (seeded)")
    env = _env(backoff_fleet, tmp_path, config)
    code, _, err = _accepted_while_busy(tmp_path, bad.split()[0], machines, env)
    assert code != 0, err
    assert "so builder 'bad2' is tried again now" in err
    assert f"builder 'bad2' failed: {REFUSED}" in err
    [given_up] = [line for line in err.splitlines() if "no builder is left" in line]
    assert "offload-hook: no builder is left to build '/nix/store/" in given_up
    assert "only 'bad', 'bad2' could, backed off until " in given_up
    assert "`offload machines --reset bad` once it answers" in given_up
    after = load_backoff(tmp_path / "state" / "backoff.json", time.time())
    assert after.keys() == {"bad", "bad2"}
    assert after["bad2"].failures == 2


def test_a_line_mended_since_its_failure_is_tried_at_once(
    backoff_fleet: Fleet, tmp_path: Path
) -> None:
    # hb1's pinned host key (column 8) was wrong: the run built here and backed hb1 off, with
    # the fix to make. Made, the next run and nix-build used the backoff all the same: it was
    # the name's, whatever line it failed with.
    good = member_line(backoff_fleet, "hb1").split()
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    pinned = base64.b64encode(other.with_suffix(".pub").read_bytes().strip()).decode()
    bad = " ".join([*good[:7], pinned])
    env = _env(backoff_fleet, tmp_path, NIX_CONFIG="substituters =\n")
    state = tmp_path / "state" / "backoff.json"

    def build(line: str, salt: str, jobs: str) -> list[dict[str, object]]:
        file = nix_file(tmp_path, ONE, f"{salt}.nix")
        argv = [sys.executable, "-m", "offload", "build", str(file), "--builders", line]
        done = subprocess.run(
            [*argv, "-j", jobs, "--no-out-link", "--json"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return events(done.stdout)

    first = build(bad, "first", "1")
    assert ("hb1", "down") in {(e["machine"], e["state"]) for e in first if e["event"] == "machine"}
    assert "hb1" in load_backoff(state, time.time())
    mended = " ".join(good)
    second = build(mended, "second", "0")
    assert [e for e in second if e["event"] == "machine"] == []  # not said backed off
    assert {e["machine"] for e in second if e["event"] == "job_finished"} == {"hb1"}
    save_backoff(state, {"hb1": Health(1, time.time() + 60, "HOST KEY CHANGED",
                                       connection="the line before", since=time.time())},
                 time.time())  # fmt: skip
    done = _nix_build(nix_file(tmp_path, ONE, "third.nix"), mended, _env(backoff_fleet, tmp_path))
    assert done.returncode == 0, done.stderr
    assert "backed off" not in done.stderr


def _ended(tmp_path: Path, name: str, failures: int) -> None:
    """``name``'s backoff after ``failures`` failures in a row, ended a minute ago."""
    now = time.time()
    health = Health(failures, now - 60, "refused (an earlier run's)", since=now - 600)
    save_backoff(tmp_path / "state" / "backoff.json", {name: health}, now - 600)


def test_a_builder_failing_again_once_its_backoff_ended_is_backed_off_longer(
    backoff_fleet: Fleet, tmp_path: Path
) -> None:
    # Each run (and nix-build) forgot an ended backoff: a builder down all week was failed
    # 1 time in a row again and again, tried every minute by each run, never 27 minutes.
    line, config = _bad_line(backoff_fleet, tmp_path)
    state = tmp_path / "state" / "backoff.json"
    _ended(tmp_path, "bad", 2)
    assert load_backoff(state, time.time()) == {}  # not in force: tried
    done = _nix_build(nix_file(tmp_path, ONE), line, _env(backoff_fleet, tmp_path, config))
    assert done.returncode == 1, done.stderr
    [after] = load_backoff(state, time.time()).values()
    assert after.failures == 3
    assert 500 < after.until - time.time() <= 540  # 60 s x 3^2
    assert "backed off until" in done.stderr
    _ended(tmp_path, "bad", 3)
    env = _env(backoff_fleet, tmp_path, config, NIX_CONFIG="substituters =\n")
    argv = [sys.executable, "-m", "offload", "build", str(nix_file(tmp_path, ONE, "b.nix"))]
    argv += ["--builders", line, "-j", "1", "--no-out-link"]
    built = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stderr  # here, "bad" down
    [after] = load_backoff(state, time.time()).values()
    assert after.failures == 4
    assert 1500 < after.until - time.time() <= 1620  # 60 s x 3^3, the longest


@pytest.mark.parametrize("by", ["offload build", "offload-hook"])
def test_a_build_on_a_builder_whose_backoff_ended_forgets_its_failures(
    backoff_fleet: Fleet, tmp_path: Path, by: str
) -> None:
    _ended(tmp_path, "hb1", 3)
    line = member_line(backoff_fleet, "hb1")
    env = _env(backoff_fleet, tmp_path, NIX_CONFIG="substituters =\n")
    file = nix_file(tmp_path, ONE)
    if by == "offload-hook":
        done = _nix_build(file, line, env)
    else:
        argv = [sys.executable, "-m", "offload", "build", str(file), "--builders", line]
        argv += ["-j", "0", "--no-out-link"]
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert done.returncode == 0, done.stderr
    # Nothing kept: a failure tomorrow is its first.
    assert json.loads((tmp_path / "state" / "backoff.json").read_text()) == {}
