"""A machines spec (the `builders` setting, ``/etc/nix/machines``) read into machines.

A spec is a text of entries separated by newlines and ``;``. offload reads it the way
Nix >= 2.29 does: comments are stripped per line *before* splitting on ``;``, and each entry is
trimmed, so blank or indented lines and ``;`` inside comments are harmless. Where Nix 2.8 read a
line differently (nix-protocols.md 6.1) the reading carries a ``NixCompat`` for it.
``@path`` includes are spliced in place. As in Nix, a missing file is skipped (with a warning,
except for Nix's own default ``@/etc/nix/machines``), an unreadable one is an error, and a
relative path is relative to the current directory (``base_dir``), not to the including file:
Nix's build hook reads it from its own, which is / (Nix starts it there, daemon or not), so a
relative path read here is said, with the fix.
An include that reaches itself again is an error (Nix recurses until it crashes).

``read_machines`` reads on past a bad entry and returns every problem, each a one-line
``ConfigError`` starting with ``file:line``: Nix rejects the whole spec for any of them, so
``parse_machines`` (what runs use) raises the first. This module does no I/O of its own:
include files are read through the ``read_file`` callable (``files.read_text_file``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from offload.config.machines.compat import NixCompat, old_reading_of_line
from offload.config.machines.entry import parse_entry
from offload.config.machines.files import read_text_file
from offload.config.machines.model import BLANKS, Machine, shown
from offload.errors import ConfigError

__all__ = ["MachinesReading", "parse_machines", "read_machines"]

_MAX_INCLUDE_DEPTH = 32


@dataclass
class MachinesReading:
    """A spec read through: machines in Nix's order, and what was said about it."""

    machines: list[Machine] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)  # each alone fails the spec in Nix
    compat: list[NixCompat] = field(default_factory=list)

    def raise_first(self) -> None:
        """Fail as Nix does on a bad spec: with the first problem (and how many more)."""
        if not self.errors:
            return
        first = self.errors[0]
        more = len(self.errors) - 1
        hint = first.hint
        if more:
            hint = f"{hint or ''}; {more} more problem(s): `offload machines` lists them all"
        raise ConfigError(first.message, hint=hint.lstrip("; ") if hint else None)


@dataclass(frozen=True)
class _Parser:
    system: str
    read_file: Callable[[str], str | None]
    base_dir: str
    warn_missing: bool
    out: MachinesReading = field(default_factory=MachinesReading)

    def parse(self, text: str, source: str, stack: tuple[str, ...], *, labels: bool) -> None:
        for lineno, raw_line in enumerate(text.split("\n"), start=1):
            where = f"{shown(source, 200)}:{lineno}" if labels else shown(source, 200)
            older = old_reading_of_line(raw_line)
            if older is not None:
                self.out.compat.append(NixCompat(where, (2, 29), older))
            for piece in raw_line.split("#", 1)[0].split(";"):
                entry = piece.strip(BLANKS)
                try:
                    if entry.startswith("@"):
                        self.include(entry[1:].strip(BLANKS), where, stack)
                    elif entry:
                        machine, compat = parse_entry(entry, where, self.system)
                        self.out.machines.append(machine)
                        self.out.compat.extend(compat)
                except ConfigError as exc:
                    self.out.errors.append(exc)

    def include(self, target: str, where: str, stack: tuple[str, ...]) -> None:
        if not target:
            self.out.warnings.append(f"{where}: '@' names no file; skipped, as Nix does")
            return
        path = posixpath.normpath(posixpath.join(self.base_dir, target))
        if not target.startswith("/"):
            self.out.warnings.append(_relative_said(where, target, self.base_dir, path))
        if path in stack:
            chain = " -> ".join(shown(p, 200) for p in (*stack, path))
            raise ConfigError(
                f"{where}: @{shown(target)} includes itself ({chain})",
                hint="Nix would recurse until it crashes; remove one of the @ lines",
            )
        if len(stack) >= _MAX_INCLUDE_DEPTH:
            message = f"{where}: @{shown(target)}: includes nest over {_MAX_INCLUDE_DEPTH} deep"
            raise ConfigError(message)
        try:
            text = self.read_file(path)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from exc
        if text is None:
            if self.warn_missing:
                self.out.warnings.append(
                    f"{where}: machines file {shown(path, 400)} does not exist; "
                    "skipped, as Nix does"
                )
            return
        self.parse(text, path, (*stack, path), labels=True)


def _relative_said(where: str, target: str, base_dir: str, path: str) -> str:
    """A relative ``@target``, said with where it was read (``path``): from the current
    directory, where Nix's build hook reads it from / (Nix starts its hook there, daemon or
    not); under offload-hook, whose directory is / as well, as Nix reads it."""
    full = shown(posixpath.abspath(path), 200)
    if posixpath.abspath(base_dir) == "/":
        return (
            f"{where}: @{shown(target)} is relative: read from / ({full}), as Nix's build hook"
            " reads it: write an absolute path"
        )
    return (
        f"{where}: @{shown(target)} is relative: read from the current directory here ({full}),"
        " where Nix's build hook reads it from /: write an absolute path"
    )


def read_machines(
    text: str,
    *,
    source: str,
    system: str,
    read_file: Callable[[str], str | None] = read_text_file,
    base_dir: Path | None = None,
    warn_missing: bool = True,
) -> MachinesReading:
    """Read a machines spec through, collecting every problem (see the module docstring).

    ``source`` names where ``text`` came from (a path or ``--builders``); entries carry
    ``source:line``, or just ``source`` for a one-line spec given on a command line.
    """
    top = str(base_dir) if base_dir is not None else "."
    parser = _Parser(system, read_file, top, warn_missing)
    labels = not (source.startswith("-") and "\n" not in text.rstrip("\n"))
    parser.parse(text, source, (), labels=labels)
    return parser.out


def parse_machines(
    text: str,
    *,
    source: str,
    system: str,
    read_file: Callable[[str], str | None] = read_text_file,
    base_dir: Path | None = None,
) -> tuple[list[Machine], list[str]]:
    """Machines (in Nix's order) and warnings; the first problem raises, as Nix fails on it."""
    reading = read_machines(
        text, source=source, system=system, read_file=read_file, base_dir=base_dir
    )
    reading.raise_first()
    return reading.machines, reading.warnings
