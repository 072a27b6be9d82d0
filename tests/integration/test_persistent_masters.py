"""``offload build`` keeps each builder's ssh master for the next run
(``offload.transport.persist``), against a fleet of its own: the master outlives the run that
started it; the next run builds over it without connecting again (proved by a builder that
accepts no new connection any more); a master killed outright leaves a socket that the next run
replaces with a master of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.backoff import Health, save_backoff
from offload.errors import SshError
from offload.fleet import Fleet, MemberSpec
from offload.transport.dialect import SERVE
from offload.transport.links import SshTransport
from offload.transport.persist import control_dir, master_alive
from offload.transport.ssh import ssh_target
from tests.helpers.fleets import (
    fleet_machine,
    member_line,
    persistent_masters,
    private_fleet_fixture,
    sessions_silent,
    stop_masters,
)
from tests.helpers.nix_files import SPEED, nix_file
from tests.helpers.offload_run import (
    SHORT_KEEPALIVE,
    built_on,
    offload,
    offload_env,
    wait_for,
    with_keepalive,
)

daemon_fleet = private_fleet_fixture(
    [MemberSpec.parse("onlyd:1:1:daemon")],
    "ofd",
    doc="One member whose key runs only nix-daemon --stdio.",
)
kept_fleet = private_fleet_fixture(
    [MemberSpec.parse("keep:2:2")],
    "ofk",
    doc="One member whose listening sshd the tests stop, its open connections left running.",
)


# Where another pytest session's run (or a person's) keeps its masters when its state's own
# directory is too long for a socket: under this session's TMPDIR, as it was before any test's.
SHARED = Path(tempfile.gettempdir()) / f"offload-ssh-{os.getuid()}-0another"


@pytest.fixture(scope="module")
def another_sessions_master() -> Iterator[subprocess.Popen[bytes]]:
    """A process that looks to ``stop_masters`` as one of another session's ssh masters: its
    command line names a socket in ``SHARED``. One process, no child: ``sh -c "sleep 600; :"``
    left its sleep running 10 minutes after the module, killed alone."""
    socket = str(SHARED / "0123456789abcdef")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", socket])
    yield proc
    proc.kill()
    proc.wait()


def _build(
    fleet: Fleet,
    tmp_path: Path,
    name: str,
    sshopts: str = "",
    *,
    state: Path | None = None,
    config: Path | None = None,
) -> dict[str, str]:
    """``offload build`` of one derivation ``name`` on member ``keep`` alone (``sshopts`` added
    to the fleet's NIX_SSHOPTS; ``state``: the state directory, if not the test's own;
    ``config``: the ssh config given with -F instead of the fleet's): where it was built, as
    the run's events say."""
    file = nix_file(tmp_path, f'mk "{name}" "SPEED > $out" {{}}\n'.replace("SPEED", SPEED), name)
    env = offload_env(fleet, tmp_path)
    if state is not None:
        env["OFFLOAD_STATE_DIR"] = str(state)
    fleets = env.get("NIX_SSHOPTS", "") if config is None else f"-F {config}"
    env["NIX_SSHOPTS"] = f"{sshopts} {fleets}"
    done = offload(
        fleet, tmp_path, file, "-j0", "--builders", member_line(fleet, "keep"), "--no-out-link",
        "--json", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return built_on(done.stdout)


def _connected(fleet: Fleet, tmp_path: Path) -> dict[str, bool]:
    """What ``offload status --json`` says of each builder's kept connection."""
    line = member_line(fleet, "keep")
    done = subprocess.run(
        [sys.executable, "-m", "offload", "status", "--json", "--builders", line],
        env=offload_env(fleet, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    machines = json.loads(done.stdout)["machines"]
    return {m["name"]: m["connected"] for m in machines if m["name"] != "local"}


def test_the_next_run_builds_over_the_master_the_first_left(
    kept_fleet: Fleet, tmp_path: Path
) -> None:
    control = control_dir(tmp_path / "state")
    assert _build(kept_fleet, tmp_path, "first") == {"first": "keep"}
    (master,) = persistent_masters(control)  # the run has ended; its master has not
    assert _connected(kept_fleet, tmp_path) == {"keep": True}  # and `offload status` says so
    # No new connection can be made any more: only one open already can carry the next run.
    member = kept_fleet.member("keep")
    os.kill(member.pid, signal.SIGKILL)
    assert _build(kept_fleet, tmp_path, "second") == {"second": "keep"}
    assert persistent_masters(control) == [master]
    stop_masters(control)
    assert _connected(kept_fleet, tmp_path) == {"keep": False}


def test_a_mended_ssh_config_gets_a_master_of_its_own(kept_fleet: Fleet, tmp_path: Path) -> None:
    # A master opened under the old config would carry its options (its user, its key) into
    # the next runs for two idle minutes: the fix doctor asked for would seem not to work.
    config = tmp_path / "ssh_config"
    shutil.copy(kept_fleet.ssh_config, config)
    control = control_dir(tmp_path / "state")
    assert _build(kept_fleet, tmp_path, "first", config=config) == {"first": "keep"}
    (before,) = persistent_masters(control)
    assert _build(kept_fleet, tmp_path, "again", config=config) == {"again": "keep"}
    assert persistent_masters(control) == [before]  # unchanged: the same master
    with config.open("a") as mended:
        mended.write("\nHost *\n  ServerAliveCountMax 3\n")
    assert _build(kept_fleet, tmp_path, "mended", config=config) == {"mended": "keep"}
    masters = persistent_masters(control)
    assert len(masters) == 2
    assert before in masters
    stop_masters(control)


# ssh reads % in ControlPath as its tokens (%h: the host name): given as %%, the socket is
# where offload looks for it. And it reads an -o value as a line of ssh_config, in words:
# "ControlPath=/tmp/of x/ssh/..." was refused ("keyword controlpath extra arguments at end of
# line"), the builder down and NIX_SSHOPTS blamed; the pinned known_hosts file beside it was
# taken for two files. Given in quotes, each is one path.
@pytest.mark.parametrize("prefix", ["of%h", "of "], ids=["percent", "space"])
def test_a_state_directory_with_an_odd_name_keeps_its_master_there(
    kept_fleet: Fleet, tmp_path: Path, prefix: str
) -> None:
    # The next run finds the master the first left there.
    state = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # short: no /tmp/offload-ssh-*
    control = state / "ssh"
    try:
        assert _build(kept_fleet, tmp_path, "first", state=state) == {"first": "keep"}
        (master,) = persistent_masters(control)
        assert [p.name for p in control.iterdir() if p.is_socket()] != []
        os.kill(kept_fleet.member("keep").pid, signal.SIGKILL)  # no new connection now
        assert _build(kept_fleet, tmp_path, "second", state=state) == {"second": "keep"}
        assert persistent_masters(control) == [master]
    finally:
        stop_masters(control)
        shutil.rmtree(state)


def test_a_master_killed_outright_is_replaced_by_the_next_run(
    kept_fleet: Fleet, tmp_path: Path
) -> None:
    control = control_dir(tmp_path / "state")
    _build(kept_fleet, tmp_path, "first")
    (master,) = persistent_masters(control)
    (socket,) = [p for p in control.iterdir() if not p.name.endswith(".known_hosts")]
    os.kill(master, signal.SIGKILL)  # no chance to remove its socket
    wait_for(lambda: not master_alive(socket), 10, "the master to stop listening")
    assert socket.exists()
    assert _build(kept_fleet, tmp_path, "second") == {"second": "keep"}
    (replaced,) = persistent_masters(control)
    assert replaced != master
    assert master_alive(socket)


def test_control_persist_no_in_nix_sshopts_leaves_no_master(
    kept_fleet: Fleet, tmp_path: Path
) -> None:
    # ssh takes the first value it is given: the user's, before offload's own.
    assert _build(kept_fleet, tmp_path, "once", "-o ControlPersist=no") == {"once": "keep"}
    control = control_dir(tmp_path / "state")
    assert persistent_masters(control) == []
    assert [p for p in control.iterdir() if p.is_socket()] == []


def test_a_tests_runs_keep_their_masters_apart_from_other_sessions(
    kept_fleet: Fleet, tmp_path: Path, another_sessions_master: subprocess.Popen[bytes]
) -> None:
    # A state too deep for a socket there (as under pytest's own base directory): the master
    # goes to TMPDIR's offload-ssh-<uid>-<hash>, the test's own (tests/helpers/fleets.py),
    # not another session's, which the test's end would stop.
    state = tmp_path / ("d" * 60) / "state"
    assert _build(kept_fleet, tmp_path, "apart", state=state) == {"apart": "keep"}
    (master,) = persistent_masters(control_dir(state))
    assert control_dir(state) != SHARED
    assert master not in persistent_masters(SHARED)


def test_another_sessions_master_outlives_the_test_before(
    another_sessions_master: subprocess.Popen[bytes],
) -> None:
    # The test before stopped its own masters as it ended, and only those: before, every ssh
    # naming the shared directory was (another pytest session's, a person's run's).
    assert another_sessions_master.poll() is None


def test_a_kept_connection_gone_silent_costs_a_wait_said_as_slow_not_the_builder(
    kept_fleet: Fleet, tmp_path: Path
) -> None:
    # Both runs give ssh a user's keepalive (NIX_SSHOPTS, so one kept master for both): ssh
    # gives the silent connection up after 4 s, not 12 s.
    sshopts = " ".join(SHORT_KEEPALIVE.options())
    _build(kept_fleet, tmp_path, "first", sshopts)
    # The builder's end of the kept connection stops answering (the kept master's socket
    # still does); the builder itself still takes new connections. ssh's keepalives end the
    # master, and the session that waited on it connects directly (ssh's own fallback).
    with sessions_silent(kept_fleet.member("keep")):
        file = nix_file(tmp_path, f'mk "second" "{SPEED} > $out" {{}}\n', "second")
        done = offload(
            kept_fleet, tmp_path, file, "-j0", "--builders", member_line(kept_fleet, "keep"),
            "--no-out-link", "--json", env=with_keepalive(offload_env(kept_fleet, tmp_path)),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert built_on(done.stdout) == {"second": "keep"}
    assert "builder 'keep' is slow to answer" in done.stderr


def test_a_kept_master_whose_greeting_failed_does_not_stay(
    daemon_fleet: Fleet, tmp_path: Path
) -> None:
    # The member's key runs only nix-daemon --stdio: a master that says the serve protocol's
    # hello gets no ready line. ssh has detached the persisting master by then (it logged in).
    machine = fleet_machine(daemon_fleet, "onlyd")
    control = control_dir(tmp_path / "state")
    transport = SshTransport(
        ssh_target(machine), name="onlyd", env=daemon_fleet.env(), dialect=SERVE, shared=control
    )

    async def go() -> None:
        try:
            await transport.connect_early()
            async with contextlib.AsyncExitStack() as stack:
                with pytest.raises(SshError, match="cannot connect to builder 'onlyd'"):
                    await transport.start(stack)
        finally:
            await transport.close()

    asyncio.run(go())
    wait_for(lambda: not persistent_masters(control), 10, "the failed master to end")
    assert not [p for p in control.iterdir() if p.is_socket()]


def test_a_builder_backed_off_as_the_run_starts_keeps_its_master_for_the_next(
    kept_fleet: Fleet, tmp_path: Path
) -> None:
    # Left out of the early masters (backed off), it is tried once its backoff ends, while a
    # local build (preferLocalBuild: never copied to it) runs on past that end: it alone
    # offers the feature "late" needs, and it builds over the kept master like the others,
    # not a master of its own closed with the run.
    state, now = tmp_path / "state", int(time.time())
    state.mkdir()
    save_backoff(state / "backoff.json", {"keep": Health(1, now + 2, "refused")}, now)
    fields = member_line(kept_fleet, "keep").split()
    fields[5] = "nixos-test"  # its supported features, which the local machine lacks here:
    wait = f"while [ $(/bin/date +%s) -le {now + 2} ]; do /bin/sleep 0.1; done"
    body = (
        f'{{ first = mk "first" "{wait}; {SPEED} > $out" {{ preferLocalBuild = true; }};\n'
        f'  late = mk "late" "{SPEED} > $out" {{ requiredSystemFeatures = [ "nixos-test" ]; }};'
        " }\n"
    )
    file = nix_file(tmp_path, body, "late.nix")
    env = offload_env(kept_fleet, tmp_path)
    env["NIX_CONFIG"] += "\nsystem-features = benchmark big-parallel\n"
    try:
        done = offload(
            kept_fleet, tmp_path, file, "-j1", "--builders", " ".join(fields), "--no-out-link",
            "--json", env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert built_on(done.stdout) == {"first": "local", "late": "keep"}
        (master,) = persistent_masters(control_dir(state))
        os.kill(kept_fleet.member("keep").pid, signal.SIGKILL)  # no new connection now
        assert _build(kept_fleet, tmp_path, "next") == {"next": "keep"}
        assert persistent_masters(control_dir(state)) == [master]
    finally:
        stop_masters(control_dir(state))
