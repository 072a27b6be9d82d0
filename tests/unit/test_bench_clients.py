"""The bench's clients section: the stamps its builds write, the peaks read from them, each
client's verdict, and the section of docs/BENCHMARKS.md rendered from recorded results."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from bench.clients import MemberPeak, _client_record, _Ended, client_graph, peaks, stamp_shell
from bench.report import render_markdown
from bench.report_clients import clients_lines, clients_rows
from bench.stamps import Watch


def test_peaks_count_overlapping_builds_per_member() -> None:
    lines = [
        "start fast 1.0",
        "start fast 2.0",
        "end fast 3.0",
        "start fast 3.0",  # at equal times an end frees its slot first: still two
        "start slow 1.5",
        "end slow 1.6",
        "start slow 1.7",
        "end slow 1.8",
        "end fast 4.0",
        "end fast 5.0",
    ]
    found, bad = peaks(lines)
    assert found == {"fast": MemberPeak(2, 3, 0), "slow": MemberPeak(1, 2, 0)}
    assert bad == 0


def test_peaks_keep_unfinished_builds_running_and_count_bad_lines() -> None:
    found, bad = peaks(["start m 1", "start m 2", "end m 3", "start m 4", "junk", "stop m 5", ""])
    # One of the first two was killed before its end: it still runs when the third starts (an
    # upper bound), and neither it nor the third has an end.
    assert found == {"m": MemberPeak(2, 3, 2)}
    assert bad == 3


def test_the_stamp_shell_writes_a_start_and_an_end_that_peaks_reads(tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    before, after = stamp_shell(stamps)
    for _ in range(2):
        subprocess.run(["/bin/sh", "-c", f"{before}\n{after}"], check=True)
    found, bad = peaks(stamps.read_text().splitlines())
    # Not on a fleet member: no member file in this host's /etc/nix.
    assert found == {"local": MemberPeak(1, 2, 0)}
    assert bad == 0


def test_builds_are_paired_by_id_and_a_stopped_one_ends_when_its_process_went() -> None:
    lines = ["start m 1 10", "start m 2 11", "end m 3 11", "start m 4 12", "end m 5 12"]
    # Build 10 wrote no end: without knowing when it went, it runs to the last stamp.
    assert peaks(lines)[0] == {"m": MemberPeak(2, 3, 1, 0)}
    # Its process was seen gone at 3.5, before build 12 started: never more than two.
    assert peaks(lines, {"10": 3.5})[0] == {"m": MemberPeak(2, 3, 0, 1)}
    assert peaks(["start m 1 10", "start m 2 11", "start m 3 12"], {"10": 2.5})[0] == {
        "m": MemberPeak(2, 3, 2, 1)
    }


def test_the_watch_notes_a_build_killed_before_its_end(tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    before, after = stamp_shell(stamps)
    with Watch(stamps) as watch:
        subprocess.run(["/bin/sh", "-c", f"{before}\n{after}"], check=True)
        # A build that is stopped: it stamps its start, then waits until it is killed.
        stopped = subprocess.Popen(["/bin/sh", "-c", f"{before}\nexec sleep 60"])
        deadline = time.monotonic() + 10
        while f" {stopped.pid}\n" not in stamps.read_text():  # its start stamp, then kill it
            assert time.monotonic() < deadline, "the build never stamped its start"
        stopped.kill()
        stopped.wait()
    found, bad = peaks(stamps.read_text().splitlines(), watch.gone)
    assert list(watch.gone) == [str(stopped.pid)]
    assert found == {"local": MemberPeak(1, 2, 0, 1)}
    assert bad == 0


def test_the_watch_wakes_when_a_stopped_build_exits_not_at_its_next_look(tmp_path: Path) -> None:
    # A slot a stopped build frees is taken within milliseconds when a client waits for it: an
    # end known only at the watch's next look made the two overlap. The watch here looks at the
    # stamps file once in 60 s, so only the exit itself can wake it before the deadline.
    stamps = tmp_path / "stamps"
    before, _ = stamp_shell(stamps)
    stopped = subprocess.Popen(["/bin/sh", "-c", f"{before}\nexec sleep 60"])
    deadline = time.monotonic() + 10
    while f" {stopped.pid}\n" not in (stamps.read_text() if stamps.exists() else ""):
        assert time.monotonic() < deadline, "the build never stamped its start"
    with Watch(stamps, poll=60) as watch:
        while not watch._pidfds:  # the watch has read the start and follows its process
            assert time.monotonic() < deadline, "the watch never read the start"
        killed = time.time()
        stopped.kill()
        stopped.wait()
        while str(stopped.pid) not in watch.gone:
            assert time.monotonic() < deadline, "the watch did not wake when the build exited"
        noted = watch.gone[str(stopped.pid)]
        assert killed <= noted <= time.time()
    assert watch.late == set()


def test_a_build_gone_before_the_watch_read_its_start_is_late(tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    before, after = stamp_shell(stamps)
    subprocess.run(["/bin/sh", "-c", f"{before}\nexit 1"], check=False)  # no end stamp
    subprocess.run(["/bin/sh", "-c", f"{before}\n{after}"], check=True)
    with Watch(stamps) as watch:
        pass
    ids = [line.split()[3] for line in stamps.read_text().splitlines()]
    assert len(ids) == 3
    # The first's time is only when the watch found it gone; the second ended with its stamp.
    assert list(watch.gone) == [ids[0]]
    assert watch.late == {ids[0]}


def test_a_build_exited_but_not_reaped_when_its_start_is_read_is_late(tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    before, _ = stamp_shell(stamps)
    zombie = subprocess.Popen(["/bin/sh", "-c", f"{before}\nexit 1"])  # no end stamp
    deadline = time.monotonic() + 10
    while Path(f"/proc/{zombie.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the build never exited"
    try:
        with Watch(stamps) as watch:
            pass
    finally:
        zombie.wait()
    # Its pidfd opened (not reaped) but it had ended: its time is only when it was seen.
    assert watch.late == {str(zombie.pid)}
    assert list(watch.gone) == [str(zombie.pid)]


def test_a_watch_that_failed_says_so_rather_than_leave_its_ends_out(tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    stamps.mkdir()  # cannot be read: the watch's thread fails
    watch = Watch(stamps)
    with pytest.raises(RuntimeError, match="the stamps watch failed: IsADirectoryError"), watch:
        pass


def test_every_client_has_its_own_graph() -> None:
    graphs = [client_graph(i, 16, 1.0) for i in range(3)]
    names = [{node.name for node in g.nodes} for g in graphs]
    assert [len(n) for n in names] == [16, 16, 16]
    assert not (names[0] & names[1])
    assert not (names[1] & names[2])
    assert graphs[0].total_work() != graphs[1].total_work()


def _offload_out(outputs: list[str]) -> str:
    built = {"event": "job_finished", "status": "built", "drv_path": "/d.drv", "machine": "fast"}
    return json.dumps(built) + "\n" + json.dumps({"event": "run_finished", "outputs": outputs})


def test_a_client_is_ok_only_with_every_output_here(tmp_path: Path) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    outs[0].write_text("")
    stdout = _offload_out([str(p) for p in outs])
    missing = _client_record(0, "offload", _Ended(0, 1.5, stdout, ""), 2)
    assert (missing["status"], missing["builds"]) == ("failed", {"fast": 1})
    assert missing["error"] == "exit 0 but 1 of 2 outputs are in the local store"
    outs[1].write_text("")
    ok = _client_record(1, "offload", _Ended(0, 1.5, stdout, ""), 2)
    assert (ok["client"], ok["status"], ok["error"], ok["wall_s"]) == (1, "ok", None, 1.5)
    nix = _client_record(0, "nix", _Ended(1, 2.0, "", "error: boom\n"), 2)
    assert (nix["status"], nix["error"]) == ("failed", "exit 1: error: boom")
    stopped = _client_record(0, "nix", _Ended(None, 180.0, "", ""), 2)
    assert (stopped["status"], stopped["error"]) == ("timeout", "stopped after 180 s")


def _run(count: int, tool: str, rep: int, walls: list[float], peak: dict[str, int]) -> Any:
    per_client = [
        {"client": i, "status": "ok", "wall_s": w, "error": None} for i, w in enumerate(walls)
    ]
    return {
        "clients": count,
        "tool": tool,
        "rep": rep,
        "status": "ok",
        "wall_s": max(walls),
        "per_client": per_client,
        "peak": peak,
    }


SECTION: dict[str, Any] = {
    "graph": "layered, 16 nodes",
    "slots": {"fast": 2, "slow": 2},
    "runs": [
        _run(2, "nix", 0, [10.0, 12.0], {"fast": 4, "slow": 1}),
        _run(2, "offload", 0, [8.0, 9.0], {"fast": 2, "slow": 2}),
        _run(2, "nix", 1, [11.0, 13.0], {"fast": 2}),
        _run(2, "offload", 1, [9.0, 10.0], {"fast": 2, "slow": 1}),
    ],
}


def test_rows_give_median_walls_per_client_and_the_peak_over_every_run() -> None:
    nix, offload = clients_rows(SECTION)
    assert (nix.tool, nix.ok, nix.client_walls) == ("nix", (2, 2), (10.5, 12.5))
    assert nix.peak == {"fast": 4, "slow": 1}
    assert nix.over == 1
    assert nix.slowest is not None
    assert (nix.slowest.low, nix.slowest.high) == (12.0, 13.0)
    assert (offload.peak, offload.over) == ({"fast": 2, "slow": 2}, 0)


def test_the_report_says_met_when_offload_stays_within_every_members_slots() -> None:
    lines = clients_lines({"clients": SECTION})
    assert "| 2 | Nix's hook | 2/2 | 10.5, 12.5 | 12.5 (12.0-13.0) | fast 4/2, slow 1/2 |" in lines
    assert "| 2 | offload | 2/2 | 8.5, 9.5 | 9.5 (9.0-10.0) | fast 2/2, slow 2/2 |" in lines
    assert any(line.endswith("Status: met.") for line in lines)
    assert "- Nix's hook, 2 clients: a member ran more builds than its slots in 1 of 2 runs." in (
        lines
    )


def test_the_report_says_not_yet_for_an_oversubscribed_member_or_a_failed_client() -> None:
    runs = [json.loads(json.dumps(r)) for r in SECTION["runs"]]
    runs[1]["peak"]["slow"] = 3
    runs[3]["status"] = "failed"
    runs[3]["per_client"][1].update(status="timeout", error="stopped after 180 s")
    lines = clients_lines({"clients": {**SECTION, "runs": runs}})
    (status,) = [line for line in lines if "Status:" in line]
    assert status.endswith(
        "Status: NOT YET: 2 clients: a member ran more builds than its slots in 1 of 2 runs; "
        "2 clients: 1 of 2 runs failed."
    )
    assert "- offload, 2 clients, rep 2, client 2: timeout: stopped after 180 s" in lines
    # A failed client's wall is left out of its median.
    assert "| 2 | offload | 1/2 | 8.5, 9.0 | 9.0 | fast 2/2, slow 3/2 |" in lines


def test_the_report_says_how_a_stopped_builds_end_was_known() -> None:
    runs = [json.loads(json.dumps(r)) for r in SECTION["runs"]]
    runs[1]["stopped"] = {"slow": 2}
    runs[3]["stopped"] = {"fast": 1}
    older = clients_lines({"clients": {**SECTION, "runs": runs}})
    # Results recorded before the bench waited on each build's process say it as it was then.
    assert any(
        line.startswith("- 3 builds were stopped") and line.endswith("(polled every 0.05 s).")
        for line in older
    )
    for run, late in zip(runs, (0, 1, 0, 0), strict=True):
        run["stopped_late"] = late
    (stopped,) = [
        line
        for line in clients_lines({"clients": {**SECTION, "runs": runs}})
        if line.startswith("- 3 builds were stopped")
    ]
    assert stopped.endswith(
        "each counts as running until its process exited (the bench waits on it); 1 of them "
        "ended before the bench read their start stamp and count until it found them gone."
    )


def test_results_without_the_section_render_n_a() -> None:
    assert clients_lines({})[-1] == "n/a: this results file has no `clients` section."
    doc = render_markdown({"machine": {}, "options": {}}, "r.json", {})
    assert "## Many clients, one fleet\n\nn/a: this results file has no `clients` section." in doc
