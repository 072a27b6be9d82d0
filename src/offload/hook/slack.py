"""Slack in the hook: side work leaves the fast builders to the critical path, as in a run.

``offload build`` sends a job off the critical path to the slowest free machine where it still
ends within half its slack (``scheduler.policy.slack``), so the fast slots are free when the
critical work becomes ready. The hook sees one derivation at a time, but history gives each its
tail (``history.tails``: the work seen built on it), so each derivation placed says when its
path is expected to end: its expected end plus its tail on the fastest machine. The
coordinator keeps, per Nix process, those path ends (``PathEnds``), each again from the
build's real end once it has ended (its tail starting then): a build that ended early makes
the path after it critical again at once (a run counts the paths of its running and ready jobs
the same way), and one that overran pushes its path's end on. Each counts until its end passes
(a local build's, whose end the hook does not see, from its expected end), so nothing stays
behind a nix-build, or a daemon connection's previous one. The latest of them is when that
nix-build is expected to end at the soonest. A derivation whose own path ends well
before that has slack; ``room`` is the latest end it may take on a slower machine: now +
``SLACK_SHARE`` x (slack + its work) on the fastest machine, as ``slower_in_slack`` has it. Only
derivations known to history in both ways (their work measured, their tail seen) get a room: a
guess would send an unknown long build to a slow machine (the reason a run keeps guessed jobs
off the rule too).
"""

from __future__ import annotations

from offload.scheduler.policy.slack import SLACK_SHARE, latest_end

__all__ = ["PathEnds", "room"]


class PathEnds:
    """Per Nix process (its client name), the expected path ends of its derivations."""

    def __init__(self) -> None:
        self._ends: dict[str, dict[str, float]] = {}  # client -> derivation -> path end

    def placed(self, client: str, drv: str, end: float) -> None:
        """``drv``'s path is expected to end at ``end``: placed, or its build ended and the
        rest of the path (its tail) starts now. It counts until that end passes."""
        self._ends.setdefault(client, {})[drv] = end

    def latest(self, client: str, now: float) -> float | None:
        """When ``client``'s nix-build is expected to end at the soonest (its latest path end
        still ahead); None when none is."""
        for name in list(self._ends):  # every client's ends that passed: nothing stays behind
            paths = self._ends[name]
            for drv in [drv for drv, end in paths.items() if end <= now]:
                del paths[drv]
            if not paths:
                del self._ends[name]
        return max(self._ends.get(client, {}).values(), default=None)


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
    return latest_end(now, slack, work, fastest, SLACK_SHARE)
