"""The live view as a person sees it: ``offload build`` in a tmux pane on the local fleet.

Builds wait at a gate (a file the test creates) after printing a line, so the view is read at
known moments: every build running (headers with speed and slots, a row per build with its
phase and newest log line, the ETA), every build past its estimate (marked ``overdue``), the
gate opened (the final frame: no job rows, "finished in"), and Ctrl-C in another run (the
final frame says "interrupted after", not "finished"). Each moment is waited for by polling
``tmux capture-pane`` for its condition, with a deadline; nothing sleeps.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.fleet import Fleet
from tests.helpers.nix_files import marker_script, nix_file
from tests.helpers.offload_run import offload_argv, offload_env
from tests.helpers.tmux import Pane, tmux_pane

GATED = ("g1", "g2", "g3")


@pytest.fixture
def pane() -> Iterator[Pane]:
    with tmux_pane() as view:
        yield view


def gated_run(fleet: Fleet, tmp_path: Path, pane: Pane, gate: Path) -> Path:
    """Start a run of three gated builds and a root on fast and medium; returns its rc file."""
    builds = []
    for name in GATED:
        wait = f"while [ ! -e {gate} ]; do /bin/sleep 0.1; done; echo > $out"
        script = marker_script(tmp_path / name, f"echo waiting at the gate {name}; {wait}")
        builds.append(f'  {name} = mk "{name}" "{script}" {{}};')
    root = 'all = mk "all" "echo > $out" { inherit g1 g2 g3; };'
    file = nix_file(tmp_path, "rec {\n" + "\n".join(builds) + f"\n  {root}\n}}\n")
    argv = offload_argv(file, "-A", "all", "--builders", f"@{fleet.machines_file}")
    argv += ["--on", "fast,medium", "-j", "0", "--no-out-link"]
    rc = tmp_path / "rc"
    command = f"{shlex.join(argv)}; echo $? > {rc}.tmp; mv {rc}.tmp {rc}; exec sleep 600"
    env = offload_env(fleet, tmp_path, TMPDIR=str(pane.socket.parent))
    pane.start(f"cd {shlex.quote(str(tmp_path))} && {command}", env)
    return rc


def frame(lines: list[str]) -> list[str]:
    """The newest frame: from the first machine header above the last run line down to it."""
    runs = [i for i, line in enumerate(lines) if " done · " in line]
    if not runs:
        return []
    last = runs[-1]
    first = last
    # A frame is machine headers ("NAME  speed ...") and their indented rows; log lines printed
    # above it (shown by default, as nix-build shows them) are not part of it.
    while first > 0 and (lines[first - 1].startswith(" ") or " speed " in lines[first - 1]):
        first -= 1
    return lines[first : last + 1]


def eta(frame: list[str]) -> float:
    """The ETA on a frame's run line, in seconds ("due": 0)."""
    shown = frame[-1].rsplit("ETA ", 1)[1]
    return 0.0 if shown == "due" else float(shown.rstrip("s"))


def rows(lines: list[str], word: str) -> list[str]:
    return [line for line in frame(lines) if word in line]


def test_live_view_rows_overdue_marks_and_final_frame(fleet, tmp_path, pane):
    gate = tmp_path / "gate"
    rc = gated_run(fleet, tmp_path, pane, gate)

    def all_running(lines: list[str]) -> bool:
        return any(" done · " in line for line in lines) and len(rows(lines, "waiting at")) == 3

    lines = pane.wait(all_running, "three builds with their log lines")
    shown = frame(lines)
    headers = {line.split()[0]: line for line in shown if not line.startswith(" ")}
    assert "speed 4 · " in headers["fast"]
    assert "/2 slots" in headers["fast"]
    assert "speed 2 · " in headers["medium"]
    assert "/2 slots" in headers["medium"]
    for line in rows(lines, "waiting at"):
        name = line.split()[0]
        assert name in GATED
        assert line.split()[1] == "building"
        assert f"waiting at the gate {name}" in line
        assert " / est " in line
    assert "0/4 done · " in shown[-1]
    assert " elapsed · ETA " in shown[-1]
    first_eta = eta(shown)

    # DEFAULT_WORK of 10 s at speeds 4 and 2: overdue after 2.5 s or 5 s of building.
    lines = pane.wait(lambda ls: len(rows(ls, "overdue")) == 3, "every build overdue")
    for line in rows(lines, "overdue"):
        spent, estimate = line.split(" / est ")[0].split()[-1], line.split(" / est ")[1].split()[0]
        # Both are shown to a tenth of a second: just overdue reads as equal.
        assert float(spent.rstrip("s")) >= float(estimate.rstrip("s"))
    assert eta(frame(lines)) <= first_eta  # it stood still or counted down, never up

    gate.touch()
    pane.wait(lambda _: rc.exists(), "the run's end", timeout=120)
    lines = pane.wait(lambda ls: any("finished in" in line for line in ls), "the final frame")
    assert rc.read_text().strip() == "0"
    final = frame(lines)
    assert final[-1].startswith("4/4 done · finished in ")
    assert not [line for line in final if line.startswith(" ")]  # no job rows left
    assert not any("building" in line or "ETA" in line for line in final)
    built = sum(int(line.rsplit("built ", 1)[1]) for line in final[:-1] if "built " in line)
    assert built == 4


def test_ctrl_c_leaves_the_truth_on_screen(fleet, tmp_path, pane):
    rc = gated_run(fleet, tmp_path, pane, tmp_path / "never")
    pane.wait(lambda ls: len(rows(ls, "building")) == 3, "three builds running")
    pane.tmux("send-keys", "-t", "view", "C-c")
    pane.wait(lambda _: rc.exists(), "the run to stop")
    lines = pane.wait(lambda ls: any("interrupted" in line for line in ls), "the final frame")
    assert rc.read_text().strip() == "130"
    final = frame(lines)
    assert final[-1].startswith("0/4 done · interrupted after ")
    assert not any("finished" in line for line in lines)
    assert not [line for line in final if line.startswith(" ")]
    assert "error: interrupted" in lines
