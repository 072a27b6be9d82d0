"""A backed-off builder under `offload-hook` and real Nix 2.8: said in the log Nix prints, with
why, and never a silent wait (`nix-build --option build-hook offload-hook` on a private fleet).

One member, "hb1" (two slots), and "bad": an ssh alias to the same member with a key it does
not accept, as a user with a wrong key in the machines file has. Its failure is backed off with
why (the refused key and the fix) in backoff.json, which `offload status` and `offload machines
--wide` show. A later nix-build that only "bad" could serve tries it once, says so, and
declines when it fails again (Nix then says it cannot build); one whose builder was fixed since
builds there. With another builder to use, the backed-off one is named once per nix-build.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.backoff import Health, load_backoff, save_backoff
from offload.fleet import Fleet, MemberSpec
from tests.helpers.fleets import member_line, private_fleet_fixture
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import stop_coordinators

HOOK = str(Path(sys.executable).parent / "offload-hook")
ONE = '[ (mk "a" "echo a > $out" {}) ]\n'  # one derivation, new to every store (its salt)
REFUSED = "the builder refused the ssh key"  # offload's words for ssh's "Permission denied"

backoff_fleet = private_fleet_fixture([MemberSpec("hb1", 1.0, 2)], "ofbo", scope="module")


@pytest.fixture(autouse=True)
def _coordinators_end_with_the_test(tmp_path: Path) -> Iterator[None]:
    yield
    stop_coordinators(tmp_path / "state")


def _bad_line(fleet: Fleet, tmp_path: Path) -> tuple[str, Path]:
    """(machines line, ssh config) of "bad": hb1 reached with a key it does not accept (its
    host key pinned, so only the user key is wrong)."""
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    config = tmp_path / "ssh_config"
    config.write_text(
        f"{fleet.ssh_config.read_text()}\nHost bad\n  HostName 127.0.0.1\n"
        f"  Port {fleet.member('hb1').port}\n  User root\n  IdentityFile {wrong}\n"
        "  IdentitiesOnly yes\n  HostKeyAlias bad\n  BatchMode yes\n  LogLevel ERROR\n"
    )
    cols = member_line(fleet, "hb1").split()
    # The key in the URI too: slot locks are named after it, so no other run shares them.
    cols[0], cols[2] = f"ssh://bad?ssh-key={wrong}", str(wrong)
    return " ".join(cols), config


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
    assert f"bad: backed off: {health.reason}" in _offload(env, machines, "status").splitlines()
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
