"""A speculative copy's loser is stopped by offload, not by the user: Nix's words as its session
is stopped there ("error: interrupted by the user") are no line of its build's log.

History says f1 and f2 take 20 s on fast, so the run puts them there and ``long`` on slow;
they take 3 s, and fast, idle, gets a second copy of ``long``, which ends first (it sleeps 24 s
divided by the builder's speed). The copy on slow is stopped then; its log ended with Nix's
"interrupted by the user", shown as ``slow: long> error: interrupted by the user``, and its
end was no event of the run's.
"""

from __future__ import annotations

import subprocess
import sys
import time

from offload.backoff import load_backoff
from offload.history.db import History
from offload.history.records import BuildRecord
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import events, offload, offload_env

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
    # Nor is slow, which offload stopped, taken for down by its "interrupted by the user".
    assert [e for e in seen if e["event"] == "machine" and e["state"] == "down"] == []
    assert load_backoff(state / "backoff.json", time.time()) == {}


# As GRAPH, but ``long`` is slow on fast: the copy on slow, started first, wins.
SLOW_ON_FAST = GRAPH.replace(
    '"/bin/sleep $((24 / s))"', '"if [ $s = 1 ]; then /bin/sleep 6; else /bin/sleep 60; fi"'
).replace("${wait}; echo > $out", "${wait}; echo done on $s; echo > $out")


def test_offload_log_shows_the_copy_that_built_not_a_later_one_that_lost(fleet, tmp_path):
    # The speculative copy started later than the one it lost to: offload log (the newest
    # log) showed the loser's, cut off, for an output another copy built.
    state = tmp_path / "state"
    state.mkdir()
    with History(state / "history.sqlite") as history:
        history.record(
            BuildRecord("hook-seed", f"/nix/store/x-{n}.drv", n, "fast", 0.0, 20.0, "built")
            for n in ("f1", "f2")
        )
    file = nix_file(tmp_path, SLOW_ON_FAST)
    done = offload(
        fleet, tmp_path, file, "-A", "top", "--builders", f"@{fleet.machines_file}",
        "--on", "fast,slow", "-j", "0", "--json", "--no-out-link", timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = events(done.stdout)
    ended = {
        (e["machine"], e["status"])
        for e in seen
        if e["event"] == "job_finished" and e["name"] == "long"
    }
    assert ended == {("slow", "built"), ("fast", "cancelled")}, ended  # the case this is about
    (drv,) = {e["drv_path"] for e in seen if e.get("name") == "long"}
    shown = subprocess.run(
        [sys.executable, "-m", "offload", "log", drv],
        env=offload_env(fleet, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["started", "done on 1"]
