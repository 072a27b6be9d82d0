"""``bench.tails_read``: the history it writes, and one small round of its measurement."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.tails_read import main, write_history

from offload.history.db import History
from offload.history.tails import name_of
from offload.hook import keep as keep_module
from offload.hook.keep import TAILS_SECONDS


def test_the_history_holds_every_build_and_its_inputs(tmp_path: Path) -> None:
    write_history(tmp_path, names=20, runs=2)
    with History(tmp_path / "history.sqlite") as history:
        assert len(history.builds()) == 40
        edges = history.recent_deps()
    # Each name is built on up to 7 earlier ones: 0 + 1 + ... + 6 + 7 x 13 per run.
    assert len(edges) == 2 * (21 + 7 * 13)
    assert all(name_of(drv) and name_of(dep) for drv, dep in edges)


def test_a_round_reports_both_reads(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--names", "50", "--runs", "2", "--repeat", "1"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("50 names, 100 builds: first read (at once) ")
    assert "the event loop's longest gap" in line
    assert keep_module.TAILS_SECONDS == TAILS_SECONDS  # as it was: other tests share it
