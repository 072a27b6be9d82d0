"""Where the pool comes from: Nix's own settings, ``--builders``, and offload.toml.

Nix's settings (``builders``, ``max-jobs``, ``system``, ``extra-platforms``, ``system-features``,
``substitute``, ``substituters``) are read once per run from ``nix show-config --json``, with the
run's environment and any ``--option NAME VALUE`` pairs. That is Nix resolving its own
configuration: nix.conf and its includes, ``NIX_CONF_DIR``, ``NIX_USER_CONF_FILES``,
``NIX_CONFIG``, and the defaults Nix computes at start-up (``kvm`` only when /dev/kvm is usable,
``extra-platforms`` from the CPU). Re-deriving those in Python would drift from Nix; one ~20 ms
process does not. Only when ``nix`` cannot run do we fall back to reading
``$NIX_CONF_DIR/nix.conf`` and ``NIX_CONFIG`` ourselves (no includes, no user files), with a
warning. ``NIX_REMOTE_SYSTEMS`` (colon-separated machines files) is Nix's default of
``builders``, read as ``config.reading`` says. A build run's local ``nix-store --serve``
processes get the ``--option`` pairs through ``NIX_CONFIG`` (``with_nix_options``), so the
local store substitutes (or not) from the caches the run was read with.

offload.toml adds what the machines format cannot say::

    [local]                      # the local machine's own entry; defaults come from Nix
    speed-factor = 2.0
    max-jobs = 4
    systems = ["x86_64-linux"]
    features = ["kvm", "big-parallel"]

    [[machine]]                  # keyed by uri (the machines-file URI) or by host
    host = "nx-a.invalid"
    name = "a"
    tags = ["fast"]
    port = 2222
    enabled = false

A ``[[machine]]`` whose ``uri`` matches no machine from the machines spec defines a new one; it
may then also give the Nix columns (``systems``, ``ssh-key``, ``max-jobs``, ``speed-factor``,
``supported-features``, ``mandatory-features``, ``public-host-key``). One keyed by ``host`` must
match a machine. Parsing here is pure; ``load_offload_toml`` and ``read_nix_settings`` do the I/O.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offload.config.machines import shown
from offload.config.reading import (
    MACHINES_DEFAULT_ORIGIN,
    REMOTE_SYSTEMS_ORIGIN,
    remote_systems_spec,
)
from offload.errors import ConfigError, TransportError
from offload.names import LOCAL

__all__ = [
    "DEFAULT_BUILDERS",
    "LocalMachine",
    "NixSettings",
    "OffloadToml",
    "TomlLocal",
    "TomlMachine",
    "builders_spec",
    "default_toml_paths",
    "load_offload_toml",
    "local_machine",
    "parse_nix_conf",
    "parse_offload_toml",
    "read_nix_settings",
    "substitutes_locally",
    "with_nix_options",
]

DEFAULT_BUILDERS = "@/etc/nix/machines"
_NIX_DEFAULTS = {
    "builders": DEFAULT_BUILDERS,
    "max-jobs": "1",
    "extra-platforms": "",
    "system-features": "benchmark big-parallel nixos-test",
    "substitute": "true",
    "substituters": "https://cache.nixos.org/",
}


@dataclass(frozen=True)
class NixSettings:
    """The few Nix settings offload needs, as Nix prints them (lists space-separated)."""

    values: Mapping[str, str]
    warnings: tuple[str, ...] = ()

    def get(self, name: str) -> str:
        if name in self.values:
            return self.values[name]
        if name == "system":
            return _native_system()
        return _NIX_DEFAULTS.get(name, "")

    @property
    def system(self) -> str:
        return self.get("system")

    def count(self, name: str, default: int = 0) -> int:
        """A setting that is a whole number (seconds, bytes); anything else is ``default``."""
        text = self.get(name)
        return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else default

    def words(self, name: str) -> tuple[str, ...]:
        return tuple(self.get(name).split())


@dataclass(frozen=True)
class LocalMachine:
    speed_factor: float
    max_jobs: int
    systems: tuple[str, ...]
    supported_features: frozenset[str]

    def supports(self, system: str, required_features: Sequence[str]) -> bool:
        # canBuildLocally in build-remote.cc: no mandatory features locally.
        return (system == "builtin" or system in self.systems) and set(
            required_features
        ) <= self.supported_features


@dataclass(frozen=True)
class TomlMachine:
    index: int  # 1-based position among [[machine]] tables, for messages
    uri: str | None = None
    host: str | None = None
    name: str | None = None
    tags: frozenset[str] = frozenset()
    port: int | None = None
    enabled: bool | None = None
    # Only for machines the toml defines itself (or overrides, with a warning):
    systems: tuple[str, ...] | None = None
    ssh_key: str | None = None
    max_jobs: int | None = None
    speed_factor: float | None = None
    supported_features: frozenset[str] | None = None
    mandatory_features: frozenset[str] | None = None
    public_host_key: str | None = None  # base64, as in the machines file's column 8
    # The URI parameters Nix also reads (``?compress=true&builders-use-substitutes=true``).
    compress: bool | None = None
    builders_use_substitutes: bool | None = None

    @property
    def where(self) -> str:
        return f"[[machine]] #{self.index}"


@dataclass(frozen=True)
class TomlLocal:
    speed_factor: float | None = None
    max_jobs: int | None = None
    systems: tuple[str, ...] | None = None
    features: frozenset[str] | None = None


@dataclass(frozen=True)
class OffloadToml:
    path: str
    machines: tuple[TomlMachine, ...] = ()
    local: TomlLocal | None = None


# --- Nix settings -------------------------------------------------------------------------------


def _native_system() -> str:
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{machine}-{platform.system().lower()}"


def parse_nix_conf(text: str, into: dict[str, str] | None = None) -> dict[str, str]:
    """nix.conf syntax: ``name = value`` lines, ``#`` comments, ``extra-name`` appends.

    ``include``/``!include`` lines are ignored: this is only the fallback when ``nix`` is absent.
    """
    settings = {} if into is None else into
    for raw in text.split("\n"):
        line = raw.split("#", 1)[0].strip()
        name, eq, value = line.partition("=")
        name, value = name.strip(), " ".join(value.split())
        if not eq or not name or " " in name:
            continue
        if name.startswith("extra-"):
            base = name.removeprefix("extra-")
            settings[base] = f"{settings.get(base, _NIX_DEFAULTS.get(base, ''))} {value}".strip()
        else:
            settings[name] = value
    return settings


def _show_config_value(value: object) -> str:
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def read_nix_settings(
    env: Mapping[str, str] | None = None, options: Mapping[str, str] | None = None
) -> NixSettings:
    """Ask Nix for its effective settings (see the module docstring for why)."""
    from offload import process

    env = dict(os.environ if env is None else env)
    options = dict(options or {})
    argv = ["nix", "--extra-experimental-features", "nix-command", "show-config", "--json"]
    for name, value in options.items():
        argv += ["--option", name, value]
    problem: str
    try:
        done = process.run(argv, env=env, check=False, timeout=60)
    except TransportError as exc:
        problem = exc.message
    else:
        if done.returncode == 0:
            try:
                data = json.loads(done.stdout)
            except ValueError:
                problem = "`nix show-config --json` printed no JSON"
            else:
                return NixSettings({k: _show_config_value(v) for k, v in data.items()})
        else:
            problem = (done.stderr.strip().splitlines() or ["no output"])[-1]
    values: dict[str, str] = {}
    conf = Path(env.get("NIX_CONF_DIR", "/etc/nix")) / "nix.conf"
    with contextlib.suppress(OSError):  # no nix.conf: Nix's defaults
        parse_nix_conf(conf.read_text(errors="replace"), values)
    parse_nix_conf(env.get("NIX_CONFIG", ""), values)
    values.update(options)
    warning = f"could not ask Nix for its settings ({problem}); read {conf} and NIX_CONFIG only"
    return NixSettings(values, (warning,))


def substitutes_locally(settings: NixSettings) -> bool:
    """Would the local Nix fetch a missing path from a binary cache rather than build it?"""
    return settings.get("substitute") != "false" and bool(settings.words("substituters"))


def with_nix_options(env: Mapping[str, str], options: Mapping[str, str]) -> dict[str, str]:
    """``env`` with ``options`` appended to ``NIX_CONFIG``, so a Nix process started with it
    sees them as ``--option`` would set them (later lines win over nix.conf and earlier ones).

    ``builders`` is left out: offload schedules builders itself, the local store never runs
    Nix's build hook for it, and a machines spec may span lines that NIX_CONFIG cannot hold.
    """
    lines = []
    for name, value in options.items():
        if name == "builders":
            continue
        # NIX_CONFIG is nix.conf text: a line per setting, and "#" starts a comment.
        if any(c in name + value for c in "\n#") or "=" in name or not name.strip():
            raise ConfigError(
                f"--option {name if name.isprintable() else repr(name)} {value!r}: "
                "cannot be passed on to the local Nix",
                hint="a setting's name and value may not hold a newline or '#'",
            )
        lines.append(f"{name} = {value}")
    merged = dict(env)
    if lines:
        before = merged.get("NIX_CONFIG", "")
        merged["NIX_CONFIG"] = "\n".join([*([before] if before else []), *lines]) + "\n"
    return merged


def builders_spec(
    cli_builders: str | None,
    env: Mapping[str, str],
    nix_conf: NixSettings | Mapping[str, str],
    options: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """The machines spec for this run and a label for where it came from."""
    if cli_builders is not None:
        return cli_builders, "--builders"
    if options and "builders" in options:
        return options["builders"], "--option builders"
    settings = nix_conf if isinstance(nix_conf, NixSettings) else NixSettings(nix_conf)
    spec = settings.get("builders")
    if "builders" in parse_nix_conf(env.get("NIX_CONFIG", "")):
        return spec, "NIX_CONFIG builders"
    remote = remote_systems_spec(env)
    # NIX_REMOTE_SYSTEMS is Nix's default of builders: in force unless nix.conf set builders,
    # which `nix show-config` tells by a value other than that default (2.8 joins with spaces).
    if remote is not None and (
        "builders" not in settings.values or spec in (remote, remote.replace("\n", " "))
    ):
        return remote, REMOTE_SYSTEMS_ORIGIN
    if spec == DEFAULT_BUILDERS:
        return spec, MACHINES_DEFAULT_ORIGIN
    return spec, "nix.conf builders"


def local_machine(settings: NixSettings, toml: TomlLocal | None = None) -> LocalMachine:
    """The local machine's entry: Nix's settings, overridden by offload.toml's ``[local]``."""
    jobs_text = settings.get("max-jobs")
    if jobs_text == "auto":
        max_jobs = os.cpu_count() or 1
    else:
        try:
            max_jobs = int(jobs_text)
        except ValueError:
            raise ConfigError(f"Nix's max-jobs setting '{jobs_text}' is not a number") from None
    systems = tuple(dict.fromkeys((settings.system, *settings.words("extra-platforms"))))
    features = frozenset(settings.words("system-features"))
    speed = 1.0
    if toml is not None:
        speed = toml.speed_factor if toml.speed_factor is not None else speed
        max_jobs = toml.max_jobs if toml.max_jobs is not None else max_jobs
        systems = toml.systems if toml.systems is not None else systems
        features = toml.features if toml.features is not None else features
    return LocalMachine(speed, max_jobs, systems, features)


# --- offload.toml -------------------------------------------------------------------------------

_MACHINE_KEYS = {
    "uri",
    "host",
    "name",
    "tags",
    "port",
    "enabled",
    "systems",
    "ssh-key",
    "max-jobs",
    "speed-factor",
    "supported-features",
    "mandatory-features",
    "public-host-key",
    "compress",
    "builders-use-substitutes",
}
_MAX_TOML = 4 << 20  # as for machines files: --config /dev/zero must not read forever
_LOCAL_KEYS = {"speed-factor", "max-jobs", "systems", "features"}


class _Table:
    """Typed access to one TOML table, with errors that name the file and the table."""

    def __init__(self, data: Mapping[str, Any], where: str, keys: set[str]) -> None:
        self.data = data
        self.where = where
        unknown = sorted(set(data) - keys)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key '{shown(unknown[0], 200)}'",
                hint=f"valid keys: {', '.join(sorted(keys))}",
            )

    def _fail(self, key: str, expected: str) -> ConfigError:
        return ConfigError(f"{self.where}: {key} must be {expected}, not {self.data[key]!r}")

    def string(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self._fail(key, "a non-empty string")
        return value

    def strings(self, key: str) -> tuple[str, ...] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self._fail(key, "a list of non-empty strings")
        return tuple(value)

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._fail(key, f"a whole number from {low} to {high}")
        return value

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
            raise self._fail(key, "a positive number")
        return float(value)

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value


def _features(values: tuple[str, ...] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def parse_offload_toml(text: str, source: str) -> OffloadToml:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{source}: {exc}", hint="offload.toml is TOML (https://toml.io)"
        ) from exc
    except RecursionError as exc:  # tomllib recurses once per level of [ or {
        raise ConfigError(f"{source}: arrays or tables nested too deeply") from exc
    _Table(data, source, {"machine", "local"})
    local = None
    if "local" in data:
        if not isinstance(data["local"], dict):
            raise ConfigError(f"{source}: local must be a table ([local])")
        table = _Table(data["local"], f"{source}: [local]", _LOCAL_KEYS)
        local = TomlLocal(
            speed_factor=table.number("speed-factor"),
            max_jobs=table.integer("max-jobs", 0, 2**32 - 1),
            systems=table.strings("systems"),
            features=_features(table.strings("features")),
        )
    raw_machines = data.get("machine", [])
    if not isinstance(raw_machines, list) or not all(isinstance(m, dict) for m in raw_machines):
        raise ConfigError(f"{source}: machine must be an array of tables ([[machine]])")
    machines = []
    for index, raw in enumerate(raw_machines, start=1):
        table = _Table(raw, f"{source}: [[machine]] #{index}", _MACHINE_KEYS)
        entry = TomlMachine(
            index=index,
            uri=table.string("uri"),
            host=table.string("host"),
            name=table.string("name"),
            tags=frozenset(table.strings("tags") or ()),
            port=table.integer("port", 1, 65535),
            enabled=table.boolean("enabled"),
            systems=table.strings("systems"),
            ssh_key=table.string("ssh-key"),
            max_jobs=table.integer("max-jobs", 0, 2**32 - 1),
            speed_factor=table.number("speed-factor"),
            supported_features=_features(table.strings("supported-features")),
            mandatory_features=_features(table.strings("mandatory-features")),
            public_host_key=table.string("public-host-key"),
            compress=table.boolean("compress"),
            builders_use_substitutes=table.boolean("builders-use-substitutes"),
        )
        if (entry.uri is None) == (entry.host is None):
            raise ConfigError(
                f"{table.where}: give exactly one of uri or host",
                hint="uri is the machines-file URI (ssh://user@host), host its ssh host",
            )
        if entry.name == LOCAL or (entry.name or "").startswith("@"):
            raise ConfigError(
                f"{table.where}: '{shown(entry.name or '', 200)}' cannot be a machine name"
            )
        machines.append(entry)
    return OffloadToml(source, tuple(machines), local)


def default_toml_paths(env: Mapping[str, str]) -> list[Path]:
    paths = []
    xdg = env.get("XDG_CONFIG_HOME") or (
        str(Path(env["HOME"]) / ".config") if env.get("HOME") else None
    )
    if xdg:
        paths.append(Path(xdg) / "offload" / "offload.toml")
    paths.append(Path("/etc/offload/offload.toml"))
    return paths


def load_offload_toml(path: Path | None, env: Mapping[str, str]) -> OffloadToml | None:
    """``--config`` (must exist), else the first of ``default_toml_paths`` that exists."""
    candidates = [path] if path is not None else default_toml_paths(env)
    for candidate in candidates:
        try:
            with candidate.open("rb") as file:
                data = file.read(_MAX_TOML + 1)
            if len(data) > _MAX_TOML:
                raise ConfigError(
                    f"{candidate}: larger than {_MAX_TOML >> 20} MiB; not read",
                    hint="offload.toml describes machines: a few KiB",
                )
            text = data.decode()
        except FileNotFoundError:
            if path is not None:
                raise ConfigError(f"{path}: no such file", hint="check --config") from None
            continue
        except OSError as exc:
            raise ConfigError(f"cannot read {candidate}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{candidate}: not UTF-8 text ({exc.reason})") from exc
        return parse_offload_toml(text, str(candidate))
    return None
