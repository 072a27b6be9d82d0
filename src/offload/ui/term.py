"""Pure text helpers for everything a renderer writes: sanitising, truncating, formatting.

Build logs arrive as whatever the builder printed: colours, cursor movement, carriage-return
progress bars, stray control bytes. Written raw above a live region they would move the cursor
and corrupt it, and in a CI log they are noise, so every log line a renderer shows goes through
``sanitize`` (and, on a terminal, ``truncate``). The kept log files store the text as received;
``offload log`` applies ``sanitize`` only when its stdout is not a terminal.
"""

from __future__ import annotations

import re

from offload.ansi import ESCAPE_PATTERN

__all__ = [
    "PHASE_LABELS",
    "colours_only",
    "format_bytes",
    "format_duration",
    "sanitize",
    "sanitize_text",
    "truncate",
]

PHASE_LABELS = {
    "queued": "queued",
    "connecting": "connecting",
    "sending": "sending inputs",
    "building": "building",
    "fetching": "fetching outputs",
}

_ESCAPES = re.compile(ESCAPE_PATTERN, re.VERBOSE | re.MULTILINE)
# C0 and C1 controls but tab; Unicode's bidirectional marks, embeddings, overrides and isolates,
# which reorder how the rest of the line is shown (a log line could show text it does not
# hold); its line and paragraph separators; and the fillers a terminal draws wider than rich
# counts them (U+3164: 1 cell to rich, 2 to glibc), which broke the live view's redraws.
_CONTROLS = re.compile(
    r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
    r"\u2066-\u2069\u115f\u1160\u3164\uffa0]"
)
_TAB = 8


def sanitize(line: str) -> str:
    """One log line as a terminal would finally show it, with no escape or control characters.

    A carriage return inside the line (progress bars) keeps only the last non-empty segment, as
    the terminal would have overwritten the rest; tabs become spaces.
    """
    line = _ESCAPES.sub("", line.rstrip("\r\n"))
    if "\r" in line:
        segments = [s for s in line.split("\r") if s]
        line = segments[-1] if segments else ""
    return _CONTROLS.sub("", line.expandtabs(_TAB))


# What a log may still do on a terminal: colour (SGR), and move to a line's start or the next.
_COLOUR = re.compile(r"\x1b\[[0-9;:]*m")
_ESCAPE_OR_CONTROL = re.compile(
    ESCAPE_PATTERN
    + r"| [\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
    + r"\u202a-\u202e\u2066-\u2069\u115f\u1160\u3164\uffa0]",
    re.VERBOSE | re.MULTILINE,
)


def colours_only(text: str) -> str:
    """``text`` for a terminal with its colours kept (``nix log``'s pager, ``less -R``, keeps
    as much) and every other escape or control taken out: a log must not set the clipboard
    (OSC 52), the window's title, clear the screen or move the cursor."""
    return _ESCAPE_OR_CONTROL.sub(lambda m: m.group() if _COLOUR.fullmatch(m.group()) else "", text)


def sanitize_text(text: str) -> str:
    """A whole log, line by line (``\\n`` separated), through ``sanitize``."""
    lines = text.split("\n")
    trailing = lines and lines[-1] == ""
    body = "\n".join(sanitize(line) for line in (lines[:-1] if trailing else lines))
    return body + "\n" if trailing else body


def truncate(text: str, width: int, ellipsis: str = "…") -> str:
    """``text`` cut to at most ``width`` terminal cells, marked with ``ellipsis`` when cut."""
    if width <= 0:
        return ""
    # Only the live view truncates: a run with --json or into a file does without rich.
    from rich.cells import cell_len, set_cell_size

    if cell_len(text) <= width:
        return text
    room = width - cell_len(ellipsis)
    if room <= 0:
        return set_cell_size(ellipsis, width)
    return set_cell_size(text, room).rstrip() + ellipsis


def format_duration(seconds: float) -> str:
    """``2.8s``, ``1m05s``, ``2h03m``: short, fixed precision, for people."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_bytes(count: int) -> str:
    """Binary units: ``512 B``, ``1.5 KiB``, ``12.3 MiB``."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover
