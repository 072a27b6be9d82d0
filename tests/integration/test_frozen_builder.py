"""A builder that stops answering mid-build (every process of the fleet member SIGSTOPped, as a
hung machine or a cut network looks from here) is said as one that did not answer, not as one
that closed the connection: on stderr, in ``--json``, in the summary, and by offload-hook in the
log Nix prints, over ssh:// and ssh-ng:// alike. One that does close it (its serve program
killed, the connection kept) after as long a silence is still said to have closed it
(``offload.transport.links.streams``).

The fleet's ssh logs at ERROR, as many users' does: ssh says nothing of its keepalive timeout.
Every test but ``[json]`` gives ssh a user's keepalive in NIX_SSHOPTS (``SHORT_KEEPALIVE``, 1 s
x 3: ssh gives a silent builder up after 4 s), which ssh takes before offload's own and offload
goes by; ``[json]`` keeps offload's (4 s x 2: 12 s). The last checks the budget offload goes by
against ssh itself, with a count of 0 (ssh then gives up on a live builder too)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.faults.harness import freeze, signal_all

from offload.fleet import Fleet, MemberSpec
from offload.transport.ssh_options import Keepalive
from tests.helpers.fleets import member_line, member_processes, private_fleet_fixture, speed_of
from tests.helpers.hook_runs import hook_env, start_nix_build
from tests.helpers.nix_files import marker_script, nix_file
from tests.helpers.offload_run import (
    SHORT_KEEPALIVE,
    events,
    offload_env,
    start_offload,
    wait_for_marker,
    with_keepalive,
)
from tests.helpers.processes import stop

MEMBERS = ("fz1", "fz2")

frozen_fleet = private_fleet_fixture(
    [MemberSpec("fz1", 2.0, 1), MemberSpec("fz2", 1.0, 1)], "ofz", scope="module"
)

pytestmark = pytest.mark.usefixtures("coordinators_stopped")

SAID = "did not answer for"
HINT = "ssh's keepalives unanswered: the builder is hung or stopped, or the network to it is down"


def _quiet_build(tmp_path: Path, seconds: int) -> tuple[Path, Path]:
    """A build that says where it runs (a marker) and then, the first time only, nothing for
    ``seconds`` (built again elsewhere, it ends at once)."""
    marker, once = tmp_path / "started", tmp_path / "once"
    quiet = f"if [ -e {once} ]; then :; else : > {once}; /bin/sleep {seconds}; fi"
    script = marker_script(marker, quiet)
    return nix_file(tmp_path, f'mk "quiet" "{script}; echo done > $out" {{}}\n'), marker


def _builder(fleet: Fleet, marker: Path, proc: subprocess.Popen[str]) -> str:
    """The member the build started on."""
    speed = wait_for_marker(marker, proc, 60)
    (name,) = [name for name in MEMBERS if speed_of(fleet, name) == speed]
    return name


def _down(proc: subprocess.Popen[str], out: str, err: str, name: str) -> str:
    """The message of the one builder down in a successful ``--json`` run: ``name``."""
    assert proc.returncode == 0, err
    down = [e for e in events(out) if e["event"] == "machine" and e["state"] == "down"]
    assert [e["machine"] for e in down] == [name], err
    message: str = down[0]["message"]
    return message


@pytest.fixture
def frozen() -> Iterator[list[int]]:
    """The pids a test stopped, let go again after it."""
    pids: list[int] = []
    yield pids
    signal_all(pids, signal.SIGCONT)


@pytest.mark.parametrize(
    ("json_output", "keepalive"),
    [(True, None), (False, SHORT_KEEPALIVE)],
    ids=["json", "plain-users-keepalive"],
)
def test_a_frozen_builder_is_said_to_have_stopped_answering(
    frozen_fleet: Fleet,
    tmp_path: Path,
    frozen: list[int],
    json_output: bool,
    keepalive: Keepalive | None,
) -> None:
    # ``keepalive``: one of the user's, in NIX_SSHOPTS before offload's own (None: offload's,
    # 4 x 2). ssh takes the first value, so its master gives the builder up 4 s after its last
    # word, not 12 s: said so, not "closed the connection" (offload went by its own 8 s before).
    file, marker = _quiet_build(tmp_path, 30)
    builders = f"@{frozen_fleet.machines_file}"
    args: list[str | Path] = [file, "-j0", "--builders", builders]
    args += ["--json"] if json_output else []
    env = offload_env(frozen_fleet, tmp_path)
    proc = start_offload(
        frozen_fleet, tmp_path, *args, env=env if keepalive is None else with_keepalive(env)
    )
    try:
        name = _builder(frozen_fleet, marker, proc)
        frozen += freeze(frozen_fleet.member(name))
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    assert "closed the connection" not in err
    # Said as it happened: a warning beside --json's events, a progress line without.
    live = "warning: builder '{0}' is down: " if json_output else "] {0}: down until "
    (said,) = [line for line in err.splitlines() if live.format(name) in line]
    message = said[said.index(f"{name} {SAID} ") :]
    assert "during BuildDerivation of" in message
    assert message.endswith(f"({HINT})"), message
    seconds = float(message.split(SAID)[1].split()[0])
    used = keepalive or Keepalive()  # ssh gives up (count + 1) x interval after the last word
    assert used.budget <= seconds <= 5 * used.gives_up, message
    if json_output:
        down = [e for e in events(out) if e["event"] == "machine" and e["state"] == "down"]
        assert [(e["machine"], e["message"]) for e in down] == [(name, message)]
        lost = [e for e in events(out) if e["event"] == "job_finished" and e["status"] == "lost"]
        assert [e["error"] for e in lost] == [message]
    else:
        lines = err.splitlines()
        title = lines.index("machines down (1):")
        assert lines[title + 1].strip() == f"{name}: {message}", err


def test_a_frozen_ssh_ng_builder_is_said_to_have_stopped_answering(
    frozen_fleet: Fleet, tmp_path: Path, frozen: list[int]
) -> None:
    # The daemon's protocol reads the same session stdout, in its own client.
    machines = tmp_path / "machines"
    lines = [member_line(frozen_fleet, name) for name in MEMBERS]
    machines.write_text("".join(f"{line.replace('ssh://', 'ssh-ng://', 1)}\n" for line in lines))
    file, marker = _quiet_build(tmp_path, 30)
    env = with_keepalive(offload_env(frozen_fleet, tmp_path))  # given up after 4 s, not 12
    args: list[str | Path] = [file, "-j0", "--builders", f"@{machines}", "--json"]
    proc = start_offload(frozen_fleet, tmp_path, *args, env=env)
    try:
        name = _builder(frozen_fleet, marker, proc)
        frozen += freeze(frozen_fleet.member(name))
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    message = _down(proc, out, err, name)
    assert message.startswith(f"{name} {SAID} "), message
    assert message.endswith(f"({HINT})"), message


def test_a_builder_that_closes_a_quiet_session_is_still_said_to_have_closed_it(
    frozen_fleet: Fleet, tmp_path: Path
) -> None:
    # Silent for longer than ssh's keepalive budget, then its serve program is killed: the
    # connection (the master) stays, so the builder closed the session; it did answer.
    # The user's keepalive: a silence of 4 s is past its 3 s budget, as 9 s is past 8 s.
    file, marker = _quiet_build(tmp_path, 60)
    builders = f"@{frozen_fleet.machines_file}"
    env = with_keepalive(offload_env(frozen_fleet, tmp_path))
    args: list[str | Path] = [file, "-j0", "--builders", builders, "--json"]
    proc = start_offload(frozen_fleet, tmp_path, *args, env=env)
    try:
        name = _builder(frozen_fleet, marker, proc)
        time.sleep(SHORT_KEEPALIVE.budget + 1)  # the silence under test, not a wait for an event
        found = member_processes(frozen_fleet.member(name))
        serving = [pid for pid, cmd in found if "nix-store --serve" in cmd]
        building = [pid for pid, cmd in found if "sleep 60" in cmd]
        signal_all(serving, signal.SIGKILL)  # first: a build killed first would fail
        signal_all(building, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    message = _down(proc, out, err, name)
    assert f"{name} closed the connection during BuildDerivation" in message, message
    assert SAID not in err


def test_offload_hook_says_a_frozen_builder_stopped_answering(
    frozen_fleet: Fleet, tmp_path: Path, frozen: list[int]
) -> None:
    file, marker = _quiet_build(tmp_path, 30)
    # The coordinator's ssh gets the nix-build's NIX_SSHOPTS: the user's keepalive first.
    sshopts = with_keepalive(hook_env(frozen_fleet, tmp_path))["NIX_SSHOPTS"]
    build = start_nix_build(frozen_fleet, tmp_path, file, "-j0", output=False, NIX_SSHOPTS=sshopts)
    try:
        name = _builder(frozen_fleet, marker, build)
        frozen += freeze(frozen_fleet.member(name))
        _, err = build.communicate(timeout=120)
    finally:
        stop(build)
    assert build.returncode == 0, err
    assert f"{name} {SAID} " in err, err
    assert HINT in err
    assert "closed the connection" not in err


def test_a_builder_that_closes_the_connection_while_its_build_talks_has_closed_it(
    frozen_fleet: Fleet, tmp_path: Path
) -> None:
    # Nothing on the session's stdout for longer than ssh's keepalive budget (a build runs),
    # but its log goes on, on stderr, until the builder's sshd is killed: the connection ended
    # while the builder was talking. Before: "did not answer for 9 s" (the build's log lines,
    # handed to the run, were not counted as the builder's words).
    marker, once = tmp_path / "started", tmp_path / "once"
    ticks = "while :; do echo tick; /bin/sleep 0.2; done"
    talk = f"if [ -e {once} ]; then :; else : > {once}; {ticks}; fi"
    file = nix_file(
        tmp_path, f'mk "talks" "{marker_script(marker, talk)}; echo done > $out" {{}}\n'
    )
    builders = f"@{frozen_fleet.machines_file}"
    env = with_keepalive(offload_env(frozen_fleet, tmp_path))  # past its budget after 4 s
    args: list[str | Path] = [file, "-j0", "--builders", builders, "--json"]
    proc = start_offload(frozen_fleet, tmp_path, *args, env=env)
    try:
        name = _builder(frozen_fleet, marker, proc)
        time.sleep(SHORT_KEEPALIVE.budget + 1)  # the stdout silence under test, not an event
        found = member_processes(frozen_fleet.member(name))
        # Its connections' sshd, not its listener: the module's other tests still need it.
        sessions = [
            pid for pid, cmd in found if cmd.startswith("sshd:") and "[listener]" not in cmd
        ]
        assert sessions, found
        signal_all(sessions, signal.SIGKILL)  # the connection, not only the session
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    message = _down(proc, out, err, name)
    assert f"{name} closed the connection during BuildDerivation" in message, message
    assert SAID not in err


def test_ssh_with_no_unanswered_ask_allowed_gives_up_no_sooner_than_the_budget(
    frozen_fleet: Fleet,
) -> None:
    # The budget is the least silence after which ssh may give a builder up: what tells a
    # frozen builder from one that closed the connection. ssh's keepalive clock counts whole
    # seconds, so its first ask comes up to 1 s early; with ServerAliveCountMax=0 it gives up
    # at that ask (it waits for no answer: a live builder too), 1 to 2 s after the last word
    # with an interval of 2. offload went by 2 s, and said a builder frozen so had closed it.
    keepalive = Keepalive(2, 0)
    ssh, *rest = frozen_fleet.ssh_argv(MEMBERS[1], "sh", "-c", "echo said; exec sleep 10")
    proc = subprocess.Popen([ssh, *keepalive.options(), *rest], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"said\n"
        said = time.monotonic()
        assert proc.wait(timeout=60) == 255  # ssh's keepalive timeout (the builder is alive)
        silence = time.monotonic() - said
    finally:
        stop(proc)
    assert keepalive.budget <= silence <= 5 * keepalive.gives_up, silence
