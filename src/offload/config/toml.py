"""offload.toml adds what the machines format cannot say::

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
match a machine: every machine with that ssh host, or the one of that name (``host = "a:2222"``
for ``ssh://a:2222`` alone). Without a ``name``, a ``port`` other than 22 is in the machine's
(``config.naming``). Parsing here is pure; ``load_offload_toml`` reads the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offload.config.machines import shown
from offload.config.machines.entry import MAX_SPEED, MIN_SPEED
from offload.config.machines.files import read_user_file
from offload.errors import ConfigError
from offload.names import LOCAL

__all__ = [
    "OffloadToml",
    "TomlLocal",
    "TomlMachine",
    "default_toml_paths",
    "load_offload_toml",
    "parse_offload_toml",
]


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
    # The URI parameters offload reads (``?compress=true&builders-use-substitutes=true``;
    # Nix reads the second from nix.conf only).
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
_LOCAL_KEYS = {"speed-factor", "max-jobs", "systems", "features"}
# Problems after the first that an error names in its hint.
_SHOWN_PROBLEMS = 3
# What a key is, with an example: the hint of a value of the wrong type or out of range.
_KEY_HINTS = {
    "uri": 'the machines line\'s whole URI: uri = "ssh://user@host"',
    "host": 'its ssh host (every line to it): host = "fast", or host = "fast:2222"',
    "name": 'what --on, history and backoff call it: name = "workstation"',
    "tags": 'names --on @TAG picks it by: tags = ["big", "gpu"]',
    "port": "ssh's port: port = 2222",
    "enabled": "enabled = false leaves it out (unless --on names it)",
    "systems": 'the systems it builds for: systems = ["x86_64-linux", "i686-linux"]',
    "ssh-key": 'the key file ssh logs in with: ssh-key = "/root/.ssh/id_ed25519"',
    "max-jobs": "how many builds it runs at once: max-jobs = 4 (0: none)",
    "speed-factor": "how fast it is against the others (higher is faster): speed-factor = 2.0",
    "supported-features": 'supported-features = ["kvm", "big-parallel"]',
    "mandatory-features": 'the features a build must ask for: mandatory-features = ["benchmark"]',
    "public-host-key": "its ssh host key, base64 -w0 of its /etc/ssh/ssh_host_ed25519_key.pub",
    "compress": "compress = true: ssh compresses what goes to it (-C)",
    "builders-use-substitutes": "builders-use-substitutes = true: it takes inputs from its caches",
    "features": 'this host\'s system features: features = ["kvm", "big-parallel"]',
}


# A machine's name or tag is one word to --on, `offload use`, the tables and the warnings:
# printable, no blank or comma, not beginning as an option ('-') or a tag ('@') does. A name
# may hold '@' and ':' after that: those of machines-file lines do (alice@b, b:2222).
_WORD_SAID = "printable, no blank or comma, not beginning with '-' or '@'"


def _is_word(text: str) -> bool:
    return (
        text[:1] not in {"", "-", "@"}
        and text.isprintable()
        and not any(c.isspace() or c == "," for c in text)
    )


class _Table:
    """Typed access to one TOML table. A key of the wrong type is a problem recorded in
    ``problems`` (naming the file and the table) and reads as absent, so that one pass over
    the file finds every problem in it."""

    def __init__(
        self, data: Mapping[str, Any], where: str, keys: set[str], problems: list[ConfigError]
    ) -> None:
        self.data = data
        self.where = where
        self.problems = problems
        problems.extend(
            ConfigError(f"{where}: unknown key '{shown(key, 200)}'", hint=_unknown_hint(key, keys))
            for key in sorted(set(data) - keys)
        )

    def _fail(self, key: str, expected: str) -> None:
        self.problems.append(
            ConfigError(
                f"{self.where}: {key} must be {expected}, not {self.data[key]!r}",
                hint=_KEY_HINTS[key],
            )
        )

    def string(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None or (isinstance(value, str) and value):
            return value
        self._fail(key, "a non-empty string")
        return None

    def strings(self, key: str) -> tuple[str, ...] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
            return tuple(value)
        self._fail(key, "a list of non-empty strings")
        return None

    def word(self, key: str) -> str | None:
        value = self.string(key)
        if value is None or _is_word(value):
            return value
        self._fail(key, f"one word ({_WORD_SAID})")
        return None

    def words(self, key: str) -> tuple[str, ...] | None:
        values = self.strings(key)
        if values is None or all(_is_word(v) for v in values):
            return values
        self._fail(key, f"a list of words ({_WORD_SAID})")
        return None

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self._fail(key, f"a whole number from {low} to {high}")
            return None
        return value

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not MIN_SPEED <= value <= MAX_SPEED
        ):
            # The machines file's own limits: a file convert wrote from one must read back.
            self._fail(key, f"a positive number, at least {MIN_SPEED:g}")
            return None
        return float(value)

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None or isinstance(value, bool):
            return value
        self._fail(key, "true or false")
        return None


def _unknown_hint(key: str, keys: set[str]) -> str:
    from offload.spelling import meant

    close = meant(key, sorted(keys))
    mean = f"did you mean {close}? " if close else ""
    return f"{mean}valid keys: {', '.join(sorted(keys))}"


def _features(values: tuple[str, ...] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def parse_offload_toml(text: str, source: str) -> OffloadToml:
    """The file's tables; a file with problems fails with the first, the hint naming how
    many more there are and where, so that one run shows what to fix."""
    import tomllib  # here: a run without offload.toml does without it (and datetime)

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{source}: {exc}", hint="offload.toml is TOML (https://toml.io)"
        ) from exc
    except RecursionError as exc:  # tomllib recurses once per level of [ or {
        raise ConfigError(
            f"{source}: arrays or tables nested too deeply",
            hint="offload.toml holds [local] and [[machine]] tables of plain values",
        ) from exc
    problems: list[ConfigError] = []
    _Table(data, source, {"machine", "local"}, problems)
    local = _local(data.get("local"), source, problems)
    raw_machines = data.get("machine", [])
    machines = []
    if not isinstance(raw_machines, list) or not all(isinstance(m, dict) for m in raw_machines):
        problems.append(
            ConfigError(
                f"{source}: machine must be an array of tables ([[machine]])",
                hint="begin each machine's keys with a line [[machine]] (two brackets)",
            )
        )
    else:
        for index, raw in enumerate(raw_machines, start=1):
            if (entry := _machine(raw, index, source, problems)) is not None:
                machines.append(entry)
    _raise_first(problems, source)
    return OffloadToml(source, tuple(machines), local)


def _local(raw: object, source: str, problems: list[ConfigError]) -> TomlLocal | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append(
            ConfigError(
                f"{source}: local must be a table ([local])",
                hint="begin this host's keys with a line [local]: speed-factor, max-jobs, ...",
            )
        )
        return None
    table = _Table(raw, f"{source}: [local]", _LOCAL_KEYS, problems)
    return TomlLocal(
        speed_factor=table.number("speed-factor"),
        max_jobs=table.integer("max-jobs", 0, 2**32 - 1),
        systems=table.strings("systems"),
        features=_features(table.strings("features")),
    )


def _machine(
    raw: Mapping[str, Any], index: int, source: str, problems: list[ConfigError]
) -> TomlMachine | None:
    """The ``index``-th ``[[machine]]``; None when it has a problem (recorded)."""
    before = len(problems)
    table = _Table(raw, f"{source}: [[machine]] #{index}", _MACHINE_KEYS, problems)
    entry = TomlMachine(
        index=index,
        uri=table.string("uri"),
        host=table.string("host"),
        name=table.word("name"),
        tags=frozenset(table.words("tags") or ()),
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
    if ("uri" in raw) == ("host" in raw):  # a bad value of either was said above
        problems.append(
            ConfigError(
                f"{table.where}: give exactly one of uri or host",
                hint="uri is the machines-file URI (ssh://user@host), host its ssh host",
            )
        )
    if entry.name == LOCAL or (entry.name or "").startswith("@"):
        problems.append(
            ConfigError(
                f"{table.where}: '{shown(entry.name or '', 200)}' cannot be a machine name",
                hint=f"{LOCAL} is this host's, and @ begins a tag: give it another name",
            )
        )
    return entry if len(problems) == before else None


def _raise_first(problems: list[ConfigError], source: str) -> None:
    """Fail with the first problem; the hint says the next few (without the file's name,
    which the first already gives) and how many more there are."""
    if not problems:
        return
    first, rest = problems[0], problems[1:]
    if not rest:
        raise first
    shown_rest = [p.message.removeprefix(f"{source}: ") for p in rest[:_SHOWN_PROBLEMS]]
    more = len(rest) - len(shown_rest)
    also = "also " + "; ".join(shown_rest) + (f"; and {more} more" if more else "")
    raise ConfigError(first.message, hint=f"{first.hint}; {also}" if first.hint else also)


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
        # Bounded in size and time: `--config` naming a FIFO hung the command at its open.
        data = read_user_file(
            str(candidate),
            "offload.toml",
            hint_big="offload.toml describes machines: a few KiB",
            named=path is not None,
        )
        if data is None:
            if path is not None:
                raise ConfigError(f"{path}: no such file", hint="check --config")
            continue
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{candidate}: not UTF-8 text ({exc.reason})",
                hint="offload.toml is TOML, which is UTF-8 text: save it as UTF-8",
            ) from exc
        return parse_offload_toml(text, str(candidate))
    return None
