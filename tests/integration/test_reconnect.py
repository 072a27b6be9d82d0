"""A builder whose connection is lost mid-run while the builder itself is fine: reconnected.

The run's ssh master to its one builder (``-j 0``) is killed while a build runs there, as a
persistent master ended by hand, or a connection a network dropped, would end: ssh says nothing
that tells this from a builder gone away. The run reconnects at once (a new master), the lost
build goes again on the same builder, and the run says both the fall and the reconnect; before,
the builder was backed off and the run stranded with nothing left to build on. A real member
(sshd, Nix) answers; the master is found by its control socket in the state directory.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path

from offload.fleet import Fleet, MemberSpec
from offload.transport.persist import control_dir
from tests.helpers.fleets import member_line, persistent_masters, private_fleet_fixture
from tests.helpers.nix_files import SPEED, nix_file
from tests.helpers.offload_run import events, start_offload, wait_for
from tests.helpers.processes import stop

reconnect_fleet = private_fleet_fixture(
    [MemberSpec.parse("again:1:1")], "ofr", doc="One member, whose connection the test cuts."
)


def test_a_killed_ssh_master_is_reconnected_and_the_build_goes_on_there(
    reconnect_fleet: Fleet, tmp_path: Path
) -> None:
    # Builders run as nixbld users: the marker directory is theirs to write.
    marks = Path(tempfile.mkdtemp(prefix="ofl-reconnect-", dir="/tmp"))
    marks.chmod(0o777)
    script = f"/bin/mktemp {marks}/try.XXXXXX > /dev/null; /bin/sleep 2; {SPEED} > $out"
    file = nix_file(tmp_path, f'mk "again" "{script}" {{}}\n')
    line = member_line(reconnect_fleet, "again")
    proc = start_offload(reconnect_fleet, tmp_path, file, "-j0", "--builders", line, "--json")
    try:

        def building() -> bool:
            assert proc.poll() is None, proc.communicate()
            return any(marks.iterdir())

        wait_for(building, 60, "the build to start on the builder")
        (master,) = persistent_masters(control_dir(tmp_path / "state"))
        os.kill(master, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
        for mark in marks.iterdir():
            mark.unlink()
        marks.rmdir()
    assert proc.returncode == 0, err
    said = events(out)
    ends = [(e["machine"], e["status"]) for e in said if e["event"] == "job_finished"]
    assert ends == [("again", "lost"), ("again", "built")], out
    states = [(e["machine"], e["state"], e["message"]) for e in said if e["event"] == "machine"]
    assert [(m, s) for m, s, _ in states] == [("again", "down"), ("again", "up")], states
    assert states[1][2] == "reconnected after its connection was lost"
    assert "warning: builder 'again' is down: " in err  # the fall is said on stderr too
    # No backoff is kept for it: the next run uses it at once.
    backoff = tmp_path / "state" / "backoff.json"
    kept = json.loads(backoff.read_text()) if backoff.exists() else {}
    assert "again" not in kept.get("machines", kept), kept
    (now,) = persistent_masters(control_dir(tmp_path / "state"))  # the new one, kept
    assert now != master
