"""A run left with no machine mid-run (``-j 0``, its one builder killed under a build) ends
with one error line (its last progress line says "incomplete") after its summary and report
page, as a failed run's, and what it built is kept: the run is in ``offload history`` as
"incomplete", its built derivation among its builds (the next run's estimates), while the
builder's failure is not kept as backoff (the next run would only retry it at once)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

from offload.backoff import load_backoff
from offload.fleet import MemberSpec
from tests.helpers import processes
from tests.helpers.fleets import member_processes, private_fleet_fixture
from tests.helpers.nix_files import marker_script, nix_file
from tests.helpers.offload_run import offload_argv, offload_env, wait_for_marker

dying_fleet = private_fleet_fixture(
    [MemberSpec("doomed", 1, 1)], "ofsr", doc="One member the test kills mid-build."
)


def test_a_run_stranded_mid_run_is_kept_in_history_but_not_in_backoff(dying_fleet, tmp_path):
    marker = tmp_path / "top-running"
    wait = "if [ -e /etc/nix/offload-speed ]; then /bin/sleep 600; fi; echo > $out"
    file = nix_file(
        tmp_path,
        'rec { dep = mk "dep" "echo dep > $out" {};\n'
        f'  top = mk "top" "{marker_script(marker, wait)}" {{ inherit dep; }}; }}\n',
    )
    env = offload_env(dying_fleet, tmp_path)
    page = tmp_path / "report.html"
    argv = offload_argv(file, "-A", "top", "-j0", "--no-out-link", "--report", str(page))
    proc = processes.start(
        [*argv, "--builders", f"@{dying_fleet.machines_file}"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_marker(marker, proc, 60)
        member = dying_fleet.member("doomed")
        while alive := member_processes(member):  # sshd, its sessions, the build: the machine
            for pid, _ in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        processes.stop(proc)
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "no machine can take them" in errors[0]
    assert "; -j N builds locally; " in err  # its hint, from the pool: -j 0 left this host out
    assert "Traceback" not in err
    # Its last line says how it ended as history does: nobody interrupted it.
    ended = [line for line in err.splitlines() if "run: " in line and " built, " in line]
    assert len(ended) == 1, err
    # dep was built, on doomed, and its output went with it: to be made again, not built for
    # the run ("1 built, 1 left", then "2 derivation(s) could not be built").
    assert "run: incomplete: 0 built, 0 failed, 0 skipped, 2 left in " in ended[0], err
    assert "2 derivation(s) could not be built" in errors[0]
    # Its summary, as a failed run's: what each machine did, and the machine that fell; then
    # its report page, from history, as with any run that ended.
    table = err[err.index("machine  built") : err.index("error: ")]
    assert re.search(r"^doomed +1 +0 +0 +1 ", table, re.MULTILINE), err
    assert "machines down (1):\n  doomed: doomed closed the connection" in table, err
    assert "offload: report of run " in err, err
    assert "incomplete" in page.read_text(), err
    listed = subprocess.run(
        [sys.executable, "-m", "offload", "history", "--json", "--last", "1", "--drv", "dep"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    kept = json.loads(listed.stdout)
    (run,) = kept["runs"]
    assert run["outcome"] == "incomplete"
    assert [(b["machine"], b["status"]) for b in kept["builds"]] == [("doomed", "built")]
    assert load_backoff(tmp_path / "state" / "backoff.json", time.time()) == {}
