"""docs/RELIABILITY.md from the fault suite's trials: one row per fault, the targets checked."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from bench.faults.scenarios import Trial

NOTICE_TARGET = 15.0


def _notice(trials: Sequence[Trial]) -> str:
    times = [t.notice for t in trials if t.notice is not None]
    if not times:
        return "-"
    return f"{statistics.median(times):.1f} / {max(times):.1f}"


def row(fault: str, trials: Sequence[Trial]) -> str:
    runs = len(trials)
    correct = sum(t.correct for t in trials)
    clear = sum(t.clear_error and not t.correct for t in trials)
    said = sum(t.said for t in trials)
    partial = sum(len(t.left.partial) for t in trials)
    broken = sum(len(t.left.broken) for t in trials)
    procs = sum(len(t.left.processes) for t in trials)
    locks = sum(len(t.left.locks) for t in trials)
    secs = statistics.median(t.elapsed for t in trials) if trials else 0.0
    return (
        f"| {fault} | {runs} | {correct} | {clear} | {said} | {partial} | {broken} | {procs} "
        f"| {locks} | {_notice(trials)} | {secs:.1f} |"
    )


def verdicts(results: dict[str, list[Trial]]) -> list[str]:
    trials = [t for ts in results.values() for t in ts]
    ok = sum(t.ok for t in trials)
    left = sum(len(t.left.broken) for t in trials)
    partial = sum(len(t.left.partial) for t in trials)
    stray = sum(len(t.left.processes) + len(t.left.locks) for t in trials)
    frozen = [t.notice for t in results.get("frozen", []) if t.notice is not None]
    worst = max(frozen, default=None)
    said_ok = "MET" if ok == len(trials) else "MISSED"
    said = f"{ok}/{len(trials)} (target: all) {said_ok}"
    registered = f"{left} (target: 0) {'MET' if left == 0 else 'MISSED'}"
    strays = f"{stray} (target: 0) {'MET' if stray == 0 else 'MISSED'}"
    notice = "not measured" if worst is None else f"worst {worst:.1f} s "
    notice += "" if worst is None else ("MET" if worst <= NOTICE_TARGET else "MISSED")
    return [
        f"- runs ending with correct outputs or a clear error, the fault said: {said}",
        f"- partial paths registered on any store: {registered}; unregistered ones left: {partial}",
        f"- processes or slot locks left: {strays}",
        f"- a frozen builder noticed within 15 s: {notice}",
    ]


INTRO = """`{command}` ({when}, {host}): each fault put in at a random moment, {iterations} runs
each on a local fleet (fzfast:4:2, fzmed:2:2, fzslow:1:2, fzhard:1:1 whose key runs only
`nix-store --serve --write`, and fzbare:1:1 whose sessions store through a nix-daemon that does
not trust them). The machine is shared with other work, so the runs per fault are
few; `--iterations N` runs more.

Columns: *correct*: exit 0 with the output valid here and byte for byte right; *clear error*:
exit non-zero with an `error:` line and no traceback; *said*: the fault reached stderr or
`--json` where it should (a builder down, its disk full, a wrong key, a restricted builder, an
untrusted user);
*partial*: unregistered paths of the run left on any store (the members' and this host's:
garbage the next GC or build of that path removes, as Nix leaves after an interrupted build);
*broken*: partial paths *registered* (valid but failing `nix-store --verify-path`);
*processes*, *locks*: the run's processes still alive (here or on a member) and slot locks
still held once it is over; *notice*: seconds from the fault to offload saying the member is down
(median / worst); *secs*: median run time.

| fault | runs | correct | clear error | said | partial | broken | processes | locks | notice | secs
|---|---|---|---|---|---|---|---|---|---|---"""

OUTRO = """An untrusted user: fzbare's daemon refuses the unsigned inputs and input-addressed
builds offload sends; offload leaves it out of the run, says why once (stderr and a `down`
`--json` event naming `trusted-users`) and builds elsewhere.

Unregistered leftovers come from builds a member was running when it was frozen: when it runs
again, Nix finds its client gone and stops the build, leaving what it wrote (as after any
interrupted build); offload cannot reach it meanwhile. A full disk's partial outputs are
deleted by offload (builds it stopped on that member at the same moment are such leftovers)."""


def render(results: dict[str, list[Trial]], *, command: str, iterations: int, when: str,
           host: str) -> str:  # fmt: skip
    intro = INTRO.format(command=command, when=when, host=host, iterations=iterations)
    lines = [
        "# Reliability: the fault suite",
        "",
        intro,
        *(row(fault, trials) for fault, trials in results.items()),
        "",
        "Targets:",
        "",
        *verdicts(results),
        "",
        OUTRO,
    ]
    notes = [f"- {t.fault}: {t.note}" for ts in results.values() for t in ts if t.note]
    if notes:
        lines += ["", "Notes on single runs (an exit status of -N: ended by signal N):", "", *notes]
    return "\n".join(lines) + "\n"
