"""`offload build --json` says where its fixed costs ended: one ``timing`` event (issue 18).

The marks are checked against what else the run tells and the outside clock: in the order the
run passes them, after the process started, before the first build's mark, after the last
build's end, and before the process exited.
"""

from __future__ import annotations

import time

from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import events, offload

ORDER = ["imported", "settings", "evaluated", "answered", "graph", "planned", "closed"]


def test_the_timing_event_marks_each_fixed_cost_in_order(fleet, tmp_path):
    file = nix_file(
        tmp_path,
        """rec {
  a = mk "a" "echo a-${salt} > $out" {};
  b = mk "b" "echo b-${salt} > $out" {};
  top = mk "top" "/bin/cat $a $b > $out" { inherit a b; };
}
""",
    )
    began = time.time()
    done = offload(
        fleet, tmp_path, file, "-A", "top", "--builders", f"@{fleet.machines_file}", "--json"
    )
    exited = time.time()
    assert done.returncode == 0, done.stderr
    seen = events(done.stdout)
    (timing,) = [e for e in seen if e["event"] == "timing"]
    names = [name for name, _ in timing["marks"]]
    assert names == ORDER
    at = dict(timing["marks"])
    times = [at[name] for name in ORDER]
    assert times == sorted(times)
    assert began <= at["imported"]
    assert at["closed"] <= timing["time"] <= exited
    # The run starts once planned; builds happen between that and the sessions closing.
    (started,) = [e for e in seen if e["event"] == "run_started"]
    assert at["planned"] <= started["time"]
    phases = [e["time"] for e in seen if e["event"] == "job_phase"]
    ends = [e["finished"] for e in seen if e["event"] == "job_finished"]
    assert len(ends) == 3
    assert at["planned"] <= min(phases)
    assert max(ends) <= at["closed"]
    # Nothing follows it but what the command does after the run (history, links).
    assert seen[-1] is timing
