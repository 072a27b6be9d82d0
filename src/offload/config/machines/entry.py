"""One machines entry: its columns read into a ``Machine``, with Nix's defaults and checks.

Beyond Nix 2.8 offload accepts fractional speed factors (as Nix >= 2.20 does). Column numbers in
messages are 1-based, as people count them (Nix's own messages are 0-based).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from offload.config.machines.host_key import decode_host_key
from offload.config.machines.model import BLANKS, COLUMNS, UINT_RE, Machine
from offload.config.machines.uri import StoreUri, default_name, parse_store_uri
from offload.errors import ConfigError

__all__ = ["machine_from_columns", "parse_entry"]

_COLUMN_HINT = (
    "the columns are: URI systems ssh-key max-jobs speed-factor supported-features "
    "mandatory-features base64-host-key; write - for a default"
)
_MAX_UINT = 2**32 - 1
_FLOAT_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _column_error(where: str, index: int, message: str) -> ConfigError:
    return ConfigError(
        f"{where}: column {index + 1} ({COLUMNS[index]}): {message}", hint=_COLUMN_HINT
    )


def _split_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def parse_entry(entry: str, where: str, system: str) -> Machine:
    """The machine of one trimmed, comment-free entry; ``where`` starts every error message."""
    tokens = [t for t in re.split(r"[ \t\r\n]+", entry) if t][:8]

    def given(index: int) -> str | None:
        value = tokens[index] if index < len(tokens) else "-"
        return None if value == "-" else value

    uri = _store_uri(tokens[0], where)
    systems_text = given(1)
    systems = tuple(dict.fromkeys(_split_list(systems_text))) if systems_text else (system,)
    ssh_key = given(2) or uri.params.get("ssh-key") or None
    max_jobs = _max_jobs(given(3), where)
    speed = _speed_factor(given(4), where)
    supported = frozenset(_split_list(given(5) or ""))
    mandatory = frozenset(_split_list(given(6) or ""))
    key_text = given(7) or uri.params.get("base64-ssh-public-host-key") or None
    host_key = _host_key(key_text, where)
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


def _store_uri(raw_uri: str, where: str) -> StoreUri:
    if raw_uri == "-":
        raise _column_error(where, 0, "a store URI is required, not '-'")
    try:
        return parse_store_uri(raw_uri)
    except ValueError as exc:
        raise _column_error(where, 0, str(exc)) from None


def _max_jobs(text: str | None, where: str) -> int:
    if text is None:
        return 1
    if not UINT_RE.fullmatch(text) or int(text) > _MAX_UINT:
        raise _column_error(where, 3, f"'{text}' is not a whole number of jobs")
    return int(text)


def _speed_factor(text: str | None, where: str) -> float:
    if text is None:
        return 1.0
    if not _FLOAT_RE.fullmatch(text) or not math.isfinite(float(text)):
        raise _column_error(where, 4, f"'{text}' is not a number")
    # Nix 2.8 turns 0 into 1 (and later versions would divide by it).
    return float(text) or 1.0


def _host_key(key_text: str | None, where: str) -> str | None:
    if key_text is None:
        return None
    try:
        return decode_host_key(key_text)
    except ValueError as exc:
        shown = key_text if len(key_text) <= 60 else key_text[:57] + "..."
        raise _column_error(where, 7, f"'{shown}' {exc}") from None


def machine_from_columns(columns: Sequence[str | None], *, source: str, system: str) -> Machine:
    """A machine from column values given elsewhere (offload.toml, NixOS); ``None`` = default."""
    tokens = []
    for index, value in enumerate(columns[:8]):
        if value is None:
            tokens.append("-")
            continue
        if not value or value == "-" or any(c in value for c in "#;" + BLANKS):
            raise _column_error(source, index, f"{value!r} cannot be said in Nix's machines format")
        tokens.append(value)
    if tokens[0].startswith("@"):
        raise _column_error(source, 0, f"{tokens[0]!r} would be read as an @include")
    return parse_entry(" ".join(tokens), source, system)
