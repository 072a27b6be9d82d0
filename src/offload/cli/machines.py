"""`offload machines`: show the effective pool, or convert it between the forms users keep it in.

The table is plain text on stdout (one row per machine, columns padded, nothing else there), so it
can be piped and diffed; every problem goes to stderr, one line each (``cli.machines_list``), and
exit 1 means Nix would reject the machines spec; a pool where no machine takes jobs is a
warning in the words `offload build` fails with (``Pool.no_machine``). ``--json`` prints a
list of objects instead, each with its backoff and problems. ``--reset NAME`` clears a
machine's backoff.
``add_pool_arguments`` and ``pool_from_args`` give every command that builds or inspects machines
the same ``--builders/--config/--option/--on/--exclude/-j`` handling.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from offload.backoff import REMEMBERED, Health, clear_backoff, load_backoff
from offload.cli.arguments import machine_names
from offload.cli.machines_list import (
    BACKOFF_FILE,
    backoff_places,
    format_table,
    pool_problems,
)
from offload.config.convert import machines_from_nixos, pool_to_nix, pool_to_nixos, pool_to_toml
from offload.config.machines import (
    Machine,
    machine_problems,
    parse_machines,
    read_text_file,
    shown,
)
from offload.config.naming import one_name_each
from offload.config.pool import Pool, apply_toml, load_pool
from offload.config.settings import (
    LocalMachine,
    NixSettings,
    local_machine,
    parse_offload_toml,
    read_nix_settings,
)
from offload.errors import ConfigError
from offload.names import LOCAL
from offload.numerals import is_decimal
from offload.status import read_backoff
from offload.typing_compat import override

__all__ = ["add_pool_arguments", "machine_json", "pool_from_args", "register", "run"]


class MachineJson(TypedDict):
    name: str
    local: bool
    uri: str
    scheme: str
    host: str | None
    user: str | None
    port: int | None
    systems: list[str]
    ssh_key: str | None
    max_jobs: int
    speed_factor: float
    supported_features: list[str]
    mandatory_features: list[str]
    public_host_key: str | None
    host_key_pinned: bool
    params: dict[str, str]
    tags: list[str]
    enabled: bool
    source: str
    backoff: BackoffJson | None
    problems: list[str]


class BackoffJson(TypedDict):
    failures: int
    until: float
    reason: str | None  # null: not known (backed off by an offload that did not keep reasons)


# The settings a flag of its own also sets: the flag's destination, and its value when not
# given (-k/--keep-going is offload build's only).
_FLAG_OF_SETTING = {
    "max-jobs": ("max_jobs", None),
    "builders": ("builders", None),
    "keep-going": ("keep_going", False),
}


class _NixOption(argparse.Action):
    """--option NAME VALUE, appended in order. Nix applies its settings in command-line order,
    so ``--option max-jobs N`` after ``-j`` (``builders`` after ``--builders``, ``keep-going``
    after ``-k``) is the one that holds: the flag's value is dropped and the option's taken,
    as in nix-build."""

    @override
    def __call__(
        self,
        _parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        _option_string: str | None = None,
    ) -> None:
        assert isinstance(values, list)  # nargs=2
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), values])
        flag = _FLAG_OF_SETTING.get(values[0])
        if flag is not None and hasattr(namespace, flag[0]):
            setattr(namespace, *flag)


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("machines")
    group.add_argument("--builders", metavar="SPEC", help="machines spec, as Nix's --builders")
    group.add_argument("--config", metavar="FILE", type=Path, help="offload.toml to use")
    group.add_argument(
        "--option",
        nargs=2,
        action=_NixOption,
        default=[],
        metavar=("NAME", "VALUE"),
        help="a Nix setting, as nix-build's --option (e.g. --option builders SPEC)",
    )
    group.add_argument(
        "--on", action="append", default=[], metavar="NAME,...", help="use only these (@tag, local)"
    )
    group.add_argument(
        "--exclude", action="append", default=[], metavar="NAME,...", help="do not use these"
    )
    group.add_argument(
        "-j", "--max-jobs", type=_jobs, metavar="N", help="local jobs; 0 builds remotely only"
    )


def _jobs(text: str) -> int:
    if text == "auto":
        import os

        return os.cpu_count() or 1
    # Nix's max-jobs is an unsigned int: a larger number is refused, as nix-build refuses it.
    if not is_decimal(text) or int(text) >= 1 << 32:
        msg = "configuration setting 'max-jobs' should be 'auto' or an integer"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def _options(args: argparse.Namespace) -> dict[str, str]:
    return {str(pair[0]): str(pair[1]) for pair in args.option}


def pool_from_args(args: argparse.Namespace) -> Pool:
    """The selected pool for a command with ``add_pool_arguments``; warnings go to stderr."""
    return _whole_pool(args).select(on=args.on, exclude=args.exclude, max_jobs=args.max_jobs)


def _whole_pool(args: argparse.Namespace) -> Pool:
    pool = load_pool(builders=args.builders, config=args.config, options=_options(args))
    for warning in pool.warnings:  # one line each, whatever a file put in it
        print(f"warning: {shown(warning, 2000)}", file=sys.stderr)
    return pool


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "machines",
        help="show the pool of builders, or convert it (machines file, NixOS, offload.toml)",
        description="Show the effective pool (table on stdout, or --json), or `convert` it.",
    )
    parser.add_argument(
        "action", nargs="?", choices=["list", "convert"], default="list", help="default: list"
    )
    add_pool_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list of machines")
    parser.add_argument(
        "--wide", action="store_true", help="every column whole (URI, source, why backed off)"
    )
    parser.add_argument(
        "--reset",
        action="append",
        type=machine_names,
        default=[],
        metavar="NAME,...",
        help="clear the backoff of these machines (all: every one), then list",
    )
    conv = parser.add_argument_group("convert")
    conv.add_argument("--to", choices=["nix", "nixos", "toml"], help="output form")
    conv.add_argument("--from", dest="from_file", type=Path, metavar="FILE", help="input file")
    conv.add_argument(
        "--from-format",
        choices=["auto", "nix", "nixos", "toml"],
        default="auto",
        help="form of --from (auto: .toml, .nix, else a machines file)",
    )
    conv.add_argument(
        "--newer-nix",
        action="store_true",
        help="--to nix: keep host:port and fractional speeds (Nix >= 2.31 reads them, 2.8 not)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "convert":
        return _convert(args)
    given = [
        flag
        for flag, value in (
            ("--to", args.to),
            ("--from", args.from_file),
            ("--from-format", args.from_format != "auto"),
            ("--newer-nix", args.newer_nix),
        )
        if value
    ]
    if given:  # --from-format and --newer-nix were ignored, --to and --from said with no hint
        raise ConfigError(
            f"{', '.join(given)}: only `offload machines convert` takes "
            f"{'it' if len(given) == 1 else 'them'}",
            hint="offload machines convert --to nix|nixos|toml [--from FILE]",
        )
    pool = load_pool(
        builders=args.builders, config=args.config, options=_options(args), lenient=True
    )
    if args.reset:
        _reset(pool, args.reset)
    problems = pool_problems(pool)
    for level, text in problems:
        print(f"{level}: {shown(text, 2000)}", file=sys.stderr)
    errors = [text for level, text in problems if level == "error"]
    selected = pool.select(on=args.on, exclude=args.exclude, max_jobs=args.max_jobs)
    none = selected.no_machine()
    if none is not None:  # as `offload build` fails with it: a table alone did not say it
        print(f"warning: no machine to build on: {none[0]}\nhint: {none[1]}", file=sys.stderr)
    if not args.on and not args.exclude:
        # Show disabled (and unusable) machines too, marked, so a person sees why.
        selected = Pool(selected.local, pool.machines, pool.warnings, pool.local_entry)
    backoff = read_backoff(backoff_places(), time.time(), pool)
    if args.json:
        print(json.dumps(pool_json(selected, backoff), indent=2))
    else:
        print(format_table(selected, backoff, wide=args.wide), end="")
    if errors:
        print(
            f"hint: fix the {len(errors)} error(s) above, then run this again: offload rejects"
            " the whole machines spec for any of them, as Nix does for all but those said to"
            " be offload's own",
            file=sys.stderr,
        )
        return 1
    return 0


def _reset(pool: Pool, values: Sequence[str]) -> None:
    names = [n.strip() for value in values for n in value.split(",") if n.strip()]
    now = time.time()
    places = backoff_places()
    known = read_backoff(places, now)
    # Those whose backoff ended, kept to count their next failure from: forgotten too.
    ended = {
        name
        for place in places
        for name in load_backoff(place / BACKOFF_FILE, now, ended_within=REMEMBERED)
    } - known.keys()
    if "all" in names:
        names = sorted({*known, *ended})
    pool_names = set(pool.names())
    for name in names:
        if name not in known and name not in ended and name not in pool_names:
            raise ConfigError(
                f"--reset {name}: no machine of that name, and no backoff for it",
                hint=f"known names: {', '.join(pool.names())}",
            )
    kept: list[str] = []  # why a backoff asked to be cleared is still in force
    for place in places:
        path = place / BACKOFF_FILE
        try:
            cleared = clear_backoff(path, names, now)
        except OSError as exc:
            held = [n for n in names if n in load_backoff(path, now)]
            kept += [f"{', '.join(held)} in {path}: {exc.strerror}"] if held else []
            continue
        for name in cleared:
            print(f"offload: backoff of {name} cleared ({path})", file=sys.stderr)
    for name in names:
        if name in ended:
            print(f"offload: {name}'s failures before its backoff ended forgotten", file=sys.stderr)
        elif name not in known:
            print(f"offload: {name} was not backed off", file=sys.stderr)
    if kept:
        # What was asked was not done: the builder stays left out of runs and the hook's work.
        raise ConfigError(
            f"--reset: cannot clear the backoff of {'; '.join(kept)}",
            hint="run it where you may write that file (sudo for the nix-daemon's hook's)",
        )


# --- list ---------------------------------------------------------------------------------------


def _backoff_json(health: Health | None) -> BackoffJson | None:
    if health is None:
        return None
    return {"failures": health.failures, "until": health.until, "reason": health.reason}


def machine_json(machine: Machine, backoff: Health | None = None) -> MachineJson:
    return {
        "name": machine.name,
        "local": False,
        "uri": machine.uri,
        "scheme": machine.scheme,
        "host": machine.host,
        "user": machine.user,
        "port": machine.port,
        "systems": list(machine.systems),
        "ssh_key": machine.ssh_key,
        "max_jobs": machine.max_jobs,
        "speed_factor": machine.speed_factor,
        "supported_features": sorted(machine.supported_features),
        "mandatory_features": sorted(machine.mandatory_features),
        "public_host_key": machine.public_host_key,
        "host_key_pinned": machine.public_host_key is not None,
        "params": dict(machine.params),
        "tags": sorted(machine.tags),
        "enabled": machine.enabled,
        "source": machine.source,
        "backoff": _backoff_json(backoff),
        "problems": machine_problems(machine, os.path.exists),
    }


def _local_json(local: LocalMachine) -> MachineJson:
    return {
        "name": LOCAL,
        "local": True,
        "uri": "local",
        "scheme": "local",
        "host": None,
        "user": None,
        "port": None,
        "systems": list(local.systems),
        "ssh_key": None,
        "max_jobs": local.max_jobs,
        "speed_factor": local.speed_factor,
        "supported_features": sorted(local.supported_features),
        "mandatory_features": [],
        "public_host_key": None,
        "host_key_pinned": False,
        "params": {},
        "tags": [],
        "enabled": True,
        "source": "Nix settings / offload.toml [local]",
        "backoff": None,
        "problems": [],
    }


def pool_json(pool: Pool, backoff: Mapping[str, Health] | None = None) -> list[MachineJson]:
    backoff = backoff or {}
    rows = [_local_json(pool.local)] if pool.local is not None else []
    return rows + [machine_json(m, backoff.get(m.name)) for m in pool.machines]


# --- convert ------------------------------------------------------------------------------------


def _detect(path: Path, given: str) -> str:
    if given != "auto":
        return given
    return {".toml": "toml", ".nix": "nixos"}.get(path.suffix, "nix")


def _read(path: Path) -> str:
    text = read_text_file(str(path), named=True)  # `--from <(...)`: 120 s, as README says
    if text is None:
        raise ConfigError(f"{path}: no such file", hint="check --from")
    return text


def _nixos_json(path: Path) -> object:
    from offload import process
    from offload.nix import error_position, first_error_line

    argv = ["nix-instantiate", "--eval", "--strict", "--json", str(path.resolve())]
    done = process.run(argv, check=False, timeout=60)
    if done.returncode != 0:
        # Nix's message and where it is, not the code frame's last line.
        where = error_position(done.stderr)
        message = first_error_line(done.stderr) + (f" (at {where})" if where else "")
        raise ConfigError(
            f"{path}: nix-instantiate could not evaluate it: {message}",
            hint="the file must evaluate to nix.buildMachines' list (not a NixOS module)",
        )
    try:
        return json.loads(done.stdout)
    except ValueError as exc:
        raise ConfigError(f"{path}: nix-instantiate printed no JSON") from exc


def pool_from_file(path: Path, form: str, settings: NixSettings) -> Pool:
    """A pool from one file in any of the three forms (the local entry only from toml)."""
    form = _detect(path, form)
    system = settings.system
    local = None
    if form == "nixos":
        machines = machines_from_nixos(_nixos_json(path), source=str(path), system=system)
        warnings: list[str] = []
    elif form == "toml":
        toml = parse_offload_toml(_read(path), str(path))
        machines, warnings = apply_toml([], toml, system=system)
        local = local_machine(settings, toml.local) if toml.local is not None else None
    else:
        # Its relative @includes are relative to the current directory (and `--builders
        # @FILE`), not to the file's, as Nix reads them from its hook's (/): said as warnings.
        machines, warnings = parse_machines(_read(path), source=str(path), system=system)
    machines, repeated = one_name_each(machines)
    return Pool(local, tuple(machines), (*warnings, *repeated))


def _convert(args: argparse.Namespace) -> int:
    if args.to is None:
        raise ConfigError("`offload machines convert` needs --to nix, nixos or toml")
    listing = [
        f for f, v in (("--json", args.json), ("--wide", args.wide), ("--reset", args.reset)) if v
    ]
    if listing:  # they were ignored: the machines file printed, no backoff cleared
        raise ConfigError(
            f"{', '.join(listing)}: not for `offload machines convert`, which writes the --to form",
            hint="leave out convert to list the pool (--json, --wide) or clear backoff (--reset)",
        )
    if args.from_file is not None:
        settings = read_nix_settings(options=_options(args))
        whole = pool_from_file(args.from_file, args.from_format, settings)
        for warning in (*settings.warnings, *whole.warnings):
            print(f"warning: {shown(warning, 2000)}", file=sys.stderr)
    else:
        whole = _whole_pool(args)
    pool = whole.select(on=args.on, exclude=args.exclude, max_jobs=args.max_jobs)
    if not (args.on or args.exclude):
        pool = dataclasses.replace(pool, machines=_convertible(whole.machines, args.to))
    _lost_in_nix_forms(pool.machines, args.to, nix28=not args.newer_nix)
    if args.to == "nix":
        sys.stdout.write(pool_to_nix(pool, nix28=not args.newer_nix))
    elif args.to == "nixos":
        sys.stdout.write(pool_to_nixos(pool))
    else:
        sys.stdout.write(pool_to_toml(pool))
    return 0


def _lost_in_nix_forms(machines: Sequence[Machine], to: str, *, nix28: bool) -> None:
    """Warn of what a machine loses in Nix's forms, beside the comment the file holds: a port
    (Nix 2.8 cannot take host:port; NixOS's hostName never), whose line then reaches port 22,
    maybe another machine; and ``builders-use-substitutes``, offload's per machine, which Nix
    reads from nix.conf only, for every builder (in a URI: "unknown setting")."""
    if to == "toml":
        return
    for m in machines:
        name = shown(m.name, 200)
        if m.port is not None and (to == "nixos" or nix28):
            form = "NixOS's hostName" if to == "nixos" else "Nix 2.8's machines format"
            print(
                f"warning: {name}: port {m.port} dropped: {form} cannot hold it, and the line"
                " reaches port 22 (use an ssh Host alias with its Port)",
                file=sys.stderr,
            )
        if "builders-use-substitutes" in m.params:
            print(
                f"warning: {name}: builders-use-substitutes stays in its URI for offload; Nix"
                " reads it from nix.conf only, for every builder, and warns of it there as an"
                " unknown setting",
                file=sys.stderr,
            )


def _convertible(machines: Sequence[Machine], to: str) -> tuple[Machine, ...]:
    """Every machine of the file but those the ``to`` form cannot hold as they are, each of
    those said: a conversion loses nothing unsaid (a selection left out machines that offload
    does not use: disabled ones, and those it never connects to). A store on this host named
    as a builder is Nix's to use: kept in Nix's forms."""
    kept = []
    for m in machines:
        nixs = m.is_store_here and m.not_connected == m.scheme_problem and to != "toml"
        if m.not_connected is not None and not nixs:
            why = f"offload never connects to it: {m.not_connected}"
        elif not m.enabled and to != "toml":
            why = f"enabled = false has no form in a {to} file, where a machine is used"
        else:
            kept.append(m)
            continue
        print(f"warning: {shown(m.name, 200)} left out: {why}", file=sys.stderr)
    return tuple(kept)
