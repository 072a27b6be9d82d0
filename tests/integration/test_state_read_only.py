"""offload's commands on a state directory that exists but is on a read-only mount (a bind
mount made read-only in a private mount namespace the test makes; as root, permission bits
would not stop the commands): what only reads it works and changes nothing there, what must
write it is one error line naming it, with a hint."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from offload.backoff import Health, save_backoff
from offload.history.db import History
from offload.history.records import BuildRecord, RunRecord


def _offload_read_only(
    read_only: Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``offload ARGS`` with ``read_only`` mounted read-only over itself."""
    place = shlex.quote(str(read_only))
    command = shlex.join([sys.executable, "-m", "offload", *args])
    script = f"mount --bind {place} {place} && mount -o remount,bind,ro {place} && exec {command}"
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _contents(place: Path) -> list[tuple[str, bytes]]:
    return sorted((p.name, p.read_bytes()) for p in place.iterdir() if p.is_file())


def test_history_and_report_read_a_read_only_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    drv = "/nix/store/" + "a" * 32 + "-hello-2.12.drv"
    build = BuildRecord("run-ro", drv, "hello", "local", 10.0, 14.0, "built", name="hello-2.12")
    with History(state / "history.sqlite") as history:
        history.record_run(
            RunRecord("run-ro", 9.0, 15.0, ("hello",), "ok", (), None, None), [build]
        )
    before = _contents(state)
    out = tmp_path / "run.html"
    env = {"OFFLOAD_STATE_DIR": str(state)}
    listed = _offload_read_only(state, "history", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert '"run_id": "run-ro"' in listed.stdout
    page = _offload_read_only(state, "report", "-o", str(out), env=env)
    assert page.returncode == 0, page.stderr
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert _contents(state) == before


def _use_in_namespace(tmp_path: Path, setup: str, *commands: list[str]) -> tuple[list[str], Path]:
    """``offload use`` commands, each one's exit status and output (``-- rc=N`` lines), run
    after ``setup`` (shell, in a private mount namespace: /var/lib is the namespace's own);
    the user's state directory is ``tmp_path / "xdg" / "offload"``."""
    script = setup
    for argv in commands:
        script += f"; {shlex.join([sys.executable, '-m', 'offload', 'use', *argv])}"
        script += '; echo "-- rc=$?"'
    env = {k: v for k, v in os.environ.items() if k not in ("OFFLOAD_STATE_DIR", "NIX_CONFIG")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.splitlines(), tmp_path / "xdg" / "offload"


_UNCHANGED = "Read-only file system; nothing was changed"
_HINT = (
    "hint: as root, `offload use` chooses for the nix-daemon's offload-hook too, in"
    " /var/lib/offload: make it writable, or set OFFLOAD_STATE_DIR to choose in that state"
    " directory only"
)


def test_a_choice_the_daemons_place_cannot_take_is_made_nowhere(tmp_path: Path) -> None:
    said, user = _use_in_namespace(
        tmp_path,
        "mount -t tmpfs -o ro none /var/lib",
        ["local", "--for", "1h", "--builders", ""],
    )
    assert said == [
        f"error: /var/lib/offload: cannot write the builder choice: {_UNCHANGED}",
        _HINT,
        "-- rc=1",
    ]
    assert not (user / "use.json").exists()


def test_a_choice_the_daemons_place_cannot_clear_stays_everywhere(tmp_path: Path) -> None:
    choice = '{"machines": ["local"], "since": 1.0, "until": null}'
    user = tmp_path / "xdg" / "offload"
    user.mkdir(parents=True)
    (user / "use.json").write_text(choice)
    said, _ = _use_in_namespace(
        tmp_path,
        "mount -t tmpfs none /var/lib && mkdir /var/lib/offload"
        f" && echo {shlex.quote(choice)} > /var/lib/offload/use.json"
        " && mount -o remount,ro /var/lib",
        ["--clear"],
        ["--json"],
    )
    assert said[:3] == [
        f"error: /var/lib/offload: cannot clear the builder choice: {_UNCHANGED}",
        _HINT,
        "-- rc=1",
    ]
    kept = {"machines": ["local"], "until": None}
    assert said[3:] == [
        json.dumps({str(user): kept, "/var/lib/offload": kept}),
        "-- rc=0",
    ]
    assert (user / "use.json").read_text() == choice


def test_use_on_a_read_only_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    env = {"OFFLOAD_STATE_DIR": str(state)}
    cleared = _offload_read_only(state, "use", "--clear", env=env)  # there is none to clear
    assert (cleared.returncode, cleared.stderr) == (0, "")
    chosen = _offload_read_only(state, "use", "local", "--builders", "", env=env)
    assert chosen.returncode == 1
    assert chosen.stderr.splitlines() == [
        f"error: {state}: cannot write the builder choice: {_UNCHANGED}",
        "hint: OFFLOAD_STATE_DIR names it: point it at a directory you may write",
    ]
    assert list(state.iterdir()) == []


def test_a_backoff_reset_that_cannot_be_written_is_an_error(tmp_path: Path) -> None:
    # The builder stays backed off: a warning and exit 0 said the reset was done.
    state = tmp_path / "state"
    save_backoff(state / "backoff.json", {"b1": Health(2, time.time() + 600, "refused")}, 0.0)
    before = _contents(state)
    env = {"OFFLOAD_STATE_DIR": str(state), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    done = _offload_read_only(state, "machines", "--builders", "b1", "--reset", "b1", env=env)
    assert done.returncode == 1, done.stderr
    said = f"error: --reset: cannot clear the backoff of b1 in {state}/backoff.json"
    assert done.stderr.splitlines() == [
        f"{said}: Read-only file system",
        "hint: run it where you may write that file (sudo for the nix-daemon's hook's)",
    ]
    assert _contents(state) == before


def test_a_build_on_a_read_only_state_directory_still_reads_its_history_for_estimates(
    tmp_path: Path,
) -> None:
    # It said "[Errno 30] Read-only file system: ...history.sqlite; this run builds without
    # estimates", and guessed every build though history could be read (interrupts tester).
    state = tmp_path / "state"
    drv = "/nix/store/" + "a" * 32 + "-ro-known-1.0.drv"
    build = BuildRecord(
        "run-ro", drv, "ro-known", "local", 10.0, 13.0, "built", name="ro-known-1.0"
    )
    with History(state / "history.sqlite") as history:
        history.record_run(
            RunRecord("run-ro", 9.0, 15.0, ("ro-known",), "ok", (), None, None), [build]
        )
    before = _contents(state)
    nix = tmp_path / "ro.nix"
    nix.write_text(
        'derivation { name = "ro-known-1.0"; system = builtins.currentSystem;'
        f' builder = "/bin/sh"; args = [ "-c" "echo {time.time()} > $out" ]; }}\n'
    )
    env = {"OFFLOAD_STATE_DIR": str(state), "NIX_CONFIG": "substituters =\nbuilders =\n"}
    done = _offload_read_only(state, "build", "--dry-run", "--json", str(nix), env=env)
    assert done.returncode == 0, done.stderr
    assert "Errno" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    said = (
        f"warning: {state / 'history.sqlite'}: cannot be written here; this run is kept in no"
        " history (its estimates are read from it) (hint: make it a file this user may write)"
    )
    assert warnings == [said]
    plan = json.loads(done.stdout)
    assert plan["makespan"] == 3.0  # history's 3 s, not a guess of 10
    assert _contents(state) == before


def test_a_history_in_a_directory_the_user_may_not_write_is_read_for_estimates(
    tmp_path: Path,
) -> None:
    # The file's own mode was checked alone: in a directory of mode 555 its write failed
    # ("attempt to write a readonly database") and the run built without estimates (review).
    import shutil
    import tempfile

    from offload.cli.build_keep import opened_history
    from tests.helpers.users import as_another_user

    # Under /tmp itself: pytest's own directories are root's alone (0700).
    place = Path(tempfile.mkdtemp(prefix="offload-ro-", dir="/tmp"))
    place.chmod(0o755)
    state = place / "state"
    with History(state / "history.sqlite") as history:
        history.record_run(RunRecord("run-d", 9.0, 15.0, ("d",), "ok", (), None, None), [])
    os.chown(state, 65534, 65534)
    os.chown(state / "history.sqlite", 65534, 65534)
    state.chmod(0o555)

    def opened() -> str:
        with opened_history(state) as history:
            return "none" if history is None else f"read-only {history.read_only}"

    try:
        assert as_another_user(opened) == "read-only True"
    finally:
        state.chmod(0o755)
        shutil.rmtree(place)
