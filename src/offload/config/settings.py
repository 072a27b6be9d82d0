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

offload.toml (what the machines format cannot say) is read by ``config.toml``; its names are
re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from offload.ansi import last_nix_error, strip_ansi
from offload.booleans import nix_bool
from offload.config.machines import shown
from offload.config.reading import (
    MACHINES_DEFAULT_ORIGIN,
    REMOTE_SYSTEMS_ORIGIN,
    remote_systems_spec,
)
from offload.config.toml import (
    OffloadToml,
    TomlLocal,
    TomlMachine,
    default_toml_paths,
    load_offload_toml,
    parse_offload_toml,
)
from offload.errors import ConfigError, TransportError
from offload.numerals import is_decimal

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
    "local_claims",
    "local_machine",
    "parse_nix_conf",
    "parse_offload_toml",
    "read_nix_settings",
    "substitutes_locally",
    "with_nix_options",
    "without_hook",
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
    # The --option names whose value Nix refused (it warned and kept the setting as it was):
    # passed on in NIX_CONFIG they would make every Nix process fail instead.
    refused: frozenset[str] = frozenset()

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
        return int(text) if is_decimal(text) and len(text) < 19 else default

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


# --- Nix settings -------------------------------------------------------------------------------


def _native_system() -> str:
    # os.uname() is what platform.machine() and .system() read on POSIX, without importing it.
    uname = os.uname()
    machine = uname.machine.lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{machine}-{uname.sysname.lower()}"


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
                found = {k: _show_config_value(v) for k, v in data.items()}
                warnings = _option_warnings(data, options, done.stderr)
                return NixSettings(found, warnings, _refused(warnings, options))
        else:
            problem = _said(done.stderr)
    values: dict[str, str] = {}
    conf = Path(env.get("NIX_CONF_DIR", "/etc/nix")) / "nix.conf"
    with contextlib.suppress(OSError):  # no nix.conf: Nix's defaults
        parse_nix_conf(conf.read_text(errors="replace"), values)
    parse_nix_conf(env.get("NIX_CONFIG", ""), values)
    values.update(options)
    warning = f"could not ask Nix for its settings ({problem}); read {shown(str(conf), 400)}"
    warning += " and NIX_CONFIG only"
    return NixSettings(values, (warning,))


def _said(stderr: str) -> str:
    """What Nix said of why it stopped, as one plain line: its last ``error:`` line, else its
    last line (Nix follows a setting it refuses with "Try 'nix --help' for more
    information."). Nix colours its errors, and one it dies of (a relative NIX_CONF_DIR:
    "terminate called ...", "  what():  ESC[31;1merror:") put its escape sequences into
    offload's warning."""
    plain = [" ".join(strip_ansi(line).split()) for line in stderr.splitlines()]
    last = next((line for line in reversed(plain) if line), "no output")
    return shown(last_nix_error(plain) or last, 400)


# Nix 2.20 made `nix show-config` an alias of `nix config show` and says so at every use; offload
# keeps the name every Nix from 2.4 on knows (`config show` is an error before 2.20), so that
# line is about offload's command, not the user's settings: not passed on.
_ALIAS_NOTE = "'show-config' is a deprecated alias for 'config show'"


def _option_warnings(data: object, options: Mapping[str, str], stderr: str) -> tuple[str, ...]:
    """What Nix says of ``options`` (an invalid value), and each unknown name as nix-build
    says it (`nix show-config` does not): "unknown setting 'NAME'"."""
    lines = (strip_ansi(line).removeprefix("warning: ") for line in stderr.splitlines())
    said = [line for line in lines if line.strip() != _ALIAS_NOTE]
    known = set(data) if isinstance(data, dict) else set()
    for value in data.values() if isinstance(data, dict) else ():
        if isinstance(value, dict) and isinstance(value.get("aliases"), list):
            known.update(str(alias) for alias in value["aliases"])
    unknown = [
        f"unknown setting '{name}'"
        for name in options
        if name not in known and name.removeprefix("extra-") not in known
    ]
    return tuple([line for line in said if line.strip()] + unknown)


def _refused(warnings: Sequence[str], options: Mapping[str, str]) -> frozenset[str]:
    """The ``options`` whose values Nix refused: "error: setting 'cores' has invalid value
    '-1'", "error: configuration setting 'max-jobs' should be 'auto' or an integer", and a
    boolean's "error: option 'sandbox' has invalid value 'maybe'" or "error: Boolean setting
    'keep-outputs' has invalid value '2'" (in NIX_CONFIG, where the run's options go, those
    stop every Nix command instead of being a warning)."""
    pattern = r"error: (?:configuration |Boolean )?(?:setting|option) '([^']*)'"
    said = (re.match(pattern, w) for w in warnings)
    return frozenset(m[1] for m in said if m is not None and m[1] in options)


def substitutes_locally(settings: NixSettings) -> bool:
    """Would the local Nix fetch a missing path from a binary cache rather than build it?"""
    return nix_bool(settings.get("substitute"), default=True) and bool(
        settings.words("substituters")
    )


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
    return _nix_config_with(env, lines)


def _nix_config_with(env: Mapping[str, str], lines: Sequence[str]) -> dict[str, str]:
    """``env`` with ``lines`` after its ``NIX_CONFIG``'s (later lines win)."""
    merged = dict(env)
    if lines:
        before = merged.get("NIX_CONFIG", "")
        merged["NIX_CONFIG"] = "\n".join([*([before] if before else []), *lines]) + "\n"
    return merged


def without_hook(env: Mapping[str, str] | None) -> dict[str, str]:
    """``env`` (None: this process's) with ``builders`` and ``build-hook`` set empty last in
    ``NIX_CONFIG``: for the local store's programs, which build what offload placed on the
    local machine.

    Nix up to 2.29 never asks its build hook for a derivation built by ``nix-store --serve``'s
    BuildDerivation (it has no ``.drv`` in the store, to Nix); from 2.30 it asks whenever the
    ``.drv`` is valid, which it always is here, and from 2.34 before it builds locally: with the
    user's builders in force the hook would send offload's local builds to the builders offload
    schedules, into slots it left free. So for every version, as Hydra does for localhost (a
    daemon takes an empty ``builders`` from any client). And no hook at all (empty: never
    asked from Nix 2.22, and those before 2.30 never ask here): offload-hook as the build hook
    finds builders in offload.toml too. A daemon takes ``build-hook`` from a trusted user
    only, as it takes BuildDerivation."""
    return _nix_config_with(os.environ if env is None else env, ["builders =", "build-hook ="])


def builders_spec(
    cli_builders: str | None,
    env: Mapping[str, str],
    nix_conf: NixSettings | Mapping[str, str],
    options: Mapping[str, str] | None = None,
    *,
    setting: str = "nix.conf builders",
) -> tuple[str, str]:
    """The machines spec for this run and a label for where it came from; ``setting``, the
    label of Nix's own ``builders`` setting (offload-hook's is Nix's whatever set it there:
    nix.conf, a client's --builders or --option)."""
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
    return spec, setting


def local_machine(
    settings: NixSettings, toml: TomlLocal | None = None, *, nix_builds_here: bool = False
) -> LocalMachine:
    """The local machine's entry: Nix's settings, overridden by offload.toml's ``[local]``;
    with ``nix_builds_here`` (the build hook: Nix builds what it declines, in Nix's own slots,
    for Nix's own systems and features) only its speed factor."""
    jobs_text = settings.get("max-jobs")
    if jobs_text == "auto":
        max_jobs = os.cpu_count() or 1
    else:
        try:
            max_jobs = int(jobs_text)
        except ValueError:
            raise ConfigError(
                f"Nix's max-jobs setting '{shown(jobs_text, 400)}' is not a number",
                hint="set max-jobs to auto or a whole number (nix.conf, NIX_CONFIG, --option)",
            ) from None
    systems = tuple(dict.fromkeys((settings.system, *settings.words("extra-platforms"))))
    features = frozenset(settings.words("system-features"))
    speed = 1.0
    if toml is not None:
        speed = toml.speed_factor if toml.speed_factor is not None else speed
    if toml is not None and not nix_builds_here:
        max_jobs = toml.max_jobs if toml.max_jobs is not None else max_jobs
        systems = toml.systems if toml.systems is not None else systems
        features = toml.features if toml.features is not None else features
    return LocalMachine(speed, max_jobs, systems, features)


def local_claims(settings: NixSettings, toml: OffloadToml) -> list[str]:
    """What offload.toml's ``[local]`` claims of this host that its Nix lacks (a system not
    Nix's own nor an extra platform, a feature not in system-features), said: the local
    machine takes builds needing it, and this host's Nix refuses them (a tester's
    ``features = ["cuda"]``). Its features replace Nix's, as the README says."""
    local = toml.local
    if local is None:
        return []
    said = []
    systems = {settings.system, *settings.words("extra-platforms"), "builtin"}
    for what, claimed, has in (
        ("systems", local.systems or (), systems),
        ("features", sorted(local.features or ()), set(settings.words("system-features"))),
    ):
        if lacking := [word for word in claimed if word not in has]:
            them = "it" if len(lacking) == 1 else "them"
            said.append(
                f"{toml.path}: [local] {what}: this host's Nix lacks {', '.join(lacking)}:"
                f" builds needing {them} are sent here and fail (Nix's system-features,"
                " extra-platforms)"
            )
    return said


# --- offload.toml -------------------------------------------------------------------------------
