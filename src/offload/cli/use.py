"""`offload use NAME,...|@TAG [--for DURATION]`, `offload use --clear`, `offload use`.

Chooses the builders for the builds Nix starts through ``offload-hook`` (and says which are in
force), without editing nix.conf or the machines file: the choice goes into the user's state
directory and, when this user may write it (root), into the system one the hook reads when the
nix-daemon runs it (``/var/lib/offload``), unless ``$OFFLOAD_STATE_DIR`` names the one meant.
Names are checked against the pool that ``offload machines`` shows, so a typo is an error now
rather than a silent no-op later.

A choice is set (or cleared) in all of those places or in none (``offload.use.set_choice``):
one that cannot be written is an error naming it, the others left as they were. Not a warning
for the system one: root runs ``offload use`` for the nix-daemon's builds (``nixos-rebuild``),
and a choice kept only in root's own state would leave them on the whole pool unsaid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from offload.cli.arguments import machine_names
from offload.config.machines.model import shown
from offload.config.pool import load_pool
from offload.errors import ConfigError
from offload.paths import SYSTEM_STATE_DIR, daemon_here, ensure_state_dir, state_dir, state_hint
from offload.use import Choice, parse_duration, read_choice, set_choice

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "use",
        help="choose the builders offload-hook uses",
        description="Choose the builders that offload-hook sends Nix's builds to "
        "(names, @tags or local, comma-separated); with no argument, show the choice in force.",
    )
    parser.add_argument(
        "machines", nargs="?", type=machine_names, metavar="NAME,...|@TAG", help="what to use"
    )
    parser.add_argument("--for", dest="duration", metavar="DURATION", help="e.g. 30m, 2h")
    parser.add_argument("--clear", action="store_true", help="use the whole pool again")
    parser.add_argument("--builders", metavar="SPEC", help="check names against this spec")
    parser.add_argument("--config", type=Path, metavar="FILE", help="offload.toml to read")
    parser.add_argument("--json", action="store_true", help="print the choice as JSON")
    parser.set_defaults(func=_main)


def _places() -> list[Path]:
    places = [state_dir()]
    if os.environ.get("OFFLOAD_STATE_DIR"):
        # A state directory named on purpose (a test, a second setup) is the only one meant.
        return places
    system = SYSTEM_STATE_DIR
    if system not in places and (os.geteuid() == 0 or os.access(system, os.W_OK)):
        places.append(system)
    return places


def _show(places: list[Path], *, as_json: bool) -> int:
    now = time.time()
    found = {str(p): read_choice(p, now) for p in places}
    if as_json:
        data = {
            place: None if c is None else {"machines": c.machines, "until": c.until}
            for place, c in found.items()
        }
        print(json.dumps(data))
        return 0
    for place, choice in found.items():
        if choice is None:
            print(f"{place}: the whole pool (no `offload use` in force)")
            continue
        until = "until cleared"
        if choice.until is not None:
            until = "until " + time.strftime("%Y-%m-%d %H:%M", time.localtime(choice.until))
        print(f"{place}: {','.join(choice.machines)} ({until})")
    return 0


def _hint(place: Path) -> str:
    if place != SYSTEM_STATE_DIR:
        return state_hint()
    return (
        f"as root, `offload use` chooses for the nix-daemon's offload-hook too, in {place}:"
        " make it writable, or set OFFLOAD_STATE_DIR to choose in that state directory only"
    )


def _check_combination(args: argparse.Namespace) -> None:
    """What was given alongside is not dropped silently: `use --for 2h` (the names forgotten)
    showed the choice, and `use --clear fast` cleared it, each as if the rest were not there."""
    if args.clear and (args.machines is not None or args.duration is not None):
        raise ConfigError(
            "--clear takes no builders and no --for", hint="`offload use --clear` alone"
        )
    if args.duration is not None and args.machines is None:
        raise ConfigError(
            "--for: no builders to use for that long", hint="offload use NAME,... --for 2h"
        )


def _daemon_unchosen(places: list[Path]) -> bool:
    """Do builds through a nix-daemon here (nix-build, nixos-rebuild as a user) take no part
    of this choice? Its offload-hook runs as root and reads ``/var/lib/offload`` alone, which
    this user may not write: the choice then holds only for a Nix without a daemon."""
    if os.environ.get("OFFLOAD_STATE_DIR") or SYSTEM_STATE_DIR in places:
        return False
    return daemon_here()


def _tell_daemon(places: list[Path]) -> None:
    if _daemon_unchosen(places):
        print(
            f"note: builds through the nix-daemon (nix-build, nixos-rebuild) take the choice in"
            f" {SYSTEM_STATE_DIR}, which this user may not write: `sudo offload use ...`"
            " chooses for them",
            file=sys.stderr,
        )


def _main(args: argparse.Namespace) -> int:
    places = _places()
    _check_combination(args)
    if args.clear:
        set_choice(places, None, _hint)
        _tell_daemon(places)
        if args.json:  # what is in force now, as a choice set says it (it printed the text)
            return _show(places, as_json=True)
        print("offload-hook uses the whole pool again")
        return 0
    if args.machines is None:
        return _show(places, as_json=args.json)
    # Each once, in the order given: as `offload build --on fast,fast` builds on fast once.
    tokens = tuple(dict.fromkeys(t.strip() for t in args.machines.split(",") if t.strip()))
    # The duration first, as the command line gives it: its own error, not the pool's.
    # `--for "$DUR"` with DUR unset is no duration, not for ever (parse_duration says so).
    lasting = parse_duration(args.duration) if args.duration is not None else None
    # The same checks `offload build --on` makes: unknown names and tags are errors, and so
    # is a choice of no machine that takes jobs (a builder offload never connects to, one of
    # max-jobs 0): the hook would decline every build, saying it used them.
    pool = load_pool(builders=args.builders, config=args.config)
    for warning in pool.warnings:
        print(f"warning: {shown(warning, 2000)}", file=sys.stderr)
    if (none := pool.select(on=tokens).no_machine()) is not None:
        raise ConfigError(f"{args.machines}: no machine to build on: {none[0]}", hint=none[1])
    now = time.time()
    until = now + lasting if lasting is not None else None
    ensure_state_dir()  # one that cannot be made is said as every command says it
    set_choice(places, Choice(tokens, now, until), _hint)
    _tell_daemon(places)
    return _show(places, as_json=args.json)
