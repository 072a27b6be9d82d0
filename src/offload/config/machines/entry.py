"""One machines entry: its columns read into a ``Machine``, with Nix's defaults and checks.

The checks are the newest Nix's (machines.cc): column 4 an unsigned int as boost reads it
(``+8`` and ``08`` are 8), column 5 a float (2.20 and later; 2.8 wanted an unsigned int), not
negative, 0 meaning 1; column 8 base64 by Nix's rule, whatever it decodes to. Where older Nix
differs the entry carries a ``NixCompat``. offload refuses one thing Nix takes: a speed factor of
``inf`` or ``nan``, which cannot rank machines. Column numbers in messages are 1-based, as people
count them (Nix's own messages are 0-based); quoted values are escaped (``shown``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import MappingProxyType

from offload.config.machines.compat import NixCompat
from offload.config.machines.host_key import decode_host_key, nix_base64_decode
from offload.config.machines.model import BLANKS, COLUMNS, UINT_RE, Machine, nix_words, shown
from offload.config.machines.uri import StoreUri, default_name, parse_store_uri
from offload.errors import ConfigError

__all__ = ["MAX_SPEED", "machine_from_columns", "parse_entry"]

_COLUMN_HINT = (
    "the columns are: URI systems ssh-key max-jobs speed-factor supported-features "
    "mandatory-features base64-host-key; write - for a default"
)
_MAX_UINT = 2**32 - 1
# Nix reads the speed factor as a float (32 bits): the largest it can hold.
MAX_SPEED = 3.4028234663852886e38
# The least speed offload ranks (and offload simulate takes): slower, a day's work looks like
# more than 2,700 years, and a build's expected end past the largest float is no end at all.
MIN_SPEED = 1e-6
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPECIAL_FLOAT_RE = re.compile(r"[+-]?(?:inf(?:inity)?|nan)", re.IGNORECASE)


def _column_error(where: str, index: int, message: str) -> ConfigError:
    return ConfigError(
        f"{where}: column {index + 1} ({COLUMNS[index]}): {message}", hint=_COLUMN_HINT
    )


def _split_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def parse_entry(entry: str, where: str, system: str) -> tuple[Machine, list[NixCompat]]:
    """The machine of one trimmed, comment-free entry, and what older Nix makes of it.

    ``where`` starts every error message."""
    tokens = nix_words(entry)[:8]
    compat: list[NixCompat] = []

    def given(index: int) -> str | None:
        value = tokens[index] if index < len(tokens) else "-"
        return None if value == "-" else value

    uri, unusable = _store_uri(tokens[0], where)
    if uri.port is not None:
        compat.append(NixCompat(where, (2, 31), _PORT_CLAUSE.format(port=uri.port)))
    systems_text = given(1)
    systems = tuple(dict.fromkeys(_split_list(systems_text))) if systems_text else (system,)
    ssh_key = given(2) or uri.params.get("ssh-key") or None
    max_jobs = _max_jobs(given(3), where)
    speed = _speed_factor(given(4), where, compat)
    supported = frozenset(_split_list(given(5) or ""))
    mandatory = frozenset(_split_list(given(6) or ""))
    key_text = given(7) or uri.params.get("base64-ssh-public-host-key") or None
    host_key = _host_key(key_text, where, from_column=given(7) is not None)
    machine = Machine(
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
        host_key_base64=key_text,
        uri_problem=unusable,
    )
    return machine, compat


_PORT_CLAUSE = (
    "gives ssh 'host:{port}' as a host name, which does not resolve: the machine is listed "
    "but never connects (use an ssh Host alias with Port {port})"
)


def _store_uri(raw_uri: str, where: str) -> tuple[StoreUri, str | None]:
    """Column 1's store URI, and why no host can be reached through it (None: one can). Nix
    2.8 takes any URI there and fails to connect to it when it builds, building elsewhere:
    such a line leaves its machine out, not the whole file (``Machine.not_connected``)."""
    if raw_uri == "-":
        raise _column_error(where, 0, "a store URI is required, not '-'")
    try:
        return parse_store_uri(raw_uri), None
    except ValueError as exc:
        scheme, found, _ = raw_uri.partition("://")
        uri = raw_uri if found else f"ssh://{raw_uri}"
        why = str(exc)
        try:  # said of the URI as it is kept (and printed: it reads back the same)
            parse_store_uri(uri)
        except ValueError as again:
            why = str(again)
        none: MappingProxyType[str, str] = MappingProxyType({})
        return StoreUri(uri, scheme if found else "ssh", None, None, None, none), why


def _max_jobs(text: str | None, where: str) -> int:
    if text is None:
        return 1
    if not UINT_RE.fullmatch(text) or int(text) > _MAX_UINT:
        raise _column_error(where, 3, f"'{shown(text)}' is not a whole number of jobs")
    return int(text)


def _speed_factor(text: str | None, where: str, compat: list[NixCompat]) -> float:
    if text is None:
        return 1.0
    if _SPECIAL_FLOAT_RE.fullmatch(text):
        message = f"'{text}' cannot rank machines (Nix takes it; offload does not)"
        raise _column_error(where, 4, message)
    if not _FLOAT_RE.fullmatch(text) or abs(float(text)) > MAX_SPEED:
        raise _column_error(where, 4, f"'{shown(text)}' is not a number")
    value = float(text)
    if value < 0:
        raise _column_error(where, 4, f"'{text}': the speed factor must be >= 0")
    if 0 < value < MIN_SPEED:
        raise _column_error(
            where,
            4,
            f"'{text}' is too small a speed factor to rank machines by (the least:"
            f" {MIN_SPEED:g}; Nix takes it, offload does not)",
        )
    if not UINT_RE.fullmatch(text) or int(text) > _MAX_UINT:
        clause = f"rejects the whole file: speed factor '{text}' is not a whole number"
        compat.append(NixCompat(where, (2, 20), clause))
    # Nix turns 0 into 1 (2.8: max(1, n); newer: 0 -> 1).
    return value or 1.0


def _host_key(key_text: str | None, where: str, *, from_column: bool) -> str | None:
    if key_text is None:
        return None
    try:
        nix_base64_decode(key_text)
    except ValueError as exc:
        if from_column:  # Nix checks the column only; a bad URI parameter fails at connect
            raise _column_error(where, 7, f"'{shown(key_text)}' is not base64 ({exc})") from None
        return None
    try:
        return decode_host_key(key_text)
    except ValueError:
        return None  # Nix takes it; ``Machine.pins_junk`` and `offload machines` say so


def machine_from_columns(columns: Sequence[str | None], *, source: str, system: str) -> Machine:
    """A machine from column values given elsewhere (offload.toml, NixOS); ``None`` = default."""
    tokens = []
    for index, value in enumerate(columns[:8]):
        if value is None:
            tokens.append("-")
            continue
        if not value or value == "-" or any(c in value for c in "#;" + BLANKS):
            message = f"'{shown(value)}' cannot be said in Nix's machines format"
            raise _column_error(source, index, message)
        tokens.append(value)
    if tokens[0].startswith("@"):
        raise _column_error(source, 0, f"'{shown(tokens[0])}' would be read as an @include")
    return parse_entry(" ".join(tokens), source, system)[0]
