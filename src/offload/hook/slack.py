"""Slack in the hook: side work leaves the fast builders to the critical path, as in a run.

``offload build`` sends a job off the critical path to the slowest free machine where it still
ends within half its slack (``scheduler.policy.slack``), so the fast slots are free when the
critical work becomes ready. The hook sees one derivation at a time, but history gives each its
tail (``history.tails``: the work seen built on it), so each placed derivation says when its
path is expected to end: its expected end plus its tail on the fastest machine. The
coordinator keeps, per Nix process, the latest of those (``PathEnds``): when that nix-build is
expected to end at the soonest. A derivation whose own path ends well before that has slack;
``room`` is the latest end it may take on a slower machine: now + ``SLACK_SHARE`` x (slack +
its work) on the fastest machine, as ``slower_in_slack`` has it. Only derivations known to
history in both ways (their work measured, their tail seen) get a room: a guess would send an
unknown long build to a slow machine (the reason a run keeps guessed jobs off the rule too).
"""

from __future__ import annotations

from offload.scheduler.policy.slack import SLACK_SHARE

__all__ = ["PathEnds", "room"]


class PathEnds:
    """Per Nix process (its client name), the latest expected end of a path it has started."""

    def __init__(self) -> None:
        self._ends: dict[str, float] = {}

    def placed(self, client: str, end: float) -> None:
        """A derivation of ``client``'s was placed: its path is expected to end at ``end``."""
        self._ends[client] = max(end, self._ends.get(client, end))

    def latest(self, client: str, now: float) -> float | None:
        """When ``client``'s nix-build is expected to end at the soonest; None once past."""
        end = self._ends.get(client)
        if end is None or end <= now:
            self._ends.pop(client, None)
            return None
        return end


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
