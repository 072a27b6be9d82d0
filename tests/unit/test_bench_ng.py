"""The bench's ssh-ng comparison (issue 17): the machines-file rewrite, where offload-ng runs,
and its rows in docs/BENCHMARKS.md, for new results and for results from before it existed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from bench.context import Bench
from bench.ng import NG_TOOL, machines_arg, ng_machines_text, with_ng
from bench.report import render_markdown
from bench.report_ng import ng_body, ng_rows, ng_targets
from bench.tools import tool_argv

MACHINES = (
    "ssh://fast x86_64-linux /k/id 2 4 benchmark,kvm - c3NoLWVk\n"
    "  ssh://medium x86_64-linux /k/id 2 2 - - c3NoLWVk\n"
    "ssh-ng://already x86_64-linux - 1 1 - - -\n"
    "# ssh://commented x86_64-linux\n"
    "ssh://a;ssh://b x86_64-linux\n"
    "local?root=/x/ssh://not-a-uri x86_64-linux\n"
)


def test_every_ssh_entry_becomes_ssh_ng_and_nothing_else_changes():
    out = ng_machines_text(MACHINES)
    assert out.splitlines() == [
        "ssh-ng://fast x86_64-linux /k/id 2 4 benchmark,kvm - c3NoLWVk",
        "  ssh-ng://medium x86_64-linux /k/id 2 2 - - c3NoLWVk",
        "ssh-ng://already x86_64-linux - 1 1 - - -",
        "# ssh://commented x86_64-linux",
        "ssh-ng://a;ssh-ng://b x86_64-linux",
        "local?root=/x/ssh://not-a-uri x86_64-linux",
    ]
    assert ng_machines_text(out) == out


def test_offload_ng_gets_the_rewritten_file_and_the_others_the_fleets(tmp_path: Path):
    machines = tmp_path / "machines"
    machines.write_text(MACHINES)
    bench = cast(
        "Bench", SimpleNamespace(fleet=SimpleNamespace(machines_file=machines), work=tmp_path)
    )
    assert machines_arg(bench, "offload") == f"@{machines}"
    assert machines_arg(bench, "nix") == f"@{machines}"
    ng = machines_arg(bench, NG_TOOL)
    assert ng == f"@{tmp_path / 'machines-ng'}"
    assert (tmp_path / "machines-ng").read_text() == ng_machines_text(MACHINES)
    assert machines.read_text() == MACHINES
    # The same command as offload's, only the builders differ.
    ssh = tool_argv("offload", Path("g.nix"), "@m", 0)
    assert tool_argv(NG_TOOL, Path("g.nix"), "@m-ng", 0) == [
        "@m-ng" if arg == "@m" else arg for arg in ssh
    ]
    assert "--json" in ssh


def test_offload_ng_runs_after_offload_on_the_trivial_builds_and_the_layered_graph_only():
    tools = ("nix", "offload", "hook")
    assert with_ng(tools) == ("nix", "offload", NG_TOOL, "hook")
    assert with_ng(tools, "layered") == ("nix", "offload", NG_TOOL, "hook")
    assert with_ng(tools, "chain") == tools


def _run(tool: str, rep: int, wall: float, status: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"tool": tool, "rep": rep, "wall_s": wall, "status": status, **extra}


def _graph(shape: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "shape": shape,
        "nodes": 60,
        "seed": 1,
        "scale": 4.0,
        "critical_path": 10.0,
        "total_work": 100.0,
        "lower_bound": 10.0,
        "runs": runs,
    }


RESULTS: dict[str, Any] = {
    "machine": {"cores": 2},
    "graphs": [
        _graph(
            "layered",
            [
                _run("nix", 0, 30.0),
                _run("offload", 0, 20.0),
                _run(NG_TOOL, 0, 18.0),
                _run("offload", 1, 22.0),
                _run(NG_TOOL, 1, 0.0, "failed", error="exit 1: no answer"),
                _run("offload", 2, 10.0),
                _run(NG_TOOL, 2, 12.0),
            ],
        ),
        _graph("chain", [_run("nix", 0, 40.0), _run("offload", 0, 20.0)]),
    ],
    "overhead": {
        "derivations": 100,
        "runs": [
            _run("nix", 0, 40.0),
            _run("offload", 0, 4.0),
            _run(NG_TOOL, 0, 5.0),
            _run("local", 0, 2.0),
        ],
    },
}


def test_rows_compare_ng_with_ssh_per_repetition_where_both_succeeded():
    layered, trivial = ng_rows(RESULTS)
    assert layered.label == "layered (60 nodes)"
    assert layered.ssh is not None
    assert layered.ng is not None
    assert layered.ratio is not None
    assert layered.ssh.median == 20.0  # 10, 20, 22
    assert layered.ng.median == 15.0  # 12, 18; the failed run is no wall
    # Rep 0: 18/20, rep 2: 12/10; rep 1 has no ng wall to pair.
    assert layered.ratio.count == 2
    assert (layered.ratio.low, layered.ratio.high) == (0.9, 1.2)
    assert layered.ng_ok == (2, 3)
    assert layered.failures == (
        "layered (60 nodes): ssh-ng:// failed, rep 1: failed: exit 1: no answer",
    )
    assert trivial.label == "100 trivial derivations"
    assert trivial.ratio is not None
    assert trivial.ratio.median == 1.25


def test_the_report_has_informational_rows_and_a_table_but_no_target():
    text = render_markdown(RESULTS, "x.json", {})
    targets = [line for line in text.splitlines() if "over ssh-ng:// against ssh://" in line]
    assert targets == [
        (
            "| layered (60 nodes): `offload build` over ssh-ng:// against ssh:// (#17) "
            "| ng/ssh 1.05 (0.90-1.20) | informational, no target |"
        ),
        (
            "| 100 trivial derivations: `offload build` over ssh-ng:// against ssh:// (#17) "
            "| ng/ssh 1.25 | informational, no target |"
        ),
    ]
    body = ng_body(RESULTS, {})
    assert body[1] == "## ssh-ng:// against ssh://"
    assert (
        "| layered (60 nodes) | 20.0 (10.0-22.0) | 15.0 (12.0-18.0) | 1.05 (0.90-1.20) | 3/3, 2/3 |"
        in body
    )
    assert "| 100 trivial derivations | 4.0 | 5.0 | 1.25 | 1/1, 1/1 |" in body
    assert "- layered (60 nodes): ssh-ng:// failed, rep 1: failed: exit 1: no answer" in body
    assert "## ssh-ng:// against ssh://" in text
    # The ng section sits between the hook's and the copy's place, after the build sections.
    assert text.index("## Per-build overhead") < text.index("## ssh-ng:// against ssh://")


def test_results_from_before_offload_ng_render_without_it():
    old = {
        "machine": {"cores": 2},
        "graphs": [_graph("layered", [_run("nix", 0, 30.0), _run("offload", 0, 20.0)])],
        "overhead": {"derivations": 100, "runs": [_run("nix", 0, 40.0), _run("offload", 0, 4.0)]},
    }
    assert ng_rows(old) == []
    assert ng_targets(old) == []
    assert ng_body(old, {}) == []
    text = render_markdown(old, "old.json", {})
    assert "ssh-ng" not in text
    assert "## Per-build overhead" in text
