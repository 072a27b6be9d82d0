"""The line an offload process writes into the slot file it holds, and what it tells a reader.

``offload pid=<pid> ns=<its pid namespace> until=<wall clock> by=<build|hook> drv=<name>``:
the holder, when it expects the build to end (``until``, where it has an estimate), which
program holds it (``offload build`` or offload-hook) and what it builds there (the derivation's
name, as in ``hello-2.12``, without its hash and ``.drv``). Another process deciding whether to
wait for the slot reads ``until``; ``offload status`` reads them all, to say who builds what
on each machine. Fields are ``key=value`` words: a reader takes those it knows and ignores the
rest, so an older offload reads a newer line (and a newer one an older line, which has no
``by`` or ``drv``). A store name has no space; ``=`` may be part of it, and only the first
``=`` of a word splits it.

Every line is padded with spaces to ``LINE_BYTES`` (its name cut short to fit: a name may be
211 characters): the file is rewritten in place for each build and never truncated, which on
ext4 costs a journal transaction (``offload.slots._write_holder``), and a reader's one
``LINE_BYTES`` read gets the whole line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from offload.numerals import is_decimal

__all__ = [
    "LINE_BYTES",
    "PROGRAMS",
    "SlotHolder",
    "holder_line",
    "line_fields",
    "read_holder_line",
]

LINE_BYTES = 128
# What ``by=`` may say, and how a person knows each program.
PROGRAMS = {"build": "offload build", "hook": "offload-hook"}
_CUT = "..."


@dataclass(frozen=True)
class SlotHolder:
    """An offload process holding a slot, as its line says. ``pid`` is None for a holder in
    another pid namespace (its number means nothing here); ``program`` and ``drv`` are None
    where an older offload wrote the line."""

    pid: int | None
    until: float | None
    program: str | None = None  # a key of PROGRAMS
    drv: str | None = None


def holder_line(
    pid: int, namespace: str, until: float | None, program: str | None, drv: str | None
) -> bytes:
    """The line, ``LINE_BYTES`` long with its newline, for a slot its holder takes now."""
    line = f"offload pid={pid} ns={namespace}"
    if until is not None:
        line += f" until={until:.3f}"
    if program is not None:
        line += f" by={program}"
    if drv:
        room = LINE_BYTES - 1 - len(line) - len(" drv=")
        name = drv if len(drv) <= room else drv[: room - len(_CUT)] + _CUT
        line += f" drv={name}"
    return f"{line:<{LINE_BYTES - 1}}\n".encode("ascii", "replace")


def line_fields(text: str) -> dict[str, str]:
    """The ``key=value`` words after the line's first one."""
    return dict(word.partition("=")[::2] for word in text.split()[1:])


def read_holder_line(text: str, *, same_namespace: bool) -> SlotHolder:
    """What a held slot's file (``text``, stripped) says of its holder: an offload line, an
    older offload-hook's bare time, or nothing (Nix's own hook leaves the file empty)."""
    if not text.startswith("offload"):
        return SlotHolder(None, _finite(text))
    fields = line_fields(text)
    pid = fields.get("pid", "")
    until = _finite(fields.get("until"))
    program = fields.get("by")
    return SlotHolder(
        int(pid) if same_namespace and is_decimal(pid) else None,
        until,
        program if program in PROGRAMS else None,
        fields.get("drv") or None,
    )


def _finite(text: str | None) -> float | None:
    try:
        value = float(text or "nan")
    except ValueError:
        return None
    return value if math.isfinite(value) else None
