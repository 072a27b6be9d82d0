"""``offload demo`` stopped by Ctrl-C stops the fleet it started, even when a second Ctrl-C
comes while it does (a person pressing it twice): no member is left running.

Run in this process, so that each Ctrl-C comes at one known point: the first as the demo
evaluates its graph (``_build`` raises it), the second once the first member has stopped.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

import pytest

from offload.cli import demo
from offload.fleet import fleet_down, manager
from offload.fleet.namespace import stop_member
from offload.fleet.records import MemberRecord


def _sshds_of(fleet_dir: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "sshd" in cmdline and str(fleet_dir) in cmdline:
                found.append(int(entry.name))
    return found


def test_a_second_ctrl_c_while_the_demo_stops_its_fleet_leaves_no_member_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet_dir = Path(tmp_path) / "f"

    def ctrl_c(*_: Any) -> int:
        raise KeyboardInterrupt

    real_stop = stop_member
    stopped: list[str] = []

    def stop_then_ctrl_c(where: Path, record: MemberRecord) -> None:
        real_stop(where, record)
        stopped.append(record.spec.name)
        if len(stopped) == 1:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(demo, "_build", ctrl_c)
    monkeypatch.setattr(manager, "stop_member", stop_then_ctrl_c)
    args = argparse.Namespace(graph=None, dir=fleet_dir, keep_fleet=False)
    try:
        with pytest.raises(KeyboardInterrupt):
            demo.run(args)
        assert stopped == ["fast", "medium", "slow"]
        assert _sshds_of(fleet_dir) == []
    finally:
        monkeypatch.setattr(manager, "stop_member", real_stop)
        fleet_down(fleet_dir, purge=True)


def test_a_graph_the_demo_fleet_cannot_build_says_what_to_change_and_stops_the_fleet(
    tmp_path: Path,
) -> None:
    # Its hint was offload build's "or use --keep-going", an option demo has not.
    import json
    import subprocess
    import sys

    graph = tmp_path / "arm.json"
    graph.write_text(json.dumps({"nodes": [{"name": "a", "work": 0.1, "system": "aarch64-linux"}]}))
    fleet_dir = tmp_path / "f"
    done = subprocess.run(
        [sys.executable, "-m", "offload", "demo", "--graph", str(graph), "--dir", str(fleet_dir)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    hints = [line for line in done.stderr.splitlines() if line.startswith("hint: ")]
    assert hints == [
        (
            "hint: the demo's members build this host's system with no features: leave system"
            " and features out of --graph's nodes (`offload simulate` takes other machines)"
        )
    ]
    assert "Traceback" not in done.stderr
    assert _sshds_of(fleet_dir) == []
