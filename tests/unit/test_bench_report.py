"""The benchmark's statistics, verdicts, tables and plots, on small recorded results."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from bench.measure import (
    StoreSnapshot,
    list_store,
    parse_nix_builds,
    parse_offload_events,
    parse_ssh_transferred,
    received_bytes,
    store_name,
)
from bench.report import (
    TARGETS,
    graph_series,
    paired_ratios,
    render_markdown,
    spread,
    summarize_copy,
    summarize_graph,
    summarize_overhead,
    summarize_planning,
    svg_plot,
    walls,
    write_report,
)
from bench.report_builds import overhead_targets
from bench.report_hook import hook_rows, hook_section


def _run(tool: str, rep: int, wall: float, status: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"tool": tool, "rep": rep, "wall_s": wall, "status": status, **extra}


# Recorded from a quick run on the local fleet (40-node layered graph, bound 2.88 s), plus two
# more repetitions so medians and ranges have something to do.
RESULTS: dict[str, Any] = {
    "version": 1,
    "command": "make bench",
    "started": "2026-11-21 20:55 UTC",
    "duration_s": 88.2,
    "options": {"reps": 3},
    "machine": {
        "cpu_model": "AMD EPYC",
        "cores": 2,
        "nix_version": "2.8.0",
        "git_commit": "1088f3f9",
    },
    "graphs": [
        {
            "shape": "layered",
            "nodes": 40,
            "seed": 1,
            "scale": 1.0,
            "critical_path": 8.8,
            "total_work": 46.1,
            "lower_bound": 2.88,
            "planned_s": 3.6,
            "runs": [
                _run("nix", 0, 31.36, builds={"fast": 40}, store_sent=0, bytes_received=11989),
                _run("offload", 0, 10.09, "failed", error="exit 1: KeyError: <Task ...>"),
                _run("nix", 1, 29.0, builds={"fast": 38, "medium": 2}),
                _run("offload", 1, 3.5, builds={"fast": 20, "local": 20}),
                _run("nix", 2, 33.0, builds={"fast": 40}),
                _run("offload", 2, 3.3, builds={"fast": 22, "local": 18}),
            ],
        },
        {
            "shape": "chain",
            "nodes": 40,
            "seed": 2,
            "scale": 1.0,
            "critical_path": 27.5,
            "total_work": 66.3,
            "lower_bound": 10.0,
            "runs": [
                _run("nix", 0, 30.0),
                _run("offload", 0, 12.0),
                _run("nix", 1, 36.0),
                _run("offload", 1, 12.4),
            ],
        },
    ],
    "overhead": {
        "derivations": 20,
        "runs": [
            _run("nix", 0, 16.71, builds={"fast": 20}),
            _run("offload", 0, 3.73, builds={"fast": 3, "medium": 15, "slow": 2}),
            _run("local", 0, 0.76, builds={"local": 20}),
        ],
    },
    "copy": {
        "member": "fast",
        "paths": 4,
        "bytes": 20 << 20,
        "runs": [
            _run("nix", 0, 1.021, compress=False, wire_sent=20990020),
            _run("offload", 0, 1.352, compress=False, wire_sent=20990292),
            _run("nix", 0, 1.394, compress=True, wire_sent=11523172),
            _run("offload", 0, 3.1, compress=True, wire_sent=11523780),
        ],
    },
    "planning": {
        "machines": 100,
        "runs": [
            {"nodes": 1000, "status": "ok", "seconds": 0.034, "peak_bytes": 680888},
            {"nodes": 50000, "status": "ok", "seconds": 1.95, "peak_bytes": 32092512},
        ],
    },
}


def test_spread_is_median_and_range_and_none_for_nothing():
    odd = spread([3.0, 1.0, 2.0])
    assert odd is not None
    assert (odd.median, odd.low, odd.high, odd.count) == (2.0, 1.0, 3.0, 3)
    even = spread([4.0, 1.0, 2.0, 10.0])
    assert even is not None
    assert even.median == 3.0
    assert even.text(1) == "3.0 (1.0-10.0)"
    single = spread([2.5])
    assert single is not None
    assert single.text(2) == "2.50"
    assert spread([]) is None


def test_walls_keep_only_successful_runs_of_the_tool():
    runs = RESULTS["graphs"][0]["runs"]
    assert walls(runs, "offload") == [3.5, 3.3]
    assert walls(runs, "nix") == [31.36, 29.0, 33.0]


def test_paired_ratios_pair_repetitions_where_both_succeeded():
    runs = RESULTS["graphs"][0]["runs"]
    # Repetition 0 failed for offload, so only repetitions 1 and 2 pair up.
    assert paired_ratios(runs, "nix", "offload") == pytest.approx([29.0 / 3.5, 33.0 / 3.3])


def test_a_graph_with_a_failed_offload_run_is_not_yet_meeting_its_target():
    summary = summarize_graph(RESULTS["graphs"][0])
    assert summary.offload_ok == (2, 3)
    assert summary.offload_ratio is not None
    assert summary.offload_ratio.median == pytest.approx((3.5 / 2.88 + 3.3 / 2.88) / 2)
    assert summary.nix_ratio is not None
    assert summary.nix_ratio.low == pytest.approx(29.0 / 2.88)
    assert not summary.meets
    assert "NOT YET" in summary.verdict
    assert "failed in 1 of 3" in summary.verdict


def test_a_graph_meets_its_target_only_within_bound_ratio_and_speedup():
    graph = copy.deepcopy(RESULTS["graphs"][0])
    graph["runs"][1]["status"] = "ok"
    graph["runs"][1]["wall_s"] = 3.4
    summary = summarize_graph(graph)
    assert summary.meets
    assert summary.verdict == "meets target"
    # The same walls against a larger Nix time but a tighter bound: over 1.25x the bound.
    graph["lower_bound"] = 2.0
    slow = summarize_graph(graph)
    assert not slow.meets
    assert f"> {TARGETS.graph_lb_ratio:g}x" in slow.verdict


def test_a_graph_close_to_its_bound_but_not_much_faster_than_nix_is_not_yet():
    summary = summarize_graph(RESULTS["graphs"][1])
    assert summary.offload_ratio is not None
    assert summary.offload_ratio.median <= TARGETS.graph_lb_ratio
    assert summary.speedup is not None
    assert summary.speedup.median == pytest.approx((30.0 / 12.0 + 36.0 / 12.4) / 2)
    assert summary.speedup.median >= TARGETS.graph_speedup
    assert summary.meets
    graph = copy.deepcopy(RESULTS["graphs"][1])
    for run in graph["runs"]:
        if run["tool"] == "nix":
            run["wall_s"] = 15.0
    slower = summarize_graph(graph)
    assert not slower.meets
    assert "speedup over Nix" in slower.verdict


def test_all_offload_runs_failing_is_said_plainly():
    graph = copy.deepcopy(RESULTS["graphs"][0])
    for run in graph["runs"]:
        if run["tool"] == "offload":
            run["status"] = "timeout"
    summary = summarize_graph(graph)
    assert summary.offload is None
    assert summary.speedup is None
    assert "offload failed in all 3 runs" in summary.verdict


def test_overhead_needs_twenty_five_times_nix_speed():
    summary = summarize_overhead(RESULTS["overhead"])
    assert summary.speedup is not None
    assert summary.speedup.median == pytest.approx(16.71 / 3.73)
    assert not summary.meets
    assert "< 25x" in summary.verdict
    fast = copy.deepcopy(RESULTS["overhead"])
    fast["runs"][1]["wall_s"] = 0.7  # 23.9x
    assert not summarize_overhead(fast).meets
    fast["runs"][1]["wall_s"] = 0.6  # 27.9x
    assert summarize_overhead(fast).meets


def test_the_trivial_target_is_judged_over_new_connections_too():
    # Over kept connections (offload's second run on) 33x met it; a first run, over new ones,
    # made 24.2x, which the targets table did not say.
    fast = copy.deepcopy(RESULTS["overhead"])
    fast["runs"][1]["wall_s"] = 0.6  # 27.9x over kept connections
    label = "20 trivial (-j 0), new connections"
    cold = {"cases": {label: [{"status": "ok", "wall_s": 0.8}, {"status": "ok", "wall_s": 0.9}]}}
    (row,) = overhead_targets({"overhead": fast, "fixed_costs": cold})
    assert "27.85 over kept connections; 19.66 over new ones" in row
    assert row.endswith("| meets target over kept connections; NOT met over new ones |")
    cold["cases"][label] = [{"status": "ok", "wall_s": 0.6}]
    (row,) = overhead_targets({"overhead": fast, "fixed_costs": cold})
    assert row.endswith("| meets target |")
    (row,) = overhead_targets({"overhead": fast})  # not measured: the kept ones alone
    assert row.endswith("| Nix/offload 27.85 | meets target |")


def test_copy_compares_offload_with_nix_copy_closure_per_compression():
    summary = summarize_copy(RESULTS["copy"])
    plain, compressed = summary.variants
    assert not plain.compress
    assert plain.ratio is not None
    assert plain.ratio.median == pytest.approx(1.352 / 1.021)
    assert compressed.ratio is not None
    assert compressed.ratio.median == pytest.approx(3.1 / 1.394)
    assert compressed.nix_wire is not None
    assert compressed.nix_wire.median == 11523172
    assert not summary.meets
    assert "compressed: offload/nix-copy-closure" in summary.verdict
    assert "uncompressed: offload/nix-copy-closure 1.32" in summary.verdict  # > 1.0x
    level = copy.deepcopy(RESULTS["copy"])
    level["runs"][1]["wall_s"] = 1.021  # as fast as nix-copy-closure: met
    assert "uncompressed" not in summarize_copy(level).verdict


def test_planning_target_is_judged_on_the_fifty_thousand_node_row():
    assert summarize_planning(RESULTS["planning"]).meets
    slow = copy.deepcopy(RESULTS["planning"])
    slow["runs"][1]["seconds"] = 6.0
    assert "6.00 s >= 2 s" in summarize_planning(slow).verdict
    moves = copy.deepcopy(RESULTS["planning"])
    moves["runs"][1]["input_moves_seconds"] = 2.5  # what offload build spends is judged
    assert "2.50 s >= 2 s" in summarize_planning(moves).verdict
    moves["runs"][1]["compiled_moves_seconds"] = 1.5  # offload as the Nix package builds it
    assert summarize_planning(moves).meets
    moves["runs"][1]["compiled_moves_seconds"] = 2.25
    assert "2.25 s >= 2 s" in summarize_planning(moves).verdict
    big = copy.deepcopy(RESULTS["planning"])
    big["runs"][1]["peak_bytes"] = 2 << 30
    assert "MiB >= 1024 MiB" in summarize_planning(big).verdict
    missing = {"machines": 100, "runs": RESULTS["planning"]["runs"][:1]}
    assert "not measured" in summarize_planning(missing).verdict


def test_markdown_has_one_row_per_shape_and_marks_what_is_not_ahead():
    text = render_markdown(RESULTS, "2026-11-21.json", {"layered": "../bench/results/x.svg"})
    assert "bench/results/2026-11-21.json" in text
    assert "`make bench`" in text
    assert "AMD EPYC" in text
    rows = [line for line in text.splitlines() if line.startswith(("| layered |", "| chain |"))]
    assert len(rows) == 2
    layered, chain = rows
    assert "NOT YET" in layered
    assert "meets target" in chain
    assert "31.4 (29.0-33.0)" in layered  # Nix's walls: median (min-max)
    assert "![layered: wall time vs lower bound](../bench/results/x.svg)" in text
    assert "- offload failed, rep 0: failed: exit 1: KeyError: <Task ...>" in text
    assert "## Per-build overhead" in text
    assert "## Scheduler cost" in text
    assert "| 50,000 | 1.95 | 30.6 | - | - | ok |" in text  # no input-moves time in these results
    # The simulated plan is shown where the results have it (layered), against the bound.
    (plan_row,) = [line for line in text.splitlines() if "no overheads (simulated)" in line]
    assert plan_row.endswith("| | 3.60 s (1.25x the bound) |")
    # Builds per machine are means over the successful runs: (40 + 38 + 40) / 3 on fast.
    assert "| builds per machine (mean per run) | fast 39.3, medium 0.7 | fast 21, local 19 |" in (
        text
    )


def test_a_busy_machine_is_reported_from_the_load_before_each_build():
    results = copy.deepcopy(RESULTS)
    assert "load average (1 min)" not in render_markdown(results, "r.json", {})
    for load, run in zip([0.2, 0.4, 1.9], results["graphs"][1]["runs"], strict=False):
        run["loadavg_1m_before"] = load
    text = render_markdown(results, "r.json", {})
    assert "| load average (1 min) before each build | median 0.40, max 1.90 |" in text
    # Up to the core count (2) the load may be the benchmark's own builds.
    assert "Other processes" not in text
    results["graphs"][1]["runs"][2]["loadavg_1m_before"] = 2.5
    text = render_markdown(results, "r.json", {})
    assert "Other processes shared this machine" in text


def test_svg_plot_draws_a_point_per_successful_run_and_a_cross_per_failure():
    graph = RESULTS["graphs"][0]
    series = graph_series(graph)
    assert series == {"nix": [31.36, 29.0, 33.0], "offload": [None, 3.5, 3.3]}
    svg = svg_plot("layered", graph["lower_bound"], series)
    root = ET.fromstring(svg)  # noqa: S314 -- our own output
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}circle")) == 5
    crosses = [p for p in root.findall(f"{ns}path") if p.get("d", "").startswith("M")]
    assert len(crosses) == 1
    labels = "".join(t.text or "" for t in root.findall(f"{ns}text"))
    assert "lower bound 2.9 s" in labels
    assert "1.25x bound 3.6 s" in labels


def test_write_report_writes_plots_next_to_results_and_links_them(tmp_path: Path):
    results = tmp_path / "bench" / "results" / "2026-11-21.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps(RESULTS))
    doc = tmp_path / "docs" / "BENCHMARKS.md"
    written = write_report(results, doc)
    plots = sorted(p.name for p in written if p.suffix == ".svg")
    assert plots == ["2026-11-21-chain.svg", "2026-11-21-layered.svg"]
    text = doc.read_text()
    for name in plots:
        link = f"../bench/results/{name}"
        assert f"]({link})" in text
        assert (doc.parent / link).resolve().is_file()


# --- parsing what the tools say -----------------------------------------------------------------

NIX_STDERR = """\
building '/nix/store/pk83zdsw2mcj6q47l98q7m1lbahr2z21-try-l12-n0004.drv' on 'ssh://fast'...
copying 1 paths...
copying path '/nix/store/rccwg0fk30id8dmgipy5nx8jf28qsld3-try-l12-n0004' from 'ssh://fast'...
building '/nix/store/mafk1kn5zwx700wnrfk07sy990h758d5-try-l12-n0007.drv' on 'ssh://root@slow'...
building '/nix/store/k9ibz2dhkv19scq4wk6vflz373zqfigy-try-l12-n0003.drv'...
offload-dag: try-l12-n0003 sleeps 0.075 s (work 0.302, speed 1)
"""


def test_nix_stderr_gives_builds_per_machine_with_local_ones_unlabelled():
    account = parse_nix_builds(NIX_STDERR, "/nix/store/a-x\n/nix/store/b-y\n")
    assert account.per_machine() == {"fast": 1, "local": 1, "slow": 1}
    assert account.outputs == ("/nix/store/a-x", "/nix/store/b-y")
    assert account.names_by_machine()["slow"] == {"try-l12-n0007"}
    assert store_name("/nix/store/k9ibz2dhkv19scq4wk6vflz373zqfigy-try-l12-n0003.drv") == (
        "try-l12-n0003"
    )


def test_offload_events_give_builds_bytes_and_outputs_and_skip_junk():
    lines = [
        json.dumps({"event": "run_started", "total": 2}),
        json.dumps(
            {
                "event": "job_finished",
                "drv_path": "/nix/store/a-n1.drv",
                "machine": "fast",
                "status": "built",
                "bytes_sent": 100,
                "bytes_received": 7,
            }
        ),
        "Traceback (most recent call last):",
        json.dumps(
            {
                "event": "job_finished",
                "drv_path": "/nix/store/b-n2.drv",
                "machine": "",
                "status": "skipped",
                "bytes_sent": 0,
                "bytes_received": 0,
            }
        ),
        json.dumps(
            {
                "event": "job_finished",
                "drv_path": "/nix/store/c-n3.drv",
                "machine": "local",
                "status": "built",
                "bytes_sent": 5,
                "bytes_received": True,  # not a count
            }
        ),
        json.dumps({"event": "run_finished", "outputs": ["/nix/store/x-n1", "/nix/store/y-n3"]}),
    ]
    account = parse_offload_events("\n".join(lines))
    assert account.per_machine() == {"fast": 1, "local": 1}
    assert (account.bytes_sent, account.bytes_received) == (105, 7)
    assert account.outputs == ("/nix/store/x-n1", "/nix/store/y-n3")
    assert account.bad_lines == 1


def test_ssh_transferred_lines_are_summed_and_absent_means_unknown():
    lines = [
        "Authenticated to 127.0.0.1 using publickey.",
        "Transferred: sent 3472, received 3324 bytes, in 0.4 seconds",
        "Transferred: sent 100, received 1 bytes, in 0.1 seconds",
    ]
    wire = parse_ssh_transferred(lines)
    assert wire is not None
    assert (wire.sent, wire.received) == (3572, 3325)
    assert parse_ssh_transferred(["debug1: nothing here"]) is None


def test_store_growth_splits_inputs_sent_from_outputs_built_there(tmp_path: Path):
    store = tmp_path / "fast" / "nix" / "store"
    store.mkdir(parents=True)
    (store / "aaaa-old").write_text("x" * 50)
    before = StoreSnapshot.take({"fast": store, "slow": tmp_path / "missing"})
    (store / "bbbb-input-n0001").write_text("i" * 30)  # an input copied to the member
    out_dir = store / "cccc-graph-n0002"  # the output it built
    out_dir.mkdir()
    (out_dir / "file").write_text("o" * 7)
    after = StoreSnapshot.take({"fast": store, "slow": tmp_path / "missing"})
    built = parse_nix_builds(
        "building '/nix/store/zzzz-graph-n0002.drv' on 'ssh://fast'...\n"
        "building '/nix/store/yyyy-input-n0001.drv'...\n"
    )
    assert before.growth(after, built) == (30, 7)


def test_received_bytes_count_new_outputs_of_the_graph_not_built_here(tmp_path: Path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "aaaa-g-n0001").write_text("a" * 11)  # from an earlier run
    (store / "zzzz-unrelated").write_text("u" * 99)  # someone else's path
    names = {"g-n0001", "g-n0002", "g-n0003"}
    before = list_store(store, names)
    assert before == {"aaaa-g-n0001"}
    (store / "bbbb-g-n0002").write_text("b" * 5)  # built remotely, copied back
    (store / "cccc-g-n0003").write_text("c" * 3)  # built here
    (store / "dddd-g-n0002.drv").write_text("d" * 1000)
    (store / "eeee-unrelated").write_text("e" * 77)
    after = list_store(store, names)
    built = parse_nix_builds(
        "building '/nix/store/x-g-n0002.drv' on 'ssh://fast'...\n"
        "building '/nix/store/y-g-n0003.drv'...\n"
    )
    assert received_bytes(store, before, after, built) == 5


def test_a_build_counts_only_if_every_output_was_printed_and_arrived():
    from bench.measure import Timed
    from bench.tools import _status

    def done(code: int | None) -> Timed:
        return Timed(("nix-build",), code, 1.0, "", "error: boom\n")

    printed = parse_nix_builds("", "/nix/store/a-n1\n/nix/store/b-n2\n")
    assert _status(done(0), printed, 2, 2) == ("ok", None)
    # nix-build exits 0 having built nothing when no attribute name is an identifier.
    assert _status(done(0), parse_nix_builds("", ""), 2, 0)[0] == "failed"
    assert _status(done(0), printed, 2, 1) == (
        "failed",
        "exit 0 but only 1 of 2 outputs are in the local store",
    )
    assert _status(done(1), printed, 2, 2) == ("failed", "exit 1: error: boom")
    assert _status(done(None), printed, 2, 2) == ("timeout", "stopped after 1 s")


def test_the_hook_rows_hold_offload_hook_to_its_own_targets() -> None:
    graph = {
        "shape": "wide",
        "nodes": 60,
        "runs": [
            _run("nix", 0, 40.0),
            _run("hook", 0, 20.0),
            _run("nix", 1, 30.0),
            _run("hook", 1, 25.0),
        ],
    }
    overhead = {
        "derivations": 100,
        "runs": [_run("nix", 0, 36.0), _run("hook", 0, 9.0, status="failed")],
    }
    rows = hook_rows({"graphs": [graph], "overhead": overhead})
    assert [row.label for row in rows] == ["wide (60 nodes)", "100 trivial derivations remote-only"]
    wide, trivial = rows
    assert wide.speedup is not None
    assert (wide.speedup.low, wide.speedup.high) == (1.2, 2.0)
    assert wide.meets  # median 1.6 >= 1.3
    assert not trivial.meets
    assert "failed in 1 of 1" in trivial.verdict
    text = "\n".join(hook_section(rows))
    assert "| wide (60 nodes) | 35.0 (30.0-40.0) | 22.5 (20.0-25.0) |" in text


def test_results_without_hook_runs_have_no_hook_rows() -> None:
    graph = {"shape": "chain", "nodes": 40, "runs": [_run("nix", 0, 1.0), _run("offload", 0, 1.0)]}
    assert hook_rows({"graphs": [graph]}) == []
    assert hook_section([]) == []
