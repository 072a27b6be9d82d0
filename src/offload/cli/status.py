"""`offload status [--json] [--watch]`: the pool right now, from this host's shared files.

Per machine: slots in use (by any offload process or Nix's own hook on this host) and when the
holders expect to be done, what offload's holders build there and for whom, backoff (until when,
after how many failures, and why: a line per backed-off machine, saying so when the entry
predates kept reasons), whether the `offload use` choice in force keeps it, and a builder whose
slots are counted on this host only (no slot lock on the builder), with why, as the last build
there found, and a builder the hook's coordinator gives fewer slots for its load, with the
report that cut it, and the builders an ssh connection is kept open to for the next run
(``offload.transport.persist``).
Nothing connects to a builder (``offload doctor`` does), so it answers at once; ``--watch``
redraws it every ``--interval`` seconds until interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from offload.backoff import REASON_CHARS
from offload.cli import interrupts
from offload.cli.machines import add_pool_arguments, pool_from_args
from offload.config.machines import shown
from offload.errors import ConfigError
from offload.paths import SYSTEM_STATE_DIR, state_dir
from offload.slots import SlotLocks
from offload.status import MachineStatus, PoolStatus, pool_status

__all__ = ["register", "run"]


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not 0.1 <= value <= 3600:  # NaN and infinity too: sleep() takes neither
        raise argparse.ArgumentTypeError("the interval must be between 0.1 and 3600 seconds")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "status",
        help="the pool right now: slots in use on this host and who builds what, backoff, the"
        " `offload use` choice",
        description="Show slots in use and who builds what, backoff and the builder choice, per"
        " machine.",
    )
    add_pool_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--watch", action="store_true", help="redraw until interrupted")
    parser.add_argument(
        "--interval", type=_interval, metavar="SECONDS", help="with --watch: default 2"
    )
    parser.set_defaults(func=run)


# Accepted derivations named in the status's line: a nix-build of thousands waits in hundreds.
_QUEUED_SHOWN = 8


def _places() -> list[Path]:
    # The user's state, and the nix-daemon's hook's when it can be read (root): `offload use`
    # writes both, and backoff is kept by whichever hook or run met the dead builder.
    places = [state_dir()]
    system = SYSTEM_STATE_DIR
    if system not in places and os.access(system, os.R_OK | os.X_OK):
        places.append(system)
    return places


def _local(at: float) -> time.struct_time | None:
    """``at`` in local time; None for a time no clock shows, from a state file offload did not
    write so (a hand edit, a damaged loads.json): the rest of the status is still worth seeing."""
    try:
        return time.localtime(at)
    except (OverflowError, OSError, ValueError):
        return None


def _clock(at: float) -> str:
    local = _local(at)
    return "?" if local is None else time.strftime("%H:%M:%S", local)


def _day_and_clock(at: float) -> str:
    """``at`` as a clock time, with its date when that is not today: a choice may last days
    (`--for 3d`), and a clock time alone said it ended today."""
    local = _local(at)
    if local is None:
        return "?"
    day, clock = time.strftime("%Y-%m-%d", local), time.strftime("%H:%M:%S", local)
    return clock if day == time.strftime("%Y-%m-%d") else f"{day} {clock}"


def _in_use(machine: MachineStatus) -> str:
    text = f"{machine.in_use}/{machine.slots}"
    if machine.by_nix:
        text += f" ({machine.by_nix} by Nix's hook)"
    return text


def _free_by(ends: Sequence[float], now: float) -> str:
    """When the soonest of a machine's held slots is expected to free: its holder's estimate,
    ``late`` once that is past (the build runs longer than guessed)."""
    if not ends:
        return "-"
    return f"{_clock(ends[0])}{' (late)' if ends[0] < now else ''}"


def _builds_line(machine: MachineStatus, now: float) -> str | None:
    """``fast: building hello-2.12 (alice, offload-hook, until 14:05:03), ...``: who builds
    what in the machine's slots held on this host by offload (Nix's hook's are counted in
    IN USE, with nothing to say what they build)."""
    if not machine.builds:
        return None
    said = []
    for build in machine.builds:
        about = [who for who in (build.user, build.program) if who is not None]
        if build.until is not None:
            about.append(f"until {_clock(build.until)}{' (late)' if build.until < now else ''}")
        what = build.drv or "a build"
        said.append(f"{what} ({', '.join(about)})" if about else what)
    return f"{machine.name}: building {', '.join(said)}"


def format_status(status: PoolStatus, now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = [["MACHINE", "IN USE", "FREE BY", "BACKOFF", "CHOSEN"]]
    for machine in status.machines:
        backoff = "-"
        if machine.backoff is not None:
            failures = machine.backoff.failures
            backoff = f"until {_clock(machine.backoff.until)} ({failures} failure"
            backoff += "s)" if failures != 1 else ")"
        free_by = _free_by(machine.expected_free, now)
        rows.append(
            [
                machine.name,
                _in_use(machine),
                free_by,
                backoff,
                "yes" if machine.chosen else "no",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines += [line for machine in status.machines if (line := _builds_line(machine, now))]
    lines += [
        f"{machine.name}: backed off: {shown(machine.backoff.why, REASON_CHARS)} (fixed since? "
        f"`offload machines --reset {machine.name}` tries it from the next run)"
        for machine in status.machines
        if machine.backoff is not None
    ]
    lines += [
        f"{machine.name}: slots counted on this host only "
        f"(learned {_clock(machine.slot_fallback.learned)}): "
        f"{shown(machine.slot_fallback.reason, REASON_CHARS)}"
        for machine in status.machines
        if machine.slot_fallback is not None
    ]
    connected = [machine.name for machine in status.machines if machine.connected]
    if connected:
        lines.append(f"ssh connections kept open (up to 2 idle minutes): {', '.join(connected)}")
    lines += [
        f"{machine.name}: loaded (hook coordinator, reported {_clock(machine.loaded.reported)}): "
        f"{shown(machine.loaded.said, REASON_CHARS)}"
        for machine in status.machines
        if machine.loaded is not None
    ]
    if status.queued:
        lines.append(_queued_line(status))
    lines.append(_choice_line(status))
    return "".join(f"{line}\n" for line in lines)


def _queued_line(status: PoolStatus) -> str:
    """The derivations offload-hook accepted that wait for a builder slot (Nix said each was
    building on a builder already), the longest waiting first."""
    shown = [f"{q.drv} (since {_clock(q.since)})" for q in status.queued[:_QUEUED_SHOWN]]
    more = len(status.queued) - len(shown)
    return (
        f"offload-hook: {len(status.queued)} accepted, waiting for a builder slot: "
        + ", ".join(shown)
        + (f", and {more} more" if more else "")
    )


def _choice_line(status: PoolStatus) -> str:
    """The ``offload use`` choice in force, and whose it is when it is not in the user's own
    state directory (the nix-daemon's hook's only: this user's own hook uses the whole pool)."""
    choice = status.choice
    if choice is None:
        return "offload use: none (the hook may use the whole pool)"
    until = "until cleared" if choice.until is None else f"until {_day_and_clock(choice.until)}"
    line = f"offload use: {','.join(choice.machines)} ({until})"
    if status.choice_dir != status.own_dir:
        line += f", the nix-daemon's hook's ({status.choice_dir}): yours has none"
    return line


def status_json(status: PoolStatus) -> dict[str, object]:
    choice = status.choice
    return {
        "machines": [machine.as_json() for machine in status.machines],
        "use": None
        if choice is None
        else {
            "machines": list(choice.machines),
            "until": choice.until,
            "dir": str(status.choice_dir),
        },
        "slot_dir": str(status.slot_dir),
        "queued": [queued.as_json() for queued in status.queued],
    }


def run(args: argparse.Namespace) -> int:
    if args.interval is not None and not args.watch:  # it printed one snapshot, unsaid
        raise ConfigError(
            "--interval: only --watch redraws the status",
            hint="offload status --watch --interval N",
        )
    pool = pool_from_args(args)
    places = _places()
    # Read-only: probes, makes nothing. A user's own slots are in its state directory; root's
    # hooks and the daemon's hold theirs in Nix's (``slots.others``), on the same builders:
    # both are counted (those it cannot open by their locks).
    slots = SlotLocks.default(places[0], make=False)
    if not args.watch:
        _show(args, pool_status(pool, places, slots, time.time(), _sshopts()))
        return 0
    try:
        while True:
            _show(args, pool_status(pool, places, slots, time.time(), _sshopts()))
            time.sleep(args.interval or 2.0)
            if not args.json and not sys.stdout.isatty():
                print(flush=True)  # a blank line between snapshots when piped
    except KeyboardInterrupt:
        # Ctrl-C is how a watch ends, as `watch` ends: 0, whenever it comes. SIGTERM and
        # SIGHUP stop it as they stop any command: 128 + their number.
        status = interrupts.stopped_status()
        return 0 if status == 128 + signal.SIGINT else status


def _sshopts() -> str:
    return os.environ.get("NIX_SSHOPTS", "")


def _show(args: argparse.Namespace, status: PoolStatus) -> None:
    if args.json:
        print(json.dumps(status_json(status)), flush=True)
        return
    if args.watch and sys.stdout.isatty():
        print("\033[H\033[2J", end="")  # home and clear: redraw in place
    print(format_status(status), end="", flush=True)
