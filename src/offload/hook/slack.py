"""Slack in the hook: side work leaves the fast builders to the critical path, as in a run.

``offload build`` sends a job off the critical path to the slowest free machine where it still
ends within half its slack (``scheduler.policy.slack``), so the fast slots are free when the
critical work becomes ready. The hook sees one derivation at a time, but history gives each its
tail (``history.tails``: the work seen built on it), so each derivation placed says when its
path is expected to end: its expected end plus its tail on the fastest machine. The
coordinator keeps, per Nix process, those of its derivations still under way (``PathEnds``): a
derivation counts from its placement until its build ends (or, declined to the local machine,
whose end the hook does not see, until its expected end), as a run counts only its running and
ready jobs: one that ended early makes its successors critical again at once, and paths ended
earlier (or a daemon connection's previous build) leave no slack behind. The latest of them is
when that nix-build is expected to end at the soonest. A derivation whose own path ends well
before that has slack; ``room`` is the latest end it may take on a slower machine: now +
``SLACK_SHARE`` x (slack + its work) on the fastest machine, as ``slower_in_slack`` has it. Only
derivations known to history in both ways (their work measured, their tail seen) get a room: a
guess would send an unknown long build to a slow machine (the reason a run keeps guessed jobs
off the rule too).
"""

from __future__ import annotations

import math

from offload.scheduler.policy.slack import SLACK_SHARE

__all__ = ["PathEnds", "room"]


class PathEnds:
    """Per Nix process (its client name), the expected path ends of its derivations under way."""

    def __init__(self) -> None:
        # client -> derivation -> (its path's expected end, until when it counts)
        self._ends: dict[str, dict[str, tuple[float, float]]] = {}

    def placed(self, client: str, drv: str, end: float, *, until: float = math.inf) -> None:
        """``drv`` of ``client`` was placed, its path expected to end at ``end``; it counts until
        ``ended``, or ``until`` (a local build, whose end the hook does not see)."""
        self._ends.setdefault(client, {})[drv] = (end, until)

    def ended(self, client: str, drv: str) -> None:
        """``drv``'s build ended (built, failed or given up): its path no longer counts."""
        paths = self._ends.get(client)
        if paths is not None:
            paths.pop(drv, None)
            if not paths:
                del self._ends[client]

    def latest(self, client: str, now: float) -> float | None:
        """When ``client``'s nix-build is expected to end at the soonest (its latest path end
        under way); None when nothing of it is, or every such end has passed."""
        for name in list(self._ends):  # local builds past their end, any client's
            paths = self._ends[name]
            for drv in [drv for drv, (_, until) in paths.items() if until <= now]:
                del paths[drv]
            if not paths:
                del self._ends[name]
        end = max((end for end, _ in self._ends.get(client, {}).values()), default=None)
        return end if end is not None and end > now else None


def room(
    run_end: float | None, now: float, *, work: float, priority: float, fastest: float
) -> float | None:
    """The latest end a derivation of ``work`` and ``priority`` (work + tail) may take on a
    slower machine, with its nix-build expected to end at ``run_end``; None without slack."""
    if run_end is None:
        return None
    remaining = (run_end - now) * fastest  # the longest path left, in work at speed 1
    slack = remaining - priority
    if slack <= 0:
        return None
    return now + SLACK_SHARE * (slack + work) / fastest
