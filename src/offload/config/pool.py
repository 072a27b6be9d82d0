"""The effective pool for one run, and choosing builders from it.

A pool is the local machine's entry (``None`` when it builds nothing: ``-j 0`` or Nix's
``max-jobs = 0``) plus the remote machines in the machines spec's order, each with a name.
``select`` narrows it for one run: ``--on`` keeps only what it names (``local`` included only when
named), ``--exclude`` drops what it names, ``-j`` sets or removes the local entry. A name matches a
machine's name, its ssh host or its URI; ``@tag`` matches offload.toml tags. Disabled machines
(``enabled = false``) stay listed but are never selected unless ``--on`` names them.

The pool also converts to and from the three forms users keep it in: Nix's machines file
(``config.machines``), a NixOS ``nix.buildMachines`` list, and offload.toml.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from offload.config.machines import (
    Machine,
    default_name,
    encode_host_key,
    format_machines,
    machine_from_columns,
    parse_store_uri,
    shown,
)
from offload.config.reading import read_spec
from offload.config.settings import (
    LocalMachine,
    NixSettings,
    OffloadToml,
    TomlMachine,
    builders_spec,
    load_offload_toml,
    local_machine,
    read_nix_settings,
    substitutes_locally,
    with_nix_options,
)
from offload.errors import ConfigError
from offload.names import LOCAL

__all__ = [
    "Pool",
    "apply_toml",
    "load_pool",
    "machines_from_nixos",
    "pool_to_nixos",
    "pool_to_toml",
]


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
    # The run's --option pairs, for the Nix processes offload starts on this machine.
    nix_options: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    # Nix's effective settings for the run (nix.conf and the --options): what builds are given.
    nix_settings: NixSettings = field(
        default_factory=lambda: NixSettings({}), compare=False, repr=False
    )
    # Lenient reading only: the entries Nix would reject the whole spec for, one line each.
    errors: tuple[str, ...] = field(default=(), compare=False)

    def local_env(self) -> dict[str, str] | None:
        """The environment for the local store's serve processes: ours with the run's
        --options in NIX_CONFIG, or None (inherit ours) when there are none."""
        if not self.nix_options:
            return None
        return with_nix_options(os.environ, dict(self.nix_options))

    def names(self) -> list[str]:
        return [LOCAL, *dict.fromkeys(m.name for m in self.machines)]

    def tags(self) -> list[str]:
        return sorted({tag for m in self.machines for tag in m.tags})

    def _unknown(self, token: str) -> ConfigError:
        known = ", ".join(self.names())
        tags = ", ".join(f"@{t}" for t in self.tags()) or "none"
        return ConfigError(
            f"no machine named '{shown(token, 200)}' in the pool",
            hint=f"known names: {known}; tags: {tags}",
        )

    def _matches(self, token: str) -> tuple[bool, set[int], bool]:
        """(local?, indices of machines, matched by name rather than tag)."""
        if token == LOCAL:
            return True, set(), True
        if token.startswith("@"):
            found = {i for i, m in enumerate(self.machines) if token[1:] in m.tags}
            if not found:
                raise self._unknown(token)
            return False, found, False
        found = {
            i for i, m in enumerate(self.machines) if token in (m.name, m.host, m.uri) and token
        }
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
        # Never connect with a pinned "key" ssh cannot use (ssh would refuse it; nothing looser).
        usable = {i for i, m in enumerate(self.machines) if not m.pins_junk}
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
        for token in _split_names(exclude):
            is_local, found, _ = self._matches(token)
            if is_local:
                local = None
            keep -= found
        machines = tuple(m for i, m in enumerate(self.machines) if i in keep & usable)
        return dataclasses.replace(self, local=local, machines=machines)


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


def _with_meta(machine: Machine, entry: TomlMachine) -> Machine:
    params = dict(machine.params)
    for key, value in (
        ("compress", entry.compress),
        ("builders-use-substitutes", entry.builders_use_substitutes),
    ):
        if value is not None:  # the toml wins over the URI's own parameter
            params[key] = "true" if value else "false"
    return dataclasses.replace(
        machine,
        name=entry.name or machine.name,
        tags=machine.tags | entry.tags,
        port=entry.port if entry.port is not None else machine.port,
        enabled=entry.enabled if entry.enabled is not None else machine.enabled,
        params=MappingProxyType(params),
    )


def _overlay(machine: Machine, entry: TomlMachine, where: str, system: str) -> tuple[Machine, str]:
    columns = _toml_columns(entry, machine.uri)
    warning = ""
    if any(value is not None for value in columns[1:]):
        # The toml restates Nix columns for a machine Nix already knows: toml wins, but say so.
        defined = machine_from_columns(columns, source=where, system=system)
        overridden = [
            name
            for name, column in _COLUMN_OF.items()
            if columns[column] is not None and getattr(defined, name) != getattr(machine, name)
        ]
        if overridden:
            warning = f"{where}: overrides {', '.join(overridden)} of {machine.source}"
            changes = {name: getattr(defined, name) for name in overridden}
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
    seen: dict[str, str] = {}
    for machine in result:
        if machine.name in seen and seen[machine.name] != machine.uri:
            warnings.append(
                f"{machine.source}: name '{machine.name}' is also {seen[machine.name]}; "
                "--on/--exclude with it pick both"
            )
        seen.setdefault(machine.name, machine.uri)
    return result, warnings


def load_pool(
    *,
    builders: str | None,
    config: Path | None,
    env: Mapping[str, str] | None = None,
    options: Mapping[str, str] | None = None,
    nix_settings: NixSettings | None = None,
    lenient: bool = False,
) -> Pool:
    """The pool for this run: machines spec, then offload.toml, then the local entry.

    A bad machines entry raises, as Nix fails on it; ``lenient`` (`offload machines`) reads on
    and keeps every such problem in ``Pool.errors`` instead."""
    env = os.environ if env is None else env
    settings = nix_settings if nix_settings is not None else read_nix_settings(env, options)
    spec, origin = builders_spec(builders, env, settings, options)
    machines, warnings, errors = read_spec(spec, origin, settings.system, lenient=lenient)
    warnings = [*settings.warnings, *warnings]
    if not lenient:  # `offload machines` says it among the machines' problems
        warnings += [
            f"{m.source}: {m.name}: its host key is base64 of no ssh key; not used "
            "(`offload machines` says more)"
            for m in machines
            if m.pins_junk
        ]
    toml = load_offload_toml(config, env)
    if toml is not None:
        machines, more = apply_toml(machines, toml, system=settings.system)
        warnings += more
    entry = local_machine(settings, toml.local if toml else None)
    local = entry if entry.max_jobs > 0 else None
    substitutes = settings.get("builders-use-substitutes") == "true"
    options = dict(options or {})
    with_nix_options({}, options)  # refuse options the local store cannot be given, up front
    return Pool(
        local,
        tuple(machines),
        tuple(warnings),
        entry,
        substitutes,
        local_substitutes=substitutes_locally(settings),
        nix_options=tuple(options.items()),
        nix_settings=settings,
        errors=tuple(error.message for error in errors),
    )


# --- conversions --------------------------------------------------------------------------------


def _toml_str(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_toml_str(i) for i in items) + "]"


def _speed(value: float) -> str:
    return repr(float(value))


def pool_to_toml(pool: Pool) -> str:
    """offload.toml that defines the whole pool (every machine by uri, with all its columns)."""
    lines = ["# offload.toml written by `offload machines convert --to toml`", ""]
    if pool.local is not None:
        local = pool.local
        lines += [
            "[local]",
            f"speed-factor = {_speed(local.speed_factor)}",
            f"max-jobs = {local.max_jobs}",
            f"systems = {_toml_list(local.systems)}",
            f"features = {_toml_list(sorted(local.supported_features))}",
            "",
        ]
    for m in pool.machines:
        lines += ["[[machine]]", f"uri = {_toml_str(m.uri)}"]
        if m.name != default_name(m.uri):
            lines.append(f"name = {_toml_str(m.name)}")
        if m.tags:
            lines.append(f"tags = {_toml_list(sorted(m.tags))}")
        if m.port is not None:
            lines.append(f"port = {m.port}")
        if not m.enabled:
            lines.append("enabled = false")
        for key in ("compress", "builders-use-substitutes"):
            if m.params.get(key) == "true":
                lines.append(f"{key} = true")
        lines.append(f"systems = {_toml_list(m.systems)}")
        if m.ssh_key is not None:
            lines.append(f"ssh-key = {_toml_str(m.ssh_key)}")
        lines += [f"max-jobs = {m.max_jobs}", f"speed-factor = {_speed(m.speed_factor)}"]
        lines.append(f"supported-features = {_toml_list(sorted(m.supported_features))}")
        lines.append(f"mandatory-features = {_toml_list(sorted(m.mandatory_features))}")
        if m.public_host_key is not None:
            lines.append(f"public-host-key = {_toml_str(encode_host_key(m.public_host_key))}")
        lines.append("")
    return "\n".join(lines)


def _nix_str(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def _nix_list(items: Iterable[str]) -> str:
    inner = " ".join(_nix_str(i) for i in items)
    return f"[ {inner} ]" if inner else "[ ]"


def pool_to_nixos(pool: Pool) -> str:
    """A ``nix.buildMachines`` value. NixOS joins protocol://sshUser@hostName into column 1."""
    out = ["# nix.buildMachines, written by `offload machines convert --to nixos`", "["]
    for m in pool.machines:
        protocol = m.scheme if m.is_ssh else None
        if protocol is not None:
            _, _, rest = m.uri.partition("://")
            host = rest.rpartition("@")[2]
            if m.port is not None:
                out.append(
                    f"  # offload: port {m.port} of {m.name} dropped: Nix 2.8 cannot take "
                    "host:port (use an ssh Host alias)"
                )
                host = host.replace(f":{m.port}", "", 1)
        else:
            host = m.uri
        speed = max(1, round(m.speed_factor))
        if speed != m.speed_factor:
            out.append(f"  # offload: speed factor {m.speed_factor:g} of {m.name} rounded")
        out += ["  {", f"    hostName = {_nix_str(host)};"]
        out.append(f"    protocol = {_nix_str(protocol) if protocol else 'null'};")
        if m.user is not None:
            out.append(f"    sshUser = {_nix_str(m.user)};")
        if m.ssh_key is not None:
            out.append(f"    sshKey = {_nix_str(m.ssh_key)};")
        out += [
            f"    systems = {_nix_list(m.systems)};",
            f"    maxJobs = {m.max_jobs};",
            f"    speedFactor = {speed};",
            f"    supportedFeatures = {_nix_list(sorted(m.supported_features))};",
            f"    mandatoryFeatures = {_nix_list(sorted(m.mandatory_features))};",
        ]
        if m.public_host_key is not None:
            out.append(f"    publicHostKey = {_nix_str(encode_host_key(m.public_host_key))};")
        out.append("  }")
    out.append("]")
    return "\n".join(out) + "\n"


def _opt_str(entry: Mapping[str, object], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, not {value!r}")
    return value


def _opt_int(entry: Mapping[str, object], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be a whole number, not {value!r}")
    return value


def _str_list(entry: Mapping[str, object], key: str, where: str) -> list[str]:
    value = entry.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings")
    return value


def machines_from_nixos(data: object, *, source: str, system: str) -> list[Machine]:
    """Machines from the JSON of a ``nix.buildMachines`` value (``nix-instantiate --eval --json``).

    Defaults are the NixOS module's: protocol ``ssh``, one job, speed 1, and an empty ``systems``
    (plus the old single ``system``) meaning the local system.
    """
    if not isinstance(data, list):
        raise ConfigError(f"{source}: expected a list of machines, got {type(data).__name__}")
    machines = []
    for index, entry in enumerate(data, start=1):
        where = f"{source}: machine #{index}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected an attribute set")
        host = _opt_str(entry, "hostName", where)
        if not host:
            raise ConfigError(f"{where}: hostName is required")
        protocol = _opt_str(entry, "protocol", where) if "protocol" in entry else "ssh"
        user = _opt_str(entry, "sshUser", where)
        uri = f"{protocol}://" if protocol else ""
        uri += f"{user}@{host}" if user else host
        systems = _str_list(entry, "systems", where)
        single = _opt_str(entry, "system", where)
        systems = [single, *systems] if single else systems
        max_jobs = _opt_int(entry, "maxJobs", where)
        speed = entry.get("speedFactor")
        if speed is not None and (isinstance(speed, bool) or not isinstance(speed, int | float)):
            raise ConfigError(f"{where}: speedFactor must be a number, not {speed!r}")
        columns: list[str | None] = [
            uri,
            ",".join(systems) or None,
            _opt_str(entry, "sshKey", where) or None,
            None if max_jobs is None else str(max_jobs),
            None if speed is None else str(speed),
            ",".join(_str_list(entry, "supportedFeatures", where)) or None,
            ",".join(_str_list(entry, "mandatoryFeatures", where)) or None,
            _opt_str(entry, "publicHostKey", where) or None,
        ]
        machines.append(machine_from_columns(columns, source=where, system=system))
    return machines


def pool_to_nix(pool: Pool, *, nix28: bool = True) -> str:
    header = "# machines file written by `offload machines convert --to nix`\n"
    return header + format_machines(pool.machines, nix28=nix28)
