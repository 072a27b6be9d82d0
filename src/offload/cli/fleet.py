"""`offload fleet`: a local fleet of loopback builders for tests and demos.

``up`` starts members (default ``fast:4:2 medium:2:2 slow:1:2``) and is idempotent: running
members with the same spec are kept, dead ones restarted, and a running member whose spec
differs is an error (run ``down`` first). ``down`` stops exactly what ``up`` recorded, even
after a crash; ``--purge`` also removes the directory and the members' stores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from offload.cli.arguments import FLEET_DIR_HELP, nonempty_path
from offload.errors import FleetError

if TYPE_CHECKING:
    from offload.fleet import MemberStatus

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("fleet", help="manage a local fleet of loopback builders")
    actions = parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        action = actions.add_parser(name, help=help_text)
        action.add_argument(
            "--dir",
            type=nonempty_path,
            default=None,
            help=FLEET_DIR_HELP,
        )
        return action

    up = add("up", "start the fleet (idempotent)")
    up.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="NAME[:SPEED[:JOBS[:KIND]]]",
        help="a member; repeatable (default: fast:4:2 medium:2:2 slow:1:2). KIND serve or daemon "
        "makes its key run only one program (nix-store --serve --write, nix-daemon --stdio), "
        "by authorized_keys, or by sshd's ForceCommand with @sshd (serve@sshd); untrusted makes "
        "its sessions store through a nix-daemon that does not trust them",
    )
    up.set_defaults(func=_up)
    down = add("down", "stop the fleet (idempotent)")
    down.add_argument("--purge", action="store_true", help="also remove the directory and stores")
    down.set_defaults(func=_down)
    status = add("status", "show the members and whether they run")
    status.add_argument("--json", action="store_true", help="print JSON on stdout")
    status.set_defaults(func=_status)
    add("machines", "print the Nix machines file").set_defaults(func=_machines)
    add("env", "print shell exports for `eval`").set_defaults(func=_env)


def _dir(args: argparse.Namespace) -> Path:
    from offload.fleet import default_fleet_dir

    given: Path | None = args.dir
    return (given or default_fleet_dir(os.environ, Path.home())).absolute()


def _up(args: argparse.Namespace) -> int:
    from offload.fleet import DEFAULT_SPECS, MemberSpec, fleet_status, fleet_up

    specs = tuple(MemberSpec.parse(m) for m in args.member) or DEFAULT_SPECS
    fleet = fleet_up(_dir(args), specs)
    _print_table(fleet_status(fleet.dir), sys.stderr)
    env_cmd = shlex.join(["offload", "fleet", "env", "--dir", str(fleet.dir)])
    print(f'fleet in {fleet.dir}; use it with: eval "$({env_cmd})"', file=sys.stderr)
    return 0


def _down(args: argparse.Namespace) -> int:
    from offload.fleet import fleet_down, fleet_status

    where = _dir(args)
    statuses = fleet_status(where)
    fleet_down(where, purge=args.purge)
    if not statuses:
        print(f"no fleet in {where}: nothing to stop", file=sys.stderr)
        return 0
    running = sum(status.running for status in statuses)
    gone = f"; {where} removed" if args.purge else f" (their stores stay in {where})"
    print(
        f"fleet stopped: {running} of {len(statuses)} members were running{gone}", file=sys.stderr
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from offload.fleet import fleet_status

    statuses = fleet_status(_dir(args))
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    elif statuses:
        _print_table(statuses, sys.stdout)  # what was asked for: stdout, as --json
    else:
        print(f"no fleet in {_dir(args)}", file=sys.stderr)
    return 0


def _machines(args: argparse.Namespace) -> int:
    from offload.fleet import open_fleet

    fleet = open_fleet(_dir(args))
    try:
        text = fleet.machines_file.read_text()
    except OSError as exc:
        raise FleetError(f"cannot read {fleet.machines_file}: {exc.strerror}") from exc
    sys.stdout.write(text)  # a failure here is stdout's (offload.streams), not the file's
    return 0


def _env(args: argparse.Namespace) -> int:
    from offload.fleet import open_fleet

    fleet = open_fleet(_dir(args))
    print(f"export NIX_SSHOPTS={shlex.quote(fleet.sshopts)}")
    print(f"export OFFLOAD_FLEET_DIR={shlex.quote(str(fleet.dir))}")
    return 0


def _print_table(statuses: Sequence[MemberStatus], stream: TextIO) -> None:
    rows = [("NAME", "PORT", "SPEED", "JOBS", "PID", "STATE")]
    for status in statuses:
        m = status.member
        rows.append(
            (
                m.name,
                str(m.port),
                f"{m.spec.speed:g}",
                str(m.spec.jobs),
                str(m.pid),
                "running" if status.running else "stopped",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
            file=stream,
        )
