"""Hardened builders: members whose key may run only `nix-store --serve --write` (issue 14).

One member restricts the client's key in authorized_keys (``restrict,command="..."``, the
NixOS ``nix.sshServe`` way), the other with sshd's ``ForceCommand``; a third is a normal member
to compare with. offload must build there at once (no connect timeout), say once what it cannot
know, and leave no process behind when stopped. Where a derivation was built is proved by its
output (the member's speed file) and the ``--json`` events.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from offload.fleet import Fleet, MemberSpec
from offload.process import spawn
from offload.protocol.serve import ServeClient
from offload.slot_fallback import FALLBACK_FILE, record_fallbacks
from offload.transport.links.base import Opening, open_serve
from offload.transport.links.turns import FALLBACKS, RESTRICTED_FALLBACK
from offload.transport.persist import control_dir
from offload.transport.ssh import CONNECT_TIMEOUT
from offload.transport.wrapper import serve_command, serve_program
from tests.helpers.fleets import (
    member_line,
    member_processes,
    persistent_masters,
    private_fleet_fixture,
    speed_of,
    stop_masters,
)
from tests.helpers.nix_files import SPEED, marker_script, nix_file, out_path, valid_locally
from tests.helpers.offload_run import (
    built_on,
    events,
    offload,
    start_offload,
    wait_for,
    wait_for_marker,
)
from tests.helpers.processes import stop

HOOK = str(Path(sys.executable).parent / "offload-hook")
KEYS, SSHD, PLAIN = "rkeys", "rsshd", "plain"

restricted_fleet = private_fleet_fixture(
    [
        MemberSpec.parse(f"{KEYS}:2:2:serve"),
        MemberSpec.parse(f"{SSHD}:3:1:serve@sshd"),
        MemberSpec.parse(f"{PLAIN}:1:1"),
    ],
    "ofr",
    scope="module",
    doc="Two members whose key runs only the serve program (authorized_keys, ForceCommand).",
)

GRAPH = """rec {
  dep = mk "dep" "echo dep-${salt} > $out; SPEED >> $out" {};
  top = mk "top" "/bin/cat $dep > $out; SPEED >> $out" { inherit dep; };
}
""".replace("SPEED", SPEED)


def line_of(fleet: Fleet, name: str) -> str:
    return member_line(fleet, name)


def build_on(fleet: Fleet, tmp_path: Path, name: str, *args: str) -> tuple[Path, str, str]:
    """``offload build`` of GRAPH's top on member ``name`` alone: (the file, stdout, stderr)."""
    file = nix_file(tmp_path, GRAPH)
    done = offload(
        fleet, tmp_path, file, "-A", "top", "-j0", "--builders", line_of(fleet, name),
        "--no-out-link", *args,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return file, done.stdout, done.stderr


pytestmark = pytest.mark.usefixtures("coordinators_stopped")


def test_the_fleet_writes_the_restriction_where_the_spec_says(restricted_fleet: Fleet) -> None:
    keys = (restricted_fleet.member(KEYS).root / "etc-nix" / "offload-authorized-keys").read_text()
    assert keys.startswith('restrict,command="nix-store --serve --write" ssh-ed25519 ')
    config = (restricted_fleet.member(SSHD).root / "sshd_config").read_text()
    assert "ForceCommand nix-store --serve --write\n" in config
    # And the member really ignores the command asked for: `echo` never runs.
    done = subprocess.run(
        restricted_fleet.ssh_argv(SSHD, "echo", "not-run"),
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "not-run" not in done.stdout
    assert "end-of-file" in done.stderr  # nix-store --serve met EOF instead of the hello


@pytest.mark.parametrize("name", [KEYS, SSHD])
def test_offload_build_builds_a_graph_there_at_once_and_says_so_once(
    restricted_fleet: Fleet, tmp_path: Path, name: str
) -> None:
    launched = time.time()
    file, out, _ = build_on(restricted_fleet, tmp_path, name, "--json")
    assert built_on(out) == {"dep": name, "top": name}
    speed = speed_of(restricted_fleet, name)
    assert Path(out_path(file, "top")).read_text().splitlines()[-1] == speed
    seen = events(out)
    notes = [e for e in seen if e["event"] == "machine" and e["state"] == "restricted"]
    assert [e["machine"] for e in notes] == [name]
    # Told before the executor starts, yet after the event that opens the run.
    assert seen[0]["event"] == "run_started", seen
    assert "load is not known" in notes[0]["message"]
    # Time to first build, from the run's own events: the first session answered at once.
    (started,) = [e["time"] for e in seen if e["event"] == "run_started"]
    building = min(
        e["time"] for e in seen if e["event"] == "job_phase" and e["phase"] == "building"
    )
    assert building - started < CONNECT_TIMEOUT / 4, seen
    # The sessions open before the run starts (evaluation and Python's start are in there too):
    # before the fix the run gave up only after the connect timeout and its slack (25 s).
    assert started - launched < CONNECT_TIMEOUT + 15, seen


def test_the_next_run_over_the_kept_master_still_builds_there_and_says_so(
    restricted_fleet: Fleet, tmp_path: Path
) -> None:
    # The master the first run left is used as it is: no greeting tells the restriction, the
    # first session does.
    control = control_dir(tmp_path / "state")
    kept = []
    for _ in range(2):
        _, out, _ = build_on(restricted_fleet, tmp_path, KEYS, "--json")
        assert built_on(out) == {"dep": KEYS, "top": KEYS}
        notes = [e for e in events(out) if e["event"] == "machine" and e["state"] == "restricted"]
        assert [e["machine"] for e in notes] == [KEYS]
        kept.append(persistent_masters(control))
    assert len(kept[0]) == 1
    assert kept[1] == kept[0]


def test_a_normal_member_is_not_taken_for_restricted(
    restricted_fleet: Fleet, tmp_path: Path
) -> None:
    _, out, _ = build_on(restricted_fleet, tmp_path, PLAIN, "--json")
    assert built_on(out) == {"dep": PLAIN, "top": PLAIN}
    assert not [e for e in events(out) if e.get("state") == "restricted"]


def test_plain_output_tells_the_restriction_on_stderr(
    restricted_fleet: Fleet, tmp_path: Path
) -> None:
    _, _, err = build_on(restricted_fleet, tmp_path, KEYS)
    told = [line for line in err.splitlines() if "restricted:" in line]
    assert len(told) == 1, err
    assert KEYS in told[0]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_stopping_offload_leaves_no_process_on_the_restricted_member(
    restricted_fleet: Fleet, tmp_path: Path, how: signal.Signals
) -> None:
    marker = tmp_path / "marker"
    file = nix_file(
        tmp_path,
        f'{{ x = mk "x" "{marker_script(marker, "/bin/sleep 120")}; echo > $out" {{}}; }}\n',
    )
    member = restricted_fleet.member(KEYS)
    proc = start_offload(
        restricted_fleet, tmp_path, file, "-A", "x", "-j0", "--builders",
        line_of(restricted_fleet, KEYS), "--no-out-link",
    )  # fmt: skip
    try:
        wait_for_marker(marker, proc)
        assert any("sleep 120" in cmd for _, cmd in member_processes(member))
        proc.send_signal(how)
        _, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode != 0
    assert "Traceback" not in err

    # The connection the run keeps for the next (offload.transport.persist) is no build's:
    # closed, everything in the member's namespace but its listening sshd must end.
    stop_masters(control_dir(tmp_path / "state"))

    def nothing_left() -> bool:
        return [pid for pid, _ in member_processes(member) if pid != member.pid] == []

    wait_for(nothing_left, 15, f"the build's processes on {KEYS} to end")
    assert not valid_locally(out_path(file, "x"))


def test_nix_build_with_offload_hook_builds_there(restricted_fleet: Fleet, tmp_path: Path) -> None:
    file = nix_file(tmp_path, 'mk "hooked" "SPEED > $out" {}\n'.replace("SPEED", SPEED))
    env = restricted_fleet.env()
    env["OFFLOAD_STATE_DIR"] = str(tmp_path / "state")
    started = time.monotonic()
    done = subprocess.run(
        [
            "nix-build", str(file), "--no-out-link", "-j0",
            "--option", "build-hook", HOOK,
            "--option", "substituters", "",
            "--builders", line_of(restricted_fleet, SSHD),
        ],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    (out,) = done.stdout.split()
    assert Path(out).read_text().strip() == speed_of(restricted_fleet, SSHD)
    assert "its key runs only `nix-store --serve`" in done.stderr
    assert "its slots are counted on this host only" in done.stderr
    assert took < CONNECT_TIMEOUT, done.stderr
    # The coordinator kept what it learned where `offload status` reads it.
    found = status_json(restricted_fleet, tmp_path)
    assert found[SSHD]["slot_fallback"]["reason"] == RESTRICTED_FALLBACK


def status_json(fleet: Fleet, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """``offload status --json`` with the test's state directory, by machine."""
    return {m["name"]: m for m in offload_json(fleet, tmp_path, "status")["machines"]}


def test_status_says_their_slots_are_counted_here_only_after_a_build_there(
    restricted_fleet: Fleet, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    # An old finding for the normal member: its next build there finds slots on the builder.
    record_fallbacks(state / FALLBACK_FILE, {PLAIN: FALLBACKS["noflock"]}, time.time() - 60)
    assert status_json(restricted_fleet, tmp_path)[PLAIN]["slot_fallback"] is not None
    before = time.time()
    build_on(restricted_fleet, tmp_path, KEYS)
    build_on(restricted_fleet, tmp_path, PLAIN)
    found = status_json(restricted_fleet, tmp_path)
    keys = found[KEYS]["slot_fallback"]
    assert keys["reason"] == RESTRICTED_FALLBACK
    assert before <= keys["learned"] <= time.time()
    assert found[PLAIN]["slot_fallback"] is None
    assert found[SSHD]["slot_fallback"] is None  # never built there: nothing learned
    env = restricted_fleet.env()
    env["OFFLOAD_STATE_DIR"] = str(state)
    argv = [sys.executable, "-m", "offload", "status", "--builders"]
    text = subprocess.run(
        [*argv, f"@{restricted_fleet.machines_file}"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    told = [line for line in text.splitlines() if "counted on this host only" in line]
    assert len(told) == 1
    assert told[0].startswith(f"{KEYS}: slots counted on this host only (learned ")
    assert told[0].endswith(RESTRICTED_FALLBACK)
    assert oct((state / FALLBACK_FILE).stat().st_mode & 0o777) == "0o600"


def offload_json(fleet: Fleet, tmp_path: Path, command: str) -> Any:
    """What ``offload COMMAND --json`` over the whole fleet prints, with the test's state."""
    env = fleet.env()
    env["OFFLOAD_STATE_DIR"] = str(tmp_path / "state")
    argv = [sys.executable, "-m", "offload", command, "--builders", f"@{fleet.machines_file}"]
    done = subprocess.run(
        [*argv, "--json"], env=env, capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def doctor_json(fleet: Fleet, tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in offload_json(fleet, tmp_path, "doctor")}


def test_doctor_finds_them_usable_and_says_what_it_cannot_check(
    restricted_fleet: Fleet, tmp_path: Path
) -> None:
    found = doctor_json(restricted_fleet, tmp_path)
    for name in (KEYS, SSHD):
        report = found[name]
        assert report["ok"] is True
        checks = {c["name"]: c for c in report["checks"]}
        assert {n for n, c in checks.items() if c["verdict"] == "ok"} == {
            "resolve", "port", "ssh", "serve", "rtt", "trusted",
        }  # fmt: skip
        # Trust is asked by offering an unsigned path (doctor.trust); the rest cannot be.
        assert checks["trusted"]["detail"].startswith("the builder took an unsigned path")
        unknown = {n for n, c in checks.items() if c["verdict"] == "unknown"}
        assert unknown == {"nix", "systems", "features", "disk", "load", "throughput", "cipher"}
        assert "runs only `nix-store --serve`" in checks["serve"]["detail"]
        assert "load" in checks["load"]["detail"]
        # Its slots cannot be locked there: counted on this host only, and why.
        assert checks["slots"]["verdict"] == "warn"
        assert checks["slots"]["detail"].startswith(
            f"counted on this host only: {RESTRICTED_FALLBACK}"
        )
        assert "command=" in checks["slots"]["fix"]
    plain = {c["name"]: c for c in found[PLAIN]["checks"]}
    assert {c["verdict"] for c in plain.values()} == {"ok"}
    assert plain["slots"]["detail"].startswith("1 counted on the builder")


# -- how a session begins, against real local programs ---------------------------------------


async def _opening(argv: list[str], timeout: float = 10) -> tuple[Opening, int | None]:
    """How ``argv`` begins as a serve session, and the server version a handshake then gets."""
    async with spawn(argv) as proc:
        opening = await open_serve(proc, timeout)
        if opening.failure is not None:
            return opening, None
        assert proc.stdin is not None
        client = ServeClient(opening.reader, proc.stdin)
        version = await client.handshake(sent=True)
        await client.close()
        return opening, version


def test_the_bare_serve_program_is_told_by_its_reply_and_handshakes() -> None:
    opening, version = asyncio.run(_opening(serve_program()))
    assert (opening.restricted, opening.pid, opening.load, opening.failure) == (
        True, None, None, None,
    )  # fmt: skip
    assert version == 0x207


def test_the_wrapped_serve_program_reports_its_pid_first() -> None:
    opening, version = asyncio.run(_opening(serve_command()))
    assert not opening.restricted
    assert opening.pid is not None
    assert opening.load is not None
    assert version == 0x207


@pytest.mark.parametrize(
    ("script", "said"),
    [
        # A login shell that greets on stdout, then the serve program: Nix's "protocol mismatch".
        ("echo Welcome to the builder; exec nix-store --serve --write", "'Welcome to the builder'"),
        ("exit 3", "ended before it answered"),
        ("echo oops >&2; exit 1", "ended before it answered"),
        # A forced command that is not the serve program (the daemon reads our hello as junk).
        ("exec nix-daemon --stdio", "ended before it answered"),
    ],
)
def test_anything_else_is_a_failure_that_says_what_answered(script: str, said: str) -> None:
    opening, _ = asyncio.run(_opening(["sh", "-c", script]))
    assert opening.failure is not None
    assert said in opening.failure
    assert not opening.restricted
    if "oops" in script:
        assert opening.early == ("oops",)


def test_silence_fails_after_the_timeout_not_before() -> None:
    started = time.monotonic()
    opening, _ = asyncio.run(_opening(["sleep", "60"], timeout=0.5))
    assert opening.failure == "(no answer within 0.5 s)"
    assert time.monotonic() - started >= 0.5
