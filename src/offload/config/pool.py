"""The effective pool for one run, and choosing builders from it.

A pool is the local machine's entry (``None`` when it builds nothing: ``-j 0`` or Nix's
``max-jobs = 0``) plus the remote machines in the machines spec's order, each with a name of
its own (``config.naming``). ``select`` narrows it for one run: ``--on`` keeps only what it names
(``local`` included only when named), ``--exclude`` drops what it names, ``-j`` sets or removes
the local entry. A token matches the machine of that name, else every machine with that ssh
host or URI (``a`` is ``ssh://a``, not ``a:2222``, unless no machine is named ``a``); ``@tag``
matches offload.toml tags. Disabled machines (``enabled = false``) stay listed but are never
selected unless ``--on`` names them.

The pool converts to and from the three forms users keep it in in ``config.convert``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from offload.booleans import nix_bool
from offload.config.machines import (
    Machine,
    default_name,
    machine_from_columns,
    parse_store_uri,
    shown,
)
from offload.config.machines.check import claim_problems, refusals
from offload.config.machines.uri import TOML_PARAMS
from offload.config.naming import one_name_each
from offload.config.reading import read_spec
from offload.config.settings import (
    LocalMachine,
    NixSettings,
    OffloadToml,
    TomlMachine,
    builders_spec,
    load_offload_toml,
    local_claims,
    local_machine,
    read_nix_settings,
    substitutes_locally,
    with_nix_options,
)
from offload.errors import ConfigError
from offload.names import LOCAL
from offload.spelling import meant

__all__ = ["Pool", "apply_toml", "load_pool"]


def _split_names(values: Sequence[str]) -> list[str]:
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


@dataclass(frozen=True)
class Pool:
    local: LocalMachine | None
    machines: tuple[Machine, ...]
    warnings: tuple[str, ...] = ()
    # The local entry Nix's settings describe even when max-jobs is 0, so `-j N` can bring it back.
    local_entry: LocalMachine | None = field(default=None, compare=False, repr=False)
    # Nix's builders-use-substitutes: builders fetch inputs from their own caches first.
    builders_use_substitutes: bool = field(default=False, compare=False)
    # Nix's substitute and substituters: the local store fetches what its caches have
    # instead of having it built.
    local_substitutes: bool = field(default=False, compare=False)
    # Nix's always-allow-substitutes (newer Nix): even a derivation with allowSubstitutes =
    # false is taken from the local binary caches.
    always_substitutes: bool = field(default=False, compare=False)
    # The run's --option pairs, for the Nix processes offload starts on this machine.
    nix_options: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    # Nix's effective settings for the run (nix.conf and the --options): what builds are given.
    nix_settings: NixSettings = field(
        default_factory=lambda: NixSettings({}), compare=False, repr=False
    )
    # Lenient reading only: the entries Nix would reject the whole spec for, one line each.
    errors: tuple[str, ...] = field(default=(), compare=False)
    # ``select`` took the local machine out by name (--exclude local, an --on without it):
    # a pool left with nothing says so rather than that it takes no jobs.
    local_left_out: bool = field(default=False, compare=False)
    # ``select``'s --on/--exclude took out every builder that could have been kept: a pool left
    # with nothing says so rather than that no builder is set.
    builders_left_out: bool = field(default=False, compare=False)
    # ``select`` would have kept these builders, but offload does not connect to them
    # (``Machine.not_connected``): a pool left with nothing names them, not "no builder set".
    refused: tuple[Machine, ...] = field(default=(), compare=False)
    # The builders ``select``'s --on/--exclude took out, and what left the local machine out
    # ("-j 0", "max-jobs = 0", "--on", "--exclude local"): ``left_out.could_build``.
    left_out: tuple[Machine, ...] = field(default=(), compare=False)
    local_out: tuple[str, ...] = field(default=(), compare=False)

    def local_env(self) -> dict[str, str] | None:
        """The environment for the local store's serve processes: ours with the run's
        --options in NIX_CONFIG, or None (inherit ours) when there are none."""
        if not self.nix_options:
            return None
        return with_nix_options(os.environ, dict(self.nix_options))

    def no_machine(self) -> tuple[str, str] | None:
        """Why no machine of this (selected) pool takes a job, after "no machine to build on: ",
        and the hint; None when one does. `offload build` fails with it, `offload machines`
        warns with it: the two say it in one wording."""
        if self.local is not None and self.local.max_jobs > 0:
            return None
        if any(m.enabled and m.max_jobs > 0 for m in self.machines):
            return None
        idle = self.idle_builders()
        if idle is not None:  # kept, but with no slot: not "left out", not "none set"
            local = (
                "--on/--exclude left out the local machine, and"
                if self.local_left_out
                else "the local machine takes no jobs, and"
            )
            return f"{local} {idle[0]}", idle[1]
        if self.refused:
            return self._refused()
        if self.local_left_out:
            return (
                "--on/--exclude left out the local machine and every builder",
                "name a machine that builds (offload machines lists them), or drop --on/--exclude",
            )
        if self.builders_left_out:
            return (
                "the local machine takes no jobs and --on/--exclude left out every builder",
                "name a builder that builds (offload machines lists them), or drop --on/--exclude",
            )
        return (
            "the local machine takes no jobs and no builder is set",
            "pass -j N, --builders, or set `builders` in nix.conf",
        )

    def _refused(self) -> tuple[str, str]:
        """``no_machine`` when the only builders kept are ones offload does not connect to:
        which, and why, with the fix as `offload machines` says it."""
        local = (
            "--on/--exclude left out the local machine"
            if self.local_left_out
            else "the local machine takes no jobs"
        )
        whys, fixes = self.refused_said()
        return f"{local}, and offload does not connect to {whys}", fixes

    def refused_said(self) -> tuple[str, str]:
        """The builders offload does not connect to, each with why, and the fixes."""
        whys = ", ".join(f"{shown(m.name)} ({m.not_connected})" for m in self.refused)
        return whys, "; ".join(line for m in self.refused for line in refusals(m))

    def stranded_hint(self) -> str:
        """The hint for work left that no machine of this pool can take mid-run (its builders
        down): check them, build here if this host can (``-j N`` where it takes no jobs, ``--on
        local`` where --on/--exclude left it out; nothing where it builds already), and
        ``--on NAME`` to retry a backed-off builder at once."""
        here = ""
        if self.local_left_out:
            here = "--on/--exclude left out the local machine (name `local` to build here); "
        elif self.local is None or self.local.max_jobs == 0:
            here = "-j N builds locally; "
        return (
            f"check the builders with `ssh` or `offload machines`; {here}"
            "naming a builder with --on retries it at once"
        )

    def idle_builders(self) -> tuple[str, str] | None:
        """``a takes no jobs (its maxJobs is 0: FILE:LINE)`` when the builders this pool kept
        all have maxJobs 0, and the hint (None when it kept none, or one takes jobs). Where it
        is 0 is where the user sets it: a machines line, or the offload.toml table that
        defined the machine or set its max-jobs over its line."""
        kept = [m for m in self.machines if m.enabled]
        if not kept or any(m.max_jobs > 0 for m in kept):
            return None
        places: dict[str, dict[str, None]] = {}  # "maxJobs" / "max-jobs": where, in order
        for m in kept:
            table = m.toml_table("max_jobs")
            key = "maxJobs" if table is None else "max-jobs"
            places.setdefault(key, {})[shown(table or m.source, 200)] = None
        one = len(kept) == 1
        whose = "its" if one else "their"
        why = "; ".join(f"{whose} {key} is 0: {', '.join(at)}" for key, at in places.items())
        # A name or a file's path may hold what a terminal acts on (an escape): said escaped.
        names = ", ".join(shown(m.name) for m in kept)
        said = f"{names} {'takes' if one else 'take'} no jobs ({why})"
        fixes = {
            "maxJobs": "maxJobs, a machines line's 4th column",
            "max-jobs": f"max-jobs in {whose} offload.toml [[machine]]",
        }
        fix = "; ".join(fixes[key] for key in places)
        hint = (
            f"give {'it' if one else 'them'} jobs ({fix}), or pick a machine that takes them"
            " (offload machines lists them)"
        )
        return said, hint

    def names(self) -> list[str]:
        return [LOCAL, *dict.fromkeys(m.name for m in self.machines)]

    def tags(self) -> list[str]:
        return sorted({tag for m in self.machines for tag in m.tags})

    def _unknown(self, token: str) -> ConfigError:
        if token.startswith("@"):
            message = f"no machine in the pool has the tag '{shown(token[1:], 200)}'"
        else:
            message = f"no machine named '{shown(token, 200)}' in the pool"
        if not self.machines:
            # Not a typo: no builder was read at all (Nix's default builders file is missing,
            # or --builders was left off a command that needs it), so say where they come from.
            return ConfigError(
                message + ", which has no builders",
                hint="give them with --builders SPEC (e.g. --builders @FILE),"
                " Nix's builders setting or offload.toml",
            )
        known = ", ".join(self.names())
        tags = ", ".join(f"@{t}" for t in self.tags()) or "none"
        words = [f"@{t}" for t in self.tags()] if token.startswith("@") else self.names()
        close = meant(token, words)
        guess = f"did you mean {shown(close)}? " if close is not None else ""
        return ConfigError(message, hint=f"{guess}known names: {known}; tags: {tags}")

    def _matches(self, token: str) -> tuple[bool, set[int], bool]:
        """(local?, indices of machines, matched by name rather than tag)."""
        if token == LOCAL:
            return True, set(), True
        if token.startswith("@"):
            found = {i for i, m in enumerate(self.machines) if token[1:] in m.tags}
            if not found:
                raise self._unknown(token)
            return False, found, False
        # A name picks its one machine (`a` is not `a:2222`); a host or URI, every one it has.
        found = {i for i, m in enumerate(self.machines) if m.name == token}
        if not found:
            found = {i for i, m in enumerate(self.machines) if token in (m.host, m.uri) and token}
        if not found:
            raise self._unknown(token)
        return False, found, True

    def select(
        self, on: Sequence[str] = (), exclude: Sequence[str] = (), max_jobs: int | None = None
    ) -> Pool:
        if max_jobs is not None and max_jobs < 0:
            raise ConfigError(f"-j {max_jobs}: the number of local jobs cannot be negative")
        local = self.local
        if max_jobs is not None:
            base = self.local or self.local_entry
            local = dataclasses.replace(base, max_jobs=max_jobs) if base and max_jobs else None
        keep = {i for i, m in enumerate(self.machines) if m.enabled}
        # Never connect with a pinned "key" ssh cannot use (ssh would refuse it; nothing looser),
        # or to a name a shell would act on (``Machine.not_connected``).
        usable = {i for i, m in enumerate(self.machines) if m.not_connected is None}
        on_names = _split_names(on)
        if on and not on_names:  # `--on ''`, `--on ,`: not the whole pool by accident
            raise ConfigError(
                "--on names no machine", hint="name one (offload machines lists them), or drop --on"
            )
        if on_names:
            keep, want_local = set(), False
            for token in on_names:
                is_local, found, by_name = self._matches(token)
                want_local |= is_local
                keep |= {i for i in found if by_name or self.machines[i].enabled}
            if want_local and local is None:
                raise ConfigError(
                    "--on local, but the local machine builds nothing here (max-jobs is 0)",
                    hint="drop -j 0, or pass -j N",
                )
            local = local if want_local else None
        local_out = _local_out(self, max_jobs, bool(on_names) and not want_local)
        for token in _split_names(exclude):
            is_local, found, _ = self._matches(token)
            if is_local and "--exclude local" not in local_out:
                local = None
                local_out += ("--exclude local",)
            keep -= found
        machines = tuple(m for i, m in enumerate(self.machines) if i in keep & usable)
        # The local machine there but for --on/--exclude: Nix's, or the one -j N brings back.
        unpicked = self.local if max_jobs is None else (self.local or self.local_entry)
        named_out = bool(on_names or _split_names(exclude)) and max_jobs != 0
        left_out = local is None and named_out and unpicked is not None
        # Builders there but for --on/--exclude (`-j 0 --exclude a`): not "no builder is set".
        could = any(self.machines[i].enabled for i in usable)
        out = not machines and could and bool(on_names or _split_names(exclude))
        refused = tuple(m for i, m in enumerate(self.machines) if i in keep - usable)
        return dataclasses.replace(
            self,
            local=local,
            machines=machines,
            local_left_out=left_out,
            builders_left_out=out,
            refused=refused,
            left_out=tuple(m for i, m in enumerate(self.machines) if i not in keep and m.enabled),
            local_out=local_out,
        )


def _local_out(pool: Pool, max_jobs: int | None, on_without: bool) -> tuple[str, ...]:
    """What leaves ``pool``'s local machine out before --exclude: -j 0, a max-jobs of 0 (Nix's
    settings, offload.toml), an --on that does not name it."""
    out: tuple[str, ...] = ()
    if max_jobs == 0:
        out += ("-j 0",)
    elif max_jobs is None and pool.local is None and pool.local_entry is not None:
        out += ("max-jobs = 0",)
    return out + (("--on",) if on_without else ())


# --- offload.toml over the machines spec --------------------------------------------------------


def _toml_columns(entry: TomlMachine, uri: str) -> list[str | None]:
    systems = None
    if entry.systems is not None:
        systems = ",".join(entry.systems) or ","
    features = [entry.supported_features, entry.mandatory_features]
    speed = entry.speed_factor
    return [
        uri,
        systems,
        entry.ssh_key,
        None if entry.max_jobs is None else str(entry.max_jobs),
        None if speed is None else repr(speed),
        *(None if f is None else ",".join(sorted(f)) or None for f in features),
        entry.public_host_key,
    ]


_COLUMN_OF = {
    "systems": 1,
    "ssh_key": 2,
    "max_jobs": 3,
    "speed_factor": 4,
    "supported_features": 5,
    "mandatory_features": 6,
    "public_host_key": 7,
}


def _toml_name(machine: Machine, entry: TomlMachine) -> str:
    """The toml's name; else, given a port, the default name on that port (``a:2222``)."""
    if entry.name:
        return entry.name
    if entry.port is not None and machine.name == default_name(machine.uri, port=machine.port):
        return default_name(machine.uri, port=entry.port)
    return machine.name


def _with_meta(machine: Machine, entry: TomlMachine) -> Machine:
    params = dict(machine.params)
    for key, value in zip(
        TOML_PARAMS, (entry.compress, entry.builders_use_substitutes), strict=True
    ):
        if value is not None:  # the toml wins over the URI's own parameter
            params[key] = "true" if value else "false"
    return dataclasses.replace(
        machine,
        name=_toml_name(machine, entry),
        tags=machine.tags | entry.tags,
        port=entry.port if entry.port is not None else machine.port,
        enabled=entry.enabled if entry.enabled is not None else machine.enabled,
        params=MappingProxyType(params),
    )


def _overlay(machine: Machine, entry: TomlMachine, where: str, system: str) -> tuple[Machine, str]:
    columns = _toml_columns(entry, machine.uri)
    given = [value is not None for value in columns]
    # An empty feature list is the column's "-" (None), and still given: it clears the line's.
    given[5:7] = [entry.supported_features is not None, entry.mandatory_features is not None]
    warning = ""
    if any(given[1:]):
        # The toml restates Nix columns for a machine Nix already knows: toml wins, but say so.
        defined = machine_from_columns(columns, source=where, system=system)
        overridden = [
            name
            for name, column in _COLUMN_OF.items()
            if given[column] and getattr(defined, name) != getattr(machine, name)
        ]
        if overridden:
            warning = f"{where}: overrides {', '.join(overridden)} of {machine.source}"
            changes = {name: getattr(defined, name) for name in overridden}
            changes["set_in"] = {**machine.set_in, **dict.fromkeys(overridden, where)}
            if columns[7] is not None:  # the key line and the base64 it came from go together
                changes["host_key_base64"] = defined.host_key_base64
            machine = dataclasses.replace(machine, **changes)
    return _with_meta(machine, entry), warning


def apply_toml(
    machines: Iterable[Machine], toml: OffloadToml, *, system: str
) -> tuple[list[Machine], list[str]]:
    """Overlay offload.toml's ``[[machine]]`` tables on the machines from the spec."""
    result = list(machines)
    warnings: list[str] = []
    for entry in toml.machines:
        where = f"{toml.path}: {entry.where}"
        if entry.uri is not None:
            try:
                uri = parse_store_uri(entry.uri).uri
            except ValueError as exc:
                raise ConfigError(f"{where}: uri: {exc}") from None
            found = [i for i, m in enumerate(result) if m.uri == uri]
            if not found:
                columns = _toml_columns(entry, uri)
                machine = machine_from_columns(columns, source=where, system=system)
                machine = dataclasses.replace(machine, origin="toml")
                result.append(_with_meta(machine, entry))
                continue
        else:
            found = [i for i, m in enumerate(result) if entry.host in (m.host, m.name)]
            if not found:
                hosts = ", ".join(dict.fromkeys(m.host or m.uri for m in result)) or "none"
                raise ConfigError(
                    f"{where}: host '{entry.host}' matches no machine",
                    hint=f"hosts in the machines spec: {hosts}; to add a machine, give its uri",
                )
        for i in found:
            result[i], warning = _overlay(result[i], entry, where, system)
            if warning:
                warnings.append(warning)
    return result, warnings


def load_pool(
    *,
    builders: str | None,
    config: Path | None,
    env: Mapping[str, str] | None = None,
    options: Mapping[str, str] | None = None,
    nix_settings: NixSettings | None = None,
    lenient: bool = False,
    builders_setting: str = "nix.conf builders",
    nix_builds_here: bool = False,
) -> Pool:
    """The pool for this run: machines spec, then offload.toml, then the local entry.

    A bad machines entry raises, as Nix fails on it; ``lenient`` (`offload machines`) reads on
    and keeps every such problem in ``Pool.errors`` instead. ``builders_setting`` names Nix's
    ``builders`` setting in what is said about its entries (``settings.builders_spec``).
    ``nix_builds_here`` (the build hook): the local machine's slots, systems and features are
    Nix's, whatever offload.toml's ``[local]`` says (``settings.local_machine``)."""
    env = os.environ if env is None else env
    settings = nix_settings if nix_settings is not None else read_nix_settings(env, options)
    spec, origin = builders_spec(builders, env, settings, options, setting=builders_setting)
    machines, warnings, errors = read_spec(spec, origin, settings.system, lenient=lenient)
    warnings = [*settings.warnings, *warnings]
    if not lenient:  # `offload machines` says these among the machines' problems
        warnings += [
            f"{m.source}: {m.name}: {why}; not used (`offload machines` says more)"
            for m in machines
            if (why := m.not_connected) is not None
        ]
    toml = load_offload_toml(config, env)
    if toml is not None:
        machines, more = apply_toml(machines, toml, system=settings.system)
        warnings += more
    machines, more = one_name_each(machines)
    warnings += more
    if not lenient:  # a misspelt system builds everything elsewhere without a word from Nix
        warnings += [f"{m.source}: {m.name}: {why}" for m in machines for why in claim_problems(m)]
    if toml is not None and not nix_builds_here:  # `offload machines` too: no row says it
        warnings += local_claims(settings, toml)
    entry = local_machine(settings, toml.local if toml else None, nix_builds_here=nix_builds_here)
    local = entry if entry.max_jobs > 0 else None
    substitutes = nix_bool(settings.get("builders-use-substitutes"))
    # As nix-build, an option Nix refused is one warning and no setting, never a failure.
    options = {k: v for k, v in (options or {}).items() if k not in settings.refused}
    with_nix_options({}, options)  # refuse options the local store cannot be given, up front
    return Pool(
        local,
        tuple(machines),
        tuple(warnings),
        entry,
        substitutes,
        local_substitutes=substitutes_locally(settings),
        always_substitutes=nix_bool(settings.get("always-allow-substitutes")),
        nix_options=tuple(options.items()),
        nix_settings=settings,
        errors=tuple(error.message for error in errors),
    )
