"""Nix source text for values that come from users and builders: strings, lists, attribute names.

A double-quoted Nix string gives meaning to ``\\``, ``"`` and ``${``; every backslash, quote and
dollar is escaped (``\\$`` is a plain ``$`` in Nix), so nothing a host name, user or key comment
holds can end the string or start an interpolation. Indented strings (``''...''``, for ssh_config
text) have their own escapes: ``''$`` for ``$`` and ``''\\'`` for ``'``, so no run of quotes in
the text can close the string. Control characters other than newline and tab are refused: no
value offload writes has a reason to hold them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from offload.errors import ConfigError

__all__ = ["attr_name", "indented", "nix_list", "nix_string"]

_PLAIN_ATTR = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_KEYWORDS = frozenset({"if", "then", "else", "assert", "with", "let", "in", "rec", "inherit", "or"})


def _check(text: str) -> str:
    if _CONTROL.search(text):
        raise ConfigError(
            f"{text!r} holds a control character and cannot be written into a Nix file"
        )
    return text


def nix_string(text: str) -> str:
    """``text`` as a double-quoted Nix string that evaluates to exactly ``text``."""
    body = (
        _check(text)
        .replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("$", "\\$")
        .replace("\n", "\\n")
        .replace("\t", "\\t")
    )
    return f'"{body}"'


def nix_list(items: Iterable[str]) -> str:
    """A list of strings on one line: ``[ "a" "b" ]`` (``[ ]`` when empty)."""
    inner = " ".join(nix_string(item) for item in items)
    return f"[ {inner} ]" if inner else "[ ]"


def attr_name(name: str) -> str:
    """An attribute name: bare when Nix reads it as one, else a quoted string."""
    if _PLAIN_ATTR.fullmatch(name) and name not in _KEYWORDS:
        return name
    return nix_string(name)


def indented(text: str, indent: str) -> str:
    """``text`` (lines ending in newlines) as an indented string ``''...''`` whose lines start
    with ``indent``; Nix strips that common indentation, so it evaluates to ``text``."""
    escaped = _check(text).replace("'", "''\\'").replace("$", "''$")
    lines = "".join(f"{indent}{line}\n" if line else "\n" for line in escaped.split("\n")[:-1])
    closing = indent[:-2] if len(indent) >= 2 else ""
    return f"''\n{lines}{closing}''"
