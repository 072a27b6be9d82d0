"""A build offload could not stop on its builder is seen in ``--json`` too, not only on stderr.

A member frozen mid-build (SIGSTOP on every process of it: a hung machine) is found gone by
ssh's keepalives (a user's, in NIX_SSHOPTS: 4 s after its last word, not offload's 12 s); its
build starts again on the local machine, and offload's attempt to stop what it left running
there fails (nothing there answers). That failure was a logged line on
stderr only ("frozen: could not stop remote process: ..."); it is a ``machine`` event with
state ``unstopped`` and the same one ``warning:`` line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

from offload.fleet import Member, MemberSpec
from tests.helpers import processes
from tests.helpers.fleets import member_processes, private_fleet_fixture
from tests.helpers.nix_files import marker_script, nix_file
from tests.helpers.offload_run import (
    events,
    offload_argv,
    offload_env,
    wait_for_marker,
    with_keepalive,
)

# The run: about 4 s for ssh to give the frozen member up, 3 s for the attempt to stop its
# build, and the build locally; far less than this.
RUN_TIMEOUT = 120

hung_fleet = private_fleet_fixture(
    [MemberSpec("frozen", 4, 2)], "oflu", doc="One member the test freezes and thaws."
)


def _freeze(member: Member) -> list[int]:
    """SIGSTOP every process of ``member``, again until none is new (a session forked while
    the first ones were being stopped would still answer)."""
    stopped: list[int] = []
    while fresh := [pid for pid, _ in member_processes(member) if pid not in stopped]:
        for pid in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        stopped += fresh
    return stopped


def test_a_build_that_could_not_be_stopped_is_an_event_and_one_warning(hung_fleet, tmp_path):
    marker = tmp_path / "running"
    # On the member it would run for ten minutes; here (no speed file) it ends at once.
    then = "if [ -e /etc/nix/offload-speed ]; then /bin/sleep 600; fi; echo > $out"
    file = nix_file(tmp_path, f'{{ long = mk "long" "{marker_script(marker, then)}" {{}}; }}\n')
    argv = offload_argv(file, "-A", "long", "--json", "--no-out-link", "--on", "frozen,local")
    proc = processes.start(
        [*argv, "--builders", f"@{hung_fleet.machines_file}"],
        env=with_keepalive(offload_env(hung_fleet, tmp_path)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    frozen: list[int] = []
    try:
        assert wait_for_marker(marker, proc, 60) == "4"  # on the member
        frozen = _freeze(hung_fleet.member("frozen"))
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        processes.stop(proc)
    assert proc.returncode == 0, err
    unstopped = [e for e in events(out) if e["event"] == "machine" and e["state"] == "unstopped"]
    assert len(unstopped) == 1, out
    (event,) = unstopped
    assert event["machine"] == "frozen"
    assert event["message"].startswith("cannot stop process "), event
    assert "on builder 'frozen'" in event["message"]
    warnings = [line for line in err.splitlines() if "cannot stop process" in line]
    assert warnings == [f"warning: {event['message']}"], err
    # The run's end is its last event (but the command's timing): a program reading --json
    # stops there.
    kinds = [e["event"] for e in events(out)]
    assert kinds[-2:] == ["run_finished", "timing"], kinds
