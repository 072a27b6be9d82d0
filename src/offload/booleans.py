"""Nix's booleans in text that others wrote: a store URI's ``?compress=``, a setting's value.

Nix reads a boolean setting (``BaseSetting<bool>::parse``) as true for ``true``, ``yes`` and
``1``, false for ``false``, ``no`` and ``0``, and refuses anything else. offload read only
``true``: ``?compress=1`` or ``builders-use-substitutes = yes`` were off to it and on to Nix.
"""

from __future__ import annotations

__all__ = ["nix_bool"]

_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})


def nix_bool(value: str | None, default: bool = False) -> bool:
    """Whether Nix reads ``value`` as true; ``default`` for None or a word Nix would refuse."""
    if value in _TRUE:
        return True
    return False if value in _FALSE else default
