"""`offload report --hook`: offload-hook's builds, which belong to no run, as one page. The
history is a real SQLite file, written as the hook writes it (a run id per build, its inputs)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from offload.cli import main
from offload.errors import OffloadError
from offload.history.db import History
from offload.history.records import BuildRecord
from offload.report import load_hook_model
from offload.report.model import HOOK_PAUSE, hook_run


def _hook_build(
    history: History, name: str, machine: str, start: float, end: float, *inputs: str, ok=True
) -> None:
    drv = f"/nix/store/{name:a>32}-{name}.drv"
    record = BuildRecord(
        f"hook-{name}-{start}", drv, name, machine, start, end, "built" if ok else "failed"
    )
    deps = tuple(f"/nix/store/{i:a>32}-{i}.drv" for i in inputs)
    history.record([record], deps={drv: deps})


@pytest.fixture
def history(tmp_path: Path):
    with History(tmp_path / "history.sqlite") as opened:
        yield opened


def test_the_latest_burst_is_reported_with_its_critical_path(history: History) -> None:
    now = time.time()
    old = now - 3 * HOOK_PAUSE  # an earlier nixos-rebuild: not in the burst
    _hook_build(history, "old", "slow", old, old + 5)
    _hook_build(history, "lib", "fast", now - 60, now - 40)
    _hook_build(history, "tool", "slow", now - 58, now - 30)
    _hook_build(history, "app", "fast", now - 29, now - 10, "lib", "tool")
    _hook_build(history, "docs", "local", now - 50, now - 45)
    model = load_hook_model(history, since=None)
    assert model.title == "offload-hook builds"
    built = sorted(bar.build.pname for lane in model.lanes for bar in lane.bars)
    assert built == ["app", "docs", "lib", "tool"]
    assert sorted(lane.machine for lane in model.lanes) == ["fast", "local", "slow"]
    # app waited for tool, which ended after lib: the path that decided the end.
    assert [b.pname for b in model.critical] == ["tool", "app"]
    assert sorted(model.run.asked) == ["app", "docs"]  # nothing of the burst was built on them
    assert model.run.outcome == "ok"
    assert model.run.wall == pytest.approx(50.0)
    # --since reaches past the pause.
    wider = load_hook_model(history, since=old - 1)
    assert "old" in {bar.build.pname for lane in wider.lanes for bar in lane.bars}


def test_a_derivation_whose_last_copy_failed_fails_the_burst(history: History) -> None:
    now = time.time()
    _hook_build(history, "flaky", "fast", now - 30, now - 20, ok=False)
    _hook_build(history, "flaky", "slow", now - 19, now - 10)
    assert load_hook_model(history, since=None).run.outcome == "ok"  # retried and built
    _hook_build(history, "broken", "fast", now - 9, now - 5, ok=False)
    assert load_hook_model(history, since=None).run.outcome == "failed"


def test_runs_are_not_hook_builds(history: History) -> None:
    now = time.time()
    run_build = BuildRecord("r1", "/nix/store/x.drv", "x", "fast", now - 5, now, "built")
    history.record([run_build])
    with pytest.raises(OffloadError, match="no offload-hook builds in the history"):
        load_hook_model(history, since=None)
    _hook_build(history, "h", "fast", now - 900, now - 800)
    with pytest.raises(OffloadError, match="no offload-hook builds in the history since"):
        load_hook_model(history, since=now - 60)


def test_the_command_writes_the_page_and_refuses_a_run_with_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(state))
    # No nix-daemon history to note, whatever this machine's /var/lib/offload holds.
    monkeypatch.setattr("offload.cli.history_file.SYSTEM_STATE_DIR", tmp_path / "system")
    now = time.time()
    with History(state / "history.sqlite") as history:
        _hook_build(history, "a", "fast", now - 10, now - 5)
        _hook_build(history, "b", "slow", now - 4, now - 1, "a")
    page = tmp_path / "hook.html"
    assert main(["report", "--hook", "-o", str(page)]) == 0
    said = capsys.readouterr().err
    assert said == f"report of offload-hook's builds (2 copies on 2 machines) written to {page}\n"
    # A name with a line break is said as one line.
    assert main(["report", "--hook", "-o", str(tmp_path / "a\nb.html")]) == 0
    assert capsys.readouterr().err.endswith(f"written to {tmp_path}/a\\nb.html\n")
    text = page.read_text()
    assert "<title>offload-hook builds</title>" in text
    # No lower bound is drawn for the hook's builds, so its key is not in the legend either.
    assert "the lower bound, from the first build" not in text
    assert 'class="bound"' not in text.split("</style>", 1)[1]
    assert "-a.drv" in text
    assert "-b.drv" in text
    assert main(["report", "--since", "1h", "-o", str(page)]) == 0  # --since implies --hook
    capsys.readouterr()
    assert main(["report", "--hook", "--since", "3s", "-o", str(page)]) == 0
    # One build on one machine was '(1 copies on 1 machines)'.
    assert "(1 copy on 1 machine) written to" in capsys.readouterr().err
    assert main(["report", "RUN", "--hook", "-o", str(page)]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        "error: 'RUN': offload-hook's builds are no run"
    )
    assert main(["report", "--since", "soon", "-o", str(tmp_path / "x.html")]) == 1
    assert capsys.readouterr().err.splitlines()[0] == "error: --since 'soon': not a duration"
    assert not (tmp_path / "x.html").exists()


def test_a_history_of_hook_builds_only_is_sent_to_report_hook(history: History) -> None:
    # "no run in the history; hint: ... `offload build` records one": the builds were there.
    from offload.report import load_model

    now = time.time()
    _hook_build(history, "h", "fast", now - 10, now - 5)
    with pytest.raises(OffloadError, match="no run in the history") as said:
        load_model(history, None)
    assert said.value.hint == "offload-hook's builds are there: `offload report --hook`"
    # The id `offload history` gave a hook build (its own, no run's) gets the same hint.
    with pytest.raises(OffloadError, match="no run 'hook-") as said:
        load_model(history, "hook-1")
    assert said.value.hint == "offload-hook's builds are there: `offload report --hook`"


def test_a_page_of_the_newest_builds_only_says_so(
    history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 10,050 builds made a page of 10,000 that said nothing of the rest.
    monkeypatch.setattr("offload.report.model.HOOK_LIMIT", 3)
    now = time.time()
    for i in range(3):
        _hook_build(history, f"b{i}", "fast", now - 10 + i, now - 9 + i)
    assert load_hook_model(history, since=now - 60).title == "offload-hook builds"
    _hook_build(history, "b3", "fast", now - 5, now - 4)
    capped = load_hook_model(history, since=now - 60)
    assert capped.title == "offload-hook builds, the newest 3"
    assert sum(len(lane.bars) for lane in capped.lanes) == 3


def test_a_page_of_the_latest_burst_is_not_said_capped(
    history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    # More builds in the history than the limit, and a burst of one: "the newest 3".
    monkeypatch.setattr("offload.report.model.HOOK_LIMIT", 3)
    now = time.time()
    for i in range(4):
        old = now - 10 * HOOK_PAUSE - i
        _hook_build(history, f"old{i}", "fast", old - 1, old)
    _hook_build(history, "new", "fast", now - 2, now - 1)
    assert load_hook_model(history, since=None).title == "offload-hook builds"


def test_a_name_asked_twice_in_the_burst_is_said_once() -> None:
    # A file built again with a change: two derivations named app, "asked app docs app".
    def built(drv: str, start: float) -> BuildRecord:
        return BuildRecord(
            f"hook-{drv}", drv, drv.split("-", 1)[1], "fast", start, start + 1, "built"
        )

    builds = [
        built("/nix/store/a-app", 1),
        built("/nix/store/d-docs", 2),
        built("/nix/store/b-app", 3),
    ]
    assert hook_run(builds, {}).asked == ("app", "docs")
