"""A run that never opened (every builder down at the start): its machines down are events for
``--json``, while the plain and live views leave them to the run's one error line."""

from __future__ import annotations

import io
import json
import re

from rich.console import Console

from offload.ui.events import JobFinished, MachineEvent, RunStarted
from offload.ui.jsonl import JsonRenderer
from offload.ui.plain import PlainRenderer
from offload.ui.tty import TtyRenderer

T0 = 1_700_000_000.0
DOWN = MachineEvent("fast", "down", "connection refused by fast", T0 + 60, T0 + 0.1)


def test_json_says_a_machine_down_in_a_run_that_never_opened():
    out = io.StringIO()
    JsonRenderer(out, print_logs=False).handle(DOWN)
    record = json.loads(out.getvalue())
    assert (record["event"], record["machine"], record["state"]) == ("machine", "fast", "down")
    assert record["message"] == "connection refused by fast"


def test_the_plain_view_leaves_it_to_the_error_line_and_says_it_once_the_run_opened():
    out = io.StringIO()
    plain = PlainRenderer(out, print_logs=False, clock=lambda: T0)
    plain.handle(DOWN)
    plain.close()
    assert out.getvalue() == ""
    plain.handle(RunStarted("r", 1, ("fast",), 5.0, T0 + 0.2))
    plain.handle(DOWN)
    assert "fast: down" in out.getvalue().splitlines()[-1]


def test_the_live_view_draws_nothing_for_it():
    # An output fetched while the graph was read comes first (build.run holds it, and tells it
    # at the end of a run that never opened): nothing starts the view before the run opens.
    fetched = JobFinished("/nix/store/x.drv", "x", "slow", "built", T0, T0, 0, 9, None, T0)
    out = io.StringIO()
    console = Console(file=out, width=100, height=20, force_terminal=True, color_system=None)
    tty = TtyRenderer(console, print_logs=False, clock=lambda: T0 + 1, auto_refresh=False)
    tty.handle(fetched)
    tty.handle(DOWN)
    tty.close()
    assert re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()).strip() == ""
