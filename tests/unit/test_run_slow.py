"""A builder still silent once the graph could be read is said slow, with what the run does
meanwhile: builds elsewhere, or, where no other machine builds (`-j 0` and no other builder
answered), nothing (a tester away from home read "building elsewhere meanwhile" then)."""

from __future__ import annotations

from offload.build.run import _tell_slow
from offload.ui.events import Event, MachineEvent


def _said(*, elsewhere: bool) -> list[str]:
    told: list[Event] = []
    _tell_slow(["away"], told.append, elsewhere=elsewhere)
    return [e.message for e in told if isinstance(e, MachineEvent) and e.state == "slow"]


def test_a_slow_builder_is_said_with_what_the_run_does_meanwhile() -> None:
    assert _said(elsewhere=True) == [
        "no answer yet: building elsewhere meanwhile; it joins when it answers"
    ]
    assert _said(elsewhere=False) == [
        "no answer yet: no other machine to build on; it joins when it answers"
    ]
