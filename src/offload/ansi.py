"""The escape sequences Nix writes into its messages (colours, cursor movement, titles and
hyperlinks), taken out of what offload passes on as text: one rule, at the bottom so every
layer that reads Nix's words (a serve remote's stderr, ``nix show-config``'s) can use it."""

from __future__ import annotations

import re

__all__ = ["strip_ansi"]

_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor movement
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: titles, hyperlinks
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
)


def strip_ansi(s: str) -> str:
    return _ANSI.sub("", s)
