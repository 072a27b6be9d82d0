"""A machines spec (the `builders` setting, ``/etc/nix/machines``) read into machines.

A spec is a text of entries separated by newlines and ``;``. offload reads it the way
Nix >= 2.29 does, which is how Nix 2.8 reads every file without its parser bugs
(nix-protocols.md 6.1): comments are stripped per line *before* splitting on ``;``, and each
entry is trimmed, so blank or indented lines and ``;`` inside comments are harmless.
``@path`` includes are spliced in place; a missing file is skipped with a warning, an unreadable
one is an error, and an include that reaches itself again is an error (Nix recurses forever).
Relative include paths are taken relative to the including file (or ``base_dir`` for the top
text), where Nix uses its own working directory; the two agree for absolute paths, which is what
every real machines file uses.

This module does no I/O of its own: include files are read through the ``read_file`` callable.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from offload.config.machines.entry import parse_entry
from offload.config.machines.model import BLANKS, Machine
from offload.errors import ConfigError

__all__ = ["parse_machines", "read_text_file"]

_MAX_INCLUDE_DEPTH = 32


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
                entry = piece.strip(BLANKS)
                if not entry:
                    continue
                if entry.startswith("@"):
                    self.include(entry[1:].strip(BLANKS), where, base_dir, stack)
                else:
                    self.out.append(parse_entry(entry, where, self.system))

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
