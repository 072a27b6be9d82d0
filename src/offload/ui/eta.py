"""The run's ETA as the live view shows it: the scheduler's plan, smoothed so that it is stable.

The executor plans what is left again whenever a build starts or a job ends and sends the
answer as ``remaining`` (``scheduler.run.remaining``: the policy simulated on the jobs left, a
running build counting with the work it has left). The view keeps a *finish time* ``F`` and
shows ``F - now``:

- ``RunStarted.estimate`` sets the first ``F``; the first plan after it replaces it whole.
- Between plans the ETA counts down with the clock, but stands still while a build is past its
  estimate (the plan assumed it would be done by now): ``overdue`` is when the first running
  build went past its estimate, None while none is.
- A plan that finishes earlier moves ``F`` halfway towards it, so one build that ended early
  does not pull the ETA down in one go.
- A plan that finishes later is taken only with news that justifies it: a machine went down or
  came back, a build was lost, failed or stopped (``news``), or the ETA had already run out.
  Otherwise it is ignored: the stand-still above has already given overdue builds their time.

So the ETA shown never goes up, except on such news, and it never goes below zero ("due").
"""

from __future__ import annotations

__all__ = ["Eta"]


class Eta:
    def __init__(self) -> None:
        self._finish: float | None = None
        self._tick: float | None = None  # when the stand-still was last applied
        self._news = True  # the next plan is taken whole

    def start(self, when: float, estimate: float) -> None:
        """The run's first estimate, from ``RunStarted``."""
        self._finish = when + estimate
        self._tick = when
        self._news = True

    def news(self) -> None:
        """Something happened that the plan could not foresee: take the next plan whole."""
        self._news = True

    def plan(self, when: float, remaining: float, *, overdue: float | None) -> None:
        """The executor's plan at ``when``: ``remaining`` seconds to go."""
        self._advance(when, overdue=overdue)
        planned = when + remaining
        finish = self._finish
        if finish is None or self._news or finish <= when:
            self._finish = planned
        elif planned < finish:
            self._finish = finish - (finish - planned) / 2
        self._news = False

    def left(self, now: float, *, overdue: float | None) -> float | None:
        """Seconds to go as shown at ``now`` (0 when due), or None before any estimate."""
        self._advance(now, overdue=overdue)
        if self._finish is None:
            return None
        return max(self._finish - now, 0.0)

    def _advance(self, now: float, *, overdue: float | None) -> None:
        if self._tick is not None and self._finish is not None and overdue is not None:
            self._finish += max(now - max(self._tick, overdue), 0.0)
        self._tick = now if self._tick is None else max(self._tick, now)
