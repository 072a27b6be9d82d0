"""History and the run report after real runs on the local fleet; the report opened in a real
headless browser (tests/helpers/browser.py).

The report test keeps its screenshot as an artefact: ``report.png`` in the test's tmp_path
(pytest prints the base directory with ``--basetemp``; by default
``/tmp/pytest-of-$USER/pytest-N/test_the_report_of_a_fleet_run0/report.png``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from offload.history.db import History
from offload.history.records import BuildRecord, PhaseRecord, RunRecord
from offload.report import write_report
from tests.helpers.browser import Elements, inner, open_page, overflow
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import events, finished, offload, offload_env

# Sleeps WORK / the builder's speed, as the fleet's derivations do (offload.dagfile).
SLEEP = (
    "/bin/sleep $(/usr/bin/awk -v w=WORK"
    " -v s=$(/bin/cat /etc/nix/offload-speed 2>/dev/null || echo 1) 'BEGIN { print w / s }')"
)
GRAPH = (
    """rec {
  left = mk "left" "LEFT; echo left-${salt} > $out" {};
  right = mk "right" "RIGHT; echo right-${salt} > $out" {};
  solo = mk "solo" "SOLO; echo solo-${salt} > $out" {};
  top = mk "top" "/bin/cat $left $right $solo > $out" { inherit left right solo; };
}
""".replace("LEFT", SLEEP.replace("WORK", "2"))
    .replace("RIGHT", SLEEP.replace("WORK", "1.2"))
    .replace("SOLO", SLEEP.replace("WORK", "0.8"))
)


def _history(fleet, tmp_path: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "offload", "history", "--json", *args],
        env=offload_env(fleet, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown


def test_history_after_fleet_runs_names_the_machines_and_phases(fleet, tmp_path):
    file = nix_file(tmp_path, GRAPH)
    machines = f"@{fleet.machines_file}"
    runs = []
    for on in ("fast", "slow"):  # the same names on two machines: each one's speed is measured
        done = offload(fleet, tmp_path, file, "-A", "top", "--builders", machines, "--on", on,
                       "-j", "0", "--json", "--no-out-link")  # fmt: skip
        assert done.returncode == 0, done.stderr
        (started,) = (e for e in events(done.stdout) if e["event"] == "run_started")
        runs.append((started["run_id"], {(e["name"], e["machine"]) for e in finished(done.stdout)}))
        file = nix_file(tmp_path, GRAPH)  # a fresh salt: built again, under the same names
    for run_id, built in runs:
        shown = _history(fleet, tmp_path, "--run", run_id)
        (run,) = shown["runs"]
        assert run["outcome"] == "ok"
        assert run["builds"] == {"built": 4}
        assert 0 < run["lower_bound"] < run["wall"]
        assert {(b["name"], b["machine"]) for b in shown["builds"]} == built
        for build in shown["builds"]:
            phases = [p["phase"] for p in build["phases"]]
            assert phases[0] == "waiting"
            assert "building" in phases
            assert build["phase_seconds"]["building"] > 0
        (top,) = (b for b in shown["builds"] if b["name"] == "top")
        # top's inputs were already on its builder; only top, the one asked for, comes home.
        assert [p["phase"] for p in top["phases"]][-1] == "fetching"
        assert top["bytes_received"] > 0
    (fast,) = (m for m in _history(fleet, tmp_path)["machines"] if m["machine"] == "fast")
    assert (fast["builds"], fast["failures"], fast["speed_factor"]) == (4, 0, 4)
    assert fast["measured_speed"] > 1  # slow's times predict fast builds quicker than slow
    left = _history(fleet, tmp_path, "--drv", "left")
    assert {b["machine"] for b in left["builds"]} == {"fast", "slow"}
    assert set(left["estimates"]) == {"left"}


def test_the_report_of_a_fleet_run_shows_lanes_bars_and_the_critical_path(fleet, tmp_path):
    file = nix_file(tmp_path, GRAPH)
    page = tmp_path / "report.html"  # named relative to the run's directory, tmp_path
    done = offload(fleet, tmp_path, file, "-A", "top", "--builders", f"@{fleet.machines_file}",
                   "-j", "0", "--json", "--report", "report.html")  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Where the page went was not said (stderr, or --json): now one line, and the last event.
    run_id = next(e["run_id"] for e in events(done.stdout) if e["event"] == "run_started")
    said = [line for line in done.stderr.splitlines() if "written to" in line]
    assert len(said) == 1, done.stderr
    assert re.fullmatch(
        rf"offload: report of run {run_id} \([0-9]+ copies on [0-9]+ machines\)"
        r" written to report\.html",
        said[0],
    )
    last = events(done.stdout)[-1]
    assert (last["event"], last["path"]) == ("report", str(page))
    built = {e["name"]: e["machine"] for e in finished(done.stdout) if e["status"] == "built"}
    assert set(built) == {"left", "right", "solo", "top"}
    text = page.read_text()
    assert "src=" not in text
    assert "href=" not in text  # nothing to fetch: one file
    dom = open_page(page, tmp_path, screenshot=tmp_path / "report.png")
    found = Elements(dom)
    assert inner(dom, "ul", "script-errors").strip() == ""
    lanes = {lane["data-machine"] for lane in found.having("g", "lane")}
    # A lane per machine that ran a copy: the builders, and any that ran a speculative one.
    ran = {e["machine"] for e in events(done.stdout) if e["event"] == "job_phase"}
    assert lanes == ran
    assert set(built.values()) <= lanes
    bars = found.having("g", "bar")
    assert found.having("body")[0]["data-ready"] == str(len(bars))  # the page's script ran
    assert len(bars) >= len(built)
    names = {bar["data-tip"].split("\n")[0] for bar in bars}
    assert set(built) <= names
    critical = {bar["data-tip"].split("\n")[0] for bar in found.having("g", "critical")}
    assert "top" in critical  # the last build ends the critical path...
    assert critical & {"left", "right", "solo"}  # ...after one of its inputs
    phases = {r["data-phase"] for r in found.having("rect", "phase")}
    assert {"waiting", "building", "fetching"} <= phases
    assert overflow(page, tmp_path, 1200) == 0  # it scrolled sideways, by 18 px


def test_a_page_of_long_names_fits_a_narrow_window(tmp_path):
    # The timeline was 1190 px whatever the window: a 1200 px one scrolled sideways.
    name = "python3.11-" + "very-long-package-name-" * 6 + "1.2.3"
    machine = "builder-eu-west-1.example.org:2222-" + "x" * 30
    phases = (PhaseRecord("sending", 0.5, 1.0), PhaseRecord("building", 1.0, 2.0))
    builds = [
        BuildRecord("", f"/nix/store/{'a' * 32}-{name}.drv", name, machine, 1, 2, "failed",
                    bytes_sent=10**9, name=name, error="x" * 300, phases=phases),
        BuildRecord("", f"/nix/store/{'b' * 32}-{name}.drv", name, "", 1, 2, "skipped",
                    name=name, error=f"it needs {name}"),
    ]  # fmt: skip
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(RunRecord("r1", 0.0, 3.0, (name,) * 3, "failed", (), None, None), builds)
        write_report(history, "r1", tmp_path / "long.html")
    for width in (1200, 800):
        assert overflow(tmp_path / "long.html", tmp_path, width) == 0, width


def test_hostile_names_stay_text_in_the_browser(tmp_path):
    hostile = '<script>document.title="pwned"</script><img src=x onerror="document.title=1">'
    phases = (PhaseRecord("building", 1.0, 2.0),)
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(
            RunRecord("r1", 0.0, 3.0, (hostile,), "ok", (), None, None),
            [
                BuildRecord(
                    "", "/x.drv", hostile, hostile, 1, 2, "built", name=hostile, phases=phases
                )
            ],
        )
        write_report(history, "r1", tmp_path / "evil.html")
    dom = open_page(tmp_path / "evil.html", tmp_path)
    assert inner(dom, "title") == "offload run r1"
    found = Elements(dom)
    assert found.having("img") == []
    assert len(found.having("script")) == 2
    assert inner(dom, "ul", "script-errors").strip() == ""
    (bar,) = found.having("g", "bar")
    assert bar["data-tip"].split("\n")[0] == hostile
