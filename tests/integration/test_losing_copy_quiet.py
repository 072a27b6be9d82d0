"""A speculative copy's loser is stopped by offload, not by the user: Nix's words as its session
is stopped there ("error: interrupted by the user") are no line of its build's log.

History says f1 and f2 take 20 s on fast, so the run puts them there and ``long`` on slow;
they take 3 s, and fast, idle, gets a second copy of ``long``, which ends first (it sleeps 24 s
divided by the builder's speed). The copy on slow is stopped then; its log ended with Nix's
"interrupted by the user", shown as ``slow: long> error: interrupted by the user``, and its
end was no event of the run's.
"""

from __future__ import annotations

from offload.history.db import History
from offload.history.records import BuildRecord
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import events, offload

# The member's speed, from its speed file: 6 s on fast, 24 s on slow.
GRAPH = """rec {
  wait = "/bin/sleep $((24 / s))";
  f1 = mk "f1" "/bin/sleep 3; echo > $out" {};
  f2 = mk "f2" "/bin/sleep 3; echo > $out" {};
  long = mk "long" "s=$(/bin/cat /etc/nix/offload-speed); echo started; ${wait}; echo > $out" {};
  top = mk "top" "echo $f1 $f2 $long > $out" { inherit f1 f2 long; };
}
"""


def test_the_losing_copy_says_nothing_of_nix_being_stopped(fleet, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    with History(state / "history.sqlite") as history:  # what earlier runs would have taught
        history.record(
            BuildRecord("hook-seed", f"/nix/store/x-{n}.drv", n, "fast", 0.0, 20.0, "built")
            for n in ("f1", "f2")
        )
    file = nix_file(tmp_path, GRAPH)
    done = offload(
        fleet, tmp_path, file, "-A", "top", "--builders", f"@{fleet.machines_file}",
        "--on", "fast,slow", "-j", "0", "--json", "-L",
        "--no-out-link", timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = events(done.stdout)
    copies = {
        (e["machine"], e["speculative"])
        for e in seen
        if e["event"] == "job_phase" and e["name"] == "long" and e["phase"] == "building"
    }
    assert copies == {("slow", False), ("fast", True)}, copies  # the case this is about
    # The loser's copy ends with an event of its own, during the run: it had none.
    ended = [
        (e["machine"], e["status"], e["error"])
        for e in seen[: [e["event"] for e in seen].index("run_finished")]
        if e["event"] == "job_finished" and e["name"] == "long"
    ]
    assert ("fast", "built", None) in ended, ended
    assert ("slow", "cancelled", "stopped: another copy was built first") in ended, ended
    said = [e["line"] for e in seen if e["event"] == "job_log" and e["machine"] == "slow"]
    assert said == ["started"], said
    assert "interrupted" not in done.stderr
