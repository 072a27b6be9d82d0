"""The escape sequences Nix and builds write into their text (colours, cursor movement, titles,
hyperlinks), and the one rule that finds them: at the bottom so every layer that reads Nix's
words (a serve remote's stderr, ``nix show-config``'s) and every renderer of a build's log
(``offload.ui.term``) can use it.

The rule is ECMA-48's: CSI (colours, cursor movement), OSC (titles, hyperlinks) ended by BEL or
ST, DCS/SOS/PM/APC strings ended by ST, charset selection, the two-byte forms, and the 8-bit C1
CSI. A string not ended on its line (a log cut short) ends with its line: it hides no line after.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["ESCAPE_PATTERN", "last_nix_error", "strip_ansi"]

# Verbose; ``$`` ends an unterminated string, matched with re.MULTILINE so that it is its line's.
ESCAPE_PATTERN = r"""
      \x1b\[ [0-?]* [\x20-/]* [@-~]
    | \x1b\] [^\n]*? (?:\x07|\x1b\\|$)
    | \x1b [PX^_] [^\n]*? (?:\x1b\\|$)
    | \x1b [()*+] .
    | \x1b [\x20-/]* [0-~]
    | \x9b [0-?]* [\x20-/]* [@-~]
"""

_ANSI = re.compile(ESCAPE_PATTERN, re.VERBOSE | re.MULTILINE)


def strip_ansi(s: str) -> str:
    return _ANSI.sub("", s)


def last_nix_error(lines: Iterable[str]) -> str | None:
    """Nix's last ``error:`` line of ``lines`` (what it printed), colours taken out and its
    blanks made single; None if it said none. Nix 2.8 follows a setting it refuses with "Try
    'nix-store --help' for more information.": the last line alone says nothing of why."""
    plain = [" ".join(strip_ansi(line).split()) for line in lines]
    return next((line for line in reversed(plain) if line.startswith("error:")), None)
