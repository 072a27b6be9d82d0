"""Nix's machines format (the `builders` setting and ``/etc/nix/machines``), parsed and printed.

A spec is a text of entries separated by newlines and ``;``. Each entry is up to eight
whitespace-separated columns; ``-`` or a missing column means the default::

    URI  systems  ssh-key  maxJobs  speedFactor  supportedFeatures  mandatoryFeatures  hostKey

offload reads it the way Nix >= 2.29 does, which is how Nix 2.8 reads every file without its
parser bugs (nix-protocols.md 6.1): comments are stripped per line *before* splitting on ``;``,
and each entry is trimmed, so blank or indented lines and ``;`` inside comments are harmless.
``@path`` includes are spliced in place; a missing file is skipped with a warning, an unreadable
one is an error, and an include that reaches itself again is an error (Nix recurses forever).
Relative include paths are taken relative to the including file (or ``base_dir`` for the top
text), where Nix uses its own working directory; the two agree for absolute paths, which is what
every real machines file uses.

Beyond Nix 2.8 offload accepts ``host:port`` (as Nix >= 2.31 does) and fractional speed factors
(as Nix >= 2.20 does). ``format_machines`` writes a file that 2.8 reads the same way: no blank or
indented lines, integer speed factors, and no ``:port`` (each dropped port is named in a comment;
keep ports in offload.toml or an ssh ``Host`` alias). With ``nix28=False`` it writes ports and
fractional speeds as they are, which newer Nix and offload read back exactly.

Column numbers in messages are 1-based, as people count them (Nix's own messages are 0-based).
This module does no I/O of its own: include files are read through the ``read_file`` callable.
"""

from __future__ import annotations

import base64
import binascii
import math
import posixpath
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import unquote

from offload.errors import ConfigError

__all__ = [
    "COLUMNS",
    "Machine",
    "decode_host_key",
    "default_name",
    "encode_host_key",
    "format_machine_line",
    "format_machines",
    "machine_from_columns",
    "parse_machines",
    "parse_store_uri",
    "read_text_file",
]

COLUMNS = (
    "storeUri",
    "systems",
    "sshKey",
    "maxJobs",
    "speedFactor",
    "supportedFeatures",
    "mandatoryFeatures",
    "publicHostKey",
)

_COLUMN_HINT = (
    "the columns are: URI systems ssh-key max-jobs speed-factor supported-features "
    "mandatory-features base64-host-key; write - for a default"
)
# Nix's trim() and tokenizeString() default separators: exactly these, not Python's isspace().
_BLANKS = " \t\n\r"
_MAX_INCLUDE_DEPTH = 32
_MAX_UINT = 2**32 - 1
_SPECIAL_STORES = ("auto", "daemon", "local")
_SSH_SCHEMES = ("ssh", "ssh-ng")
_UINT_RE = re.compile(r"[0-9]+")
_FLOAT_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_KEY_TYPE_RE = re.compile(r"(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class Machine:
    """One builder as Nix sees it, plus the names offload gives it.

    ``uri`` is the store URI Nix would open (``ssh://`` prepended to a bare host), query and all:
    build-remote names its slot lock files after it. ``ssh_key`` and ``public_host_key`` are the
    effective values: the machines-file column when set, else the URI's ``ssh-key`` /
    ``base64-ssh-public-host-key`` parameter, as Nix gives the column precedence.
    """

    uri: str
    scheme: str
    host: str | None
    user: str | None
    port: int | None
    systems: tuple[str, ...]
    ssh_key: str | None
    max_jobs: int
    speed_factor: float
    supported_features: frozenset[str]
    mandatory_features: frozenset[str]
    public_host_key: str | None
    params: Mapping[str, str] = field(hash=False)
    source: str
    name: str
    tags: frozenset[str] = frozenset()
    enabled: bool = True

    def ssh_destination(self) -> str:
        host = self.host or self.uri
        return f"{self.user}@{host}" if self.user else host

    def supports(self, system: str, required_features: Collection[str]) -> bool:
        """Nix's rule (build-remote.cc): system, all features offered, mandatory ones asked."""
        if system != "builtin" and system not in self.systems:
            return False
        offered = self.supported_features | self.mandatory_features
        required = set(required_features)
        return required <= offered and self.mandatory_features <= required

    @property
    def is_ssh(self) -> bool:
        return self.scheme in _SSH_SCHEMES


# --- store URIs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Uri:
    uri: str
    scheme: str
    host: str | None
    user: str | None
    port: int | None
    params: Mapping[str, str]


def _normalise_uri(raw: str) -> str:
    # machines.cc: a schemeless word that is not a path or special store means ssh://word.
    if "://" in raw or "/" in raw or raw.startswith("?"):
        return raw
    if raw in _SPECIAL_STORES or any(raw.startswith(f"{s}?") for s in _SPECIAL_STORES):
        return raw
    return f"ssh://{raw}"


def _parse_query(query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if eq:  # Nix's decodeQuery drops parameters without '='.
            params[unquote(key)] = unquote(value)
    return params


def parse_store_uri(raw: str) -> _Uri:
    """Split a (column 1) store URI; raises ``ValueError`` with a reason when it is unusable."""
    uri = _normalise_uri(raw)
    base, _, query = uri.partition("?")
    params = _parse_query(query) if query else {}
    match = _SCHEME_RE.match(base)
    if match is None:
        if base in _SPECIAL_STORES:
            return _Uri(uri, base, None, None, None, MappingProxyType(params))
        if base == "":
            return _Uri(uri, "auto", None, None, None, MappingProxyType(params))
        return _Uri(uri, "path", None, None, None, MappingProxyType(params))
    scheme = match.group(1).lower()
    authority = base[match.end() :]
    if scheme not in _SSH_SCHEMES:
        return _Uri(uri, scheme, authority or None, None, None, MappingProxyType(params))
    # OpenSSH splits user@host at the last '@'.
    user, at, hostport = authority.rpartition("@")
    if at and not user:
        raise ValueError(f"empty user name in '{raw}'")
    host, port = _split_port(hostport, raw)
    if not host:
        raise ValueError(f"no host name in '{raw}'")
    if "/" in host:
        raise ValueError(f"'{host}' is not a host name (it contains '/')")
    return _Uri(uri, scheme, host, user or None, port, MappingProxyType(params))


def _split_port(hostport: str, raw: str) -> tuple[str, int | None]:
    if hostport.startswith("["):  # [v6addr]:port
        end = hostport.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in '{raw}'")
        host, rest = hostport[1:end], hostport[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"unexpected text after ']' in '{raw}'")
        return host, _port(rest[1:], raw)
    if hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
        return host, _port(port, raw)
    return hostport, None


def _port(text: str, raw: str) -> int:
    if not _UINT_RE.fullmatch(text) or not 0 < int(text) < 65536:
        raise ValueError(f"'{text}' is not a port number (1-65535) in '{raw}'")
    return int(text)


# --- host keys ----------------------------------------------------------------------------------


def decode_host_key(text: str) -> str:
    """Decode column 8 to its ``type base64key [comment]`` line; ``ValueError`` says why not."""
    # Nix's base64Decode stops at '=' and skips newlines, so padding is optional.
    data = text.split("=", 1)[0]
    if not re.fullmatch(r"[A-Za-z0-9+/]*", data):
        raise ValueError("is not valid base64")
    try:
        raw = base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
        line = raw.decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("is not valid base64 of a text line") from None
    line = line.strip(_BLANKS)
    parts = line.split()
    if len(parts) < 2 or not _KEY_TYPE_RE.fullmatch(parts[0]):
        raise ValueError(
            "does not decode to an ssh public key line 'type key [comment]' "
            "(expected base64 of /etc/ssh/ssh_host_ed25519_key.pub)"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise ValueError(f"holds a {parts[0]} key that is not valid base64") from None
    kind = parts[0].encode()
    if blob[:4] != len(kind).to_bytes(4, "big") or blob[4 : 4 + len(kind)] != kind:
        raise ValueError(f"holds a key blob that is not of type {parts[0]}")
    if any(ord(c) < 32 for c in line):
        raise ValueError("decodes to a line with control characters")
    return line


def encode_host_key(line: str) -> str:
    return base64.b64encode(line.encode()).decode()


# --- parsing ------------------------------------------------------------------------------------


def read_text_file(path: str) -> str | None:
    """The default include reader: text of ``path``, ``None`` when it does not exist."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(
            f"cannot read machines file {path}: {exc.strerror}",
            hint="a missing include is skipped, but one that exists must be readable",
        ) from exc
    # Nix reads bytes; undecodable bytes only ever matter inside comments.
    return data.decode(errors="replace")


@dataclass(frozen=True)
class _Parser:
    system: str
    read_file: Callable[[str], str | None]
    out: list[Machine] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def parse(
        self, text: str, source: str, base_dir: str, stack: tuple[str, ...], *, labels: bool
    ) -> None:
        for lineno, raw_line in enumerate(text.split("\n"), start=1):
            where = f"{source}:{lineno}" if labels else source
            line = raw_line.split("#", 1)[0]
            for piece in line.split(";"):
                entry = piece.strip(_BLANKS)
                if not entry:
                    continue
                if entry.startswith("@"):
                    self.include(entry[1:].strip(_BLANKS), where, base_dir, stack)
                else:
                    self.out.append(_parse_entry(entry, where, self.system))

    def include(self, target: str, where: str, base_dir: str, stack: tuple[str, ...]) -> None:
        if not target:
            raise ConfigError(f"{where}: '@' needs a file name", hint="write @/etc/nix/machines")
        path = posixpath.normpath(posixpath.join(base_dir, target))
        if path in stack:
            chain = " -> ".join((*stack, path))
            raise ConfigError(
                f"{where}: @{target} includes itself ({chain})",
                hint="Nix would recurse until it crashes; remove one of the @ lines",
            )
        if len(stack) >= _MAX_INCLUDE_DEPTH:
            raise ConfigError(f"{where}: @{target}: includes nest over {_MAX_INCLUDE_DEPTH} deep")
        try:
            text = self.read_file(path)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from exc
        if text is None:
            self.warnings.append(
                f"{where}: machines file {path} does not exist; skipped, as Nix does"
            )
            return
        self.parse(text, path, posixpath.dirname(path), (*stack, path), labels=True)


def parse_machines(
    text: str,
    *,
    source: str,
    system: str,
    read_file: Callable[[str], str | None] = read_text_file,
    base_dir: Path | None = None,
) -> tuple[list[Machine], list[str]]:
    """Parse a machines spec into machines (in Nix's order) and warnings.

    ``source`` names where ``text`` came from (a path or ``--builders``); entries carry
    ``source:line``, or just ``source`` for a one-line spec given on a command line.
    Every problem is a ``ConfigError`` whose message starts with that location.
    """
    parser = _Parser(system, read_file)
    labels = not (source.startswith("-") and "\n" not in text.rstrip("\n"))
    top = str(base_dir) if base_dir is not None else "."
    parser.parse(text, source, top, (), labels=labels)
    return parser.out, parser.warnings


def _column_error(where: str, index: int, message: str) -> ConfigError:
    return ConfigError(
        f"{where}: column {index + 1} ({COLUMNS[index]}): {message}", hint=_COLUMN_HINT
    )


def _split_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def _parse_entry(entry: str, where: str, system: str) -> Machine:
    tokens = [t for t in re.split(r"[ \t\r\n]+", entry) if t][:8]

    def given(index: int) -> str | None:
        value = tokens[index] if index < len(tokens) else "-"
        return None if value == "-" else value

    raw_uri = tokens[0]
    if raw_uri == "-":
        raise _column_error(where, 0, "a store URI is required, not '-'")
    try:
        uri = parse_store_uri(raw_uri)
    except ValueError as exc:
        raise _column_error(where, 0, str(exc)) from None

    systems_text = given(1)
    systems = tuple(dict.fromkeys(_split_list(systems_text))) if systems_text else (system,)
    ssh_key = given(2) or uri.params.get("ssh-key") or None

    max_jobs = 1
    if (text := given(3)) is not None:
        if not _UINT_RE.fullmatch(text) or int(text) > _MAX_UINT:
            raise _column_error(where, 3, f"'{text}' is not a whole number of jobs")
        max_jobs = int(text)

    speed = 1.0
    if (text := given(4)) is not None:
        if not _FLOAT_RE.fullmatch(text) or not math.isfinite(float(text)):
            raise _column_error(where, 4, f"'{text}' is not a number")
        # Nix 2.8 turns 0 into 1 (and later versions would divide by it).
        speed = float(text) or 1.0

    supported = frozenset(_split_list(given(5) or ""))
    mandatory = frozenset(_split_list(given(6) or ""))

    key_text = given(7) or uri.params.get("base64-ssh-public-host-key") or None
    host_key = None
    if key_text is not None:
        try:
            host_key = decode_host_key(key_text)
        except ValueError as exc:
            shown = key_text if len(key_text) <= 60 else key_text[:57] + "..."
            raise _column_error(where, 7, f"'{shown}' {exc}") from None

    return Machine(
        uri=uri.uri,
        scheme=uri.scheme,
        host=uri.host,
        user=uri.user,
        port=uri.port,
        systems=systems,
        ssh_key=ssh_key,
        max_jobs=max_jobs,
        speed_factor=speed,
        supported_features=supported,
        mandatory_features=mandatory,
        public_host_key=host_key,
        params=uri.params,
        source=where,
        name=default_name(uri.uri),
    )


def default_name(uri: str) -> str:
    """A machine's name unless offload.toml gives one: its ssh host, else its whole URI."""
    try:
        parsed = parse_store_uri(uri)
    except ValueError:
        return uri
    return parsed.host if parsed.host is not None and parsed.scheme in _SSH_SCHEMES else parsed.uri


def machine_from_columns(columns: Sequence[str | None], *, source: str, system: str) -> Machine:
    """A machine from column values given elsewhere (offload.toml, NixOS); ``None`` = default."""
    tokens = []
    for index, value in enumerate(columns[:8]):
        if value is None:
            tokens.append("-")
            continue
        if not value or value == "-" or any(c in value for c in "#;" + _BLANKS):
            raise _column_error(source, index, f"{value!r} cannot be said in Nix's machines format")
        tokens.append(value)
    if tokens[0].startswith("@"):
        raise _column_error(source, 0, f"{tokens[0]!r} would be read as an @include")
    return _parse_entry(" ".join(tokens), source, system)


# --- printing -----------------------------------------------------------------------------------


def _check_token(value: str, what: str, machine: Machine) -> str:
    # What the parser could never give back: blanks split columns, '#' and ';' end an entry.
    if not value or value == "-" or any(c in value for c in "#;\n\r\t ") or value.startswith("@"):
        raise ConfigError(
            f"{machine.source}: {machine.name}: {what} '{value}' cannot go in a machines file",
            hint="values cannot be empty, '-', start with '@', or hold blanks, '#' or ';'",
        )
    return value


def _list(values: Iterable[str], what: str, machine: Machine) -> str:
    items = [_check_token(v, what, machine) for v in values]
    for item in items:
        if "," in item:
            raise ConfigError(f"{machine.source}: {what} '{item}' cannot contain ','")
    return ",".join(items) if items else "-"


def _uri_without_port(machine: Machine) -> str:
    base, q, query = machine.uri.partition("?")
    scheme, _, authority = base.partition("://")
    user, at, hostport = authority.rpartition("@")
    host = machine.host or hostport
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{user}{at}{host}{q}{query}"


def _speed_text(speed: float, nix28: bool) -> str:
    if nix28:
        return str(max(1, round(speed)))
    return str(int(speed)) if speed.is_integer() else repr(speed)


def format_machine_line(machine: Machine, *, nix28: bool = True) -> tuple[str, list[str]]:
    """One entry line and the comment lines that explain what 2.8 could not be told."""
    notes: list[str] = []
    uri = machine.uri
    if nix28 and machine.port is not None:
        if machine.uri.startswith(("ssh://", "ssh-ng://")):
            uri = _uri_without_port(machine)
        notes.append(
            f"# offload: port {machine.port} of {machine.name} dropped: Nix 2.8 cannot take "
            "host:port (use an ssh Host alias, or offload.toml [[machine]] port)"
        )
    if machine.port is not None and not nix28 and f":{machine.port}" not in machine.uri:
        uri = _uri_with_port(machine)
    if nix28 and not float(machine.speed_factor).is_integer():
        notes.append(
            f"# offload: speed factor {machine.speed_factor:g} of {machine.name} written as "
            f"{_speed_text(machine.speed_factor, nix28=True)}: Nix 2.8 takes whole numbers only"
        )
    _check_token(uri, "store URI", machine)
    # "," is an empty list, which is not the same as '-' (the local system).
    systems = _list(machine.systems, "system", machine) if machine.systems else ","
    uri_key = machine.params.get("ssh-key")
    ssh_key = "-" if machine.ssh_key in (None, uri_key) else machine.ssh_key
    host_key = "-"
    if machine.public_host_key is not None:
        encoded = machine.params.get("base64-ssh-public-host-key")
        if encoded is None or _maybe_decode(encoded) != machine.public_host_key:
            host_key = encode_host_key(machine.public_host_key)
    columns = [
        uri,
        systems,
        _check_token(ssh_key, "ssh key", machine) if ssh_key != "-" else "-",
        str(machine.max_jobs),
        _speed_text(machine.speed_factor, nix28),
        _list(sorted(machine.supported_features), "feature", machine),
        _list(sorted(machine.mandatory_features), "feature", machine),
        host_key,
    ]
    while columns[-1] == "-":
        columns.pop()
    return " ".join(columns), notes


def _maybe_decode(text: str) -> str | None:
    try:
        return decode_host_key(text)
    except ValueError:
        return None


def _uri_with_port(machine: Machine) -> str:
    _, q, query = machine.uri.partition("?")
    host = f"[{machine.host}]" if machine.host and ":" in machine.host else machine.host
    user = f"{machine.user}@" if machine.user else ""
    return f"{machine.scheme}://{user}{host}:{machine.port}{q}{query}"


def format_machines(machines: Iterable[Machine], *, nix28: bool = True) -> str:
    """Print machines as a file Nix 2.8 reads the same way (``nix28=False``: exact, for newer Nix).

    With ``nix28`` a port is dropped from the URI and a fractional speed factor is rounded, each
    with a comment line saying so; those comments contain no ';' so 2.8 skips them whole.
    """
    lines: list[str] = []
    for machine in machines:
        line, notes = format_machine_line(machine, nix28=nix28)
        lines.extend(note.replace(";", ",") for note in notes)
        lines.append(line)
    return "".join(f"{line}\n" for line in lines)
