"""A build whose own last log lines say "No space left on device" (a test filling its own
tmpfs, coreutils' /dev/full check) fails as itself on an ssh-ng:// builder: Nix's daemon quotes
those lines in its answer ("> ..."), which were read as the builder's disk being full: the
builder backed off and the build tried elsewhere."""

from __future__ import annotations

import json
import time

from offload.backoff import load_backoff
from offload.fleet import Fleet, MemberSpec
from tests.helpers.fleets import member_line, private_fleet_fixture
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import offload

daemon_fleet = private_fleet_fixture(
    [MemberSpec.parse("dfull:1:1:daemon")], "ofdf", doc="One member reached as ssh-ng://."
)


def test_a_build_that_prints_enospc_fails_as_itself_and_the_builder_stays(
    daemon_fleet: Fleet, tmp_path
) -> None:
    words = "echo 'cp: error writing /build/t: No space left on device'; exit 1"
    file = nix_file(tmp_path, f'{{ full = mk "fullwords" "{words}" {{}}; }}\n')
    line = member_line(daemon_fleet, "dfull")
    assert line.startswith("ssh-ng://")
    done = offload(
        daemon_fleet, tmp_path, file, "-A", "full", "-j0", "--builders", line, "--json",
    )  # fmt: skip
    assert done.returncode == 100, done.stderr
    events = [json.loads(row) for row in done.stdout.splitlines()]
    ended = [(e["machine"], e["status"]) for e in events if e["event"] == "job_finished"]
    assert ended == [("dfull", "failed")]  # once, as itself: not lost
    assert not [e for e in events if e["event"] == "machine" and e["state"] == "down"]
    assert "disk is full" not in done.stderr
    assert load_backoff(tmp_path / "state" / "backoff.json", time.time()) == {}
