"""`offload doctor [NAME...]`: check that each builder of the pool is usable, and say the fix.

The machines are the pool as ``offload machines`` shows it (``--builders``, Nix's settings,
offload.toml); NAMEs (names, hosts, ``@tags``) narrow it. The report goes to stdout (a table, or
``--json``: a list of machines with their checks); the exit status is 1 when a selected machine
has a failing check, so scripts can gate on it.

A builder that passes is not yet used when an earlier run or the hook backed it off: runs leave
it out until its backoff ends. The text report says so below the table, with the command that
puts it back (as ``offload status`` does), so doctor and status never disagree about it unsaid;
``--json`` gives each machine its ``backoff`` (until, failures, why; null when none).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from offload.backoff import REASON_CHARS, Health
from offload.cli import interrupts
from offload.cli.arguments import machine_names
from offload.cli.machines import add_pool_arguments, pool_from_args
from offload.cli.machines_list import backoff_places
from offload.config.machines import shown
from offload.config.machines.check import param_problems
from offload.doctor import DEFAULT_TIMEOUT, DoctorOptions, MachineReport, diagnose, format_report
from offload.errors import ConfigError
from offload.paths import daemon_here
from offload.status import read_backoff

__all__ = ["register", "run"]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError("the timeout must be more than 0 and at most 600 seconds")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "doctor",
        help="check that each builder is usable (ssh, Nix, features, disk, load) and say the fix",
        description="Check the builders of the pool, all at once; exit 1 if one is unusable.",
    )
    parser.add_argument(
        "names", nargs="*", type=machine_names, metavar="NAME", help="machines to check (@tag too)"
    )
    add_pool_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list of machines")
    parser.add_argument("-v", "--verbose", action="store_true", help="detail every check")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"connect timeout per machine (default {DEFAULT_TIMEOUT:g})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    args.on = [*args.on, *args.names]
    pool = pool_from_args(args)
    if not pool.machines and (args.on or args.exclude):
        # `offload doctor local`: the pool has builders, none of them picked (local is this
        # machine, which doctor does not log in to); "give them with --builders" was wrong.
        raise ConfigError(
            "no builder to check among those named (doctor checks builders; local is this host)",
            hint="name a builder, or none for all of them (offload machines lists them)",
        )
    if not pool.machines and pool.refused:  # given, but none offload connects to
        whys, fixes = pool.refused_said()
        raise ConfigError(f"no builder to check: offload does not connect to {whys}", hint=fixes)
    if not pool.machines:
        raise ConfigError(
            "no builders to check",
            hint="give them with --builders, Nix's builders setting or offload.toml",
        )
    for machine in pool.machines:  # as `offload machines` says them: no check finds them
        for problem in param_problems(machine):
            print(f"warning: {shown(machine.name, 200)}: {problem}", file=sys.stderr)
    options = DoctorOptions(timeout=args.timeout, env=dict(os.environ))
    reports = interrupts.run(diagnose(pool.machines, options))
    backoff = read_backoff(backoff_places(), time.time(), pool)
    if args.json:
        print(json.dumps([_as_json(report, backoff.get(report.name)) for report in reports],
                         indent=2))  # fmt: skip
    else:
        print(format_report(reports, verbose=args.verbose), end="")
        print("".join(f"{line}\n" for line in _backed_off(reports, backoff)), end="")
    if (said := _as_this_user(os.environ)) is not None:
        print(f"note: {said}", file=sys.stderr)
    # Left out of the pool (their warnings are said above): a builder that cannot be used.
    return 1 if pool.refused or any(report.failed for report in reports) else 0


def _as_this_user(env: Mapping[str, str]) -> str | None:
    """What a non-root check leaned on that the nix-daemon's builds do not have, when there
    is a daemon here: its offload-hook (or Nix's own) logs in as root, from systemd's
    environment, with root's ssh configuration: no NIX_SSHOPTS of this user's, no ssh agent,
    no ~/.ssh/config of this user's. None when it leaned on none of them, or runs as root."""
    if os.geteuid() == 0 or not daemon_here(env):
        return None
    leaned = [name for name in ("NIX_SSHOPTS", "SSH_AUTH_SOCK") if env.get(name)]
    config = Path(env.get("HOME") or "~").expanduser() / ".ssh" / "config"
    with contextlib.suppress(OSError):  # a HOME this user cannot search (su without -)
        if config.is_file():
            leaned.append(str(config))
    if not leaned:
        return None
    return (
        f"checked as this user, with {', '.join(leaned)}; builds through the nix-daemon"
        " (nix-build, nixos-rebuild) log in as root without them: `sudo offload doctor`"
        " checks as they do"
    )


def _as_json(report: MachineReport, health: Health | None) -> dict[str, object]:
    said = None if health is None else {
        "until": health.until, "failures": health.failures, "why": health.reason,
    }  # fmt: skip
    return {**report.as_json(), "backoff": said}


def _backed_off(reports: Sequence[MachineReport], backoff: Mapping[str, Health]) -> list[str]:
    """A line for each machine checked that runs leave out for an earlier failure."""
    lines = []
    for report in reports:
        health = backoff.get(report.name)
        if health is None:
            continue
        until = time.strftime("%H:%M:%S", time.localtime(health.until))
        why = shown(health.why, REASON_CHARS)
        lines.append(
            f"{report.name}: backed off until {until} by an earlier run: {why}; runs "
            f"leave it out until then (fixed since? `offload machines --reset {report.name}` "
            "tries it from the next run)"
        )
    return ["", *lines] if lines else []
