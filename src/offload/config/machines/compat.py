"""What older Nix makes of a machines file offload reads the way the newest Nix does.

offload accepts what the newest Nix accepts. Where an older Nix (the one installed here may be
2.8) would read a line differently or reject the whole file, the parser records a ``NixCompat``
naming the first Nix version that reads it as offload does; the caller, which knows the local
Nix version, turns those that apply into one warning line each. The versions come from Nix's
history: fractional speed factors in 2.20, several ``NIX_REMOTE_SYSTEMS`` files in 2.24,
comments before ``;`` and trimmed entries in 2.29, ``host:port`` in 2.31.
"""

from __future__ import annotations

from dataclasses import dataclass

from offload.config.machines.model import BLANKS, nix_words, shown

__all__ = ["NixCompat", "old_reading_of_line"]

Version = tuple[int, ...]


@dataclass(frozen=True)
class NixCompat:
    where: str
    since: Version  # the first Nix that reads it as offload does
    older: str  # what Nix before ``since`` does, as a clause: "rejects the whole file (...)"

    def applies(self, version: Version | None) -> bool:
        """Would the local Nix (``None``: unknown) read this differently?"""
        return version is None or version < self.since

    def message(self, version: Version | None) -> str:
        local = ".".join(map(str, version)) if version is not None else "unknown"
        since = ".".join(map(str, self.since))
        return f"{self.where}: Nix before {since} {self.older} (the local Nix is {local})"


def _new_reading(line: str) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for piece in line.split("#", 1)[0].split(";"):
        entry = piece.strip(BLANKS)
        if entry.startswith("@"):
            out.append(("@", entry[1:].strip(BLANKS)))
        elif entry:
            out.append(("machine", *nix_words(entry)))
    return out


def _describe(reading: list[tuple[str, ...]]) -> str:
    if not reading:
        return "nothing"
    return ", ".join(
        f"include '{shown(r[1], 40)}'" if r[0] == "@" else f"machine '{shown(r[1], 40)}'"
        for r in reading
    )


def old_reading_of_line(line: str) -> str | None:
    """How Nix before 2.29 reads one line of a machines file, when that differs; else None.

    That Nix split on ``;`` before stripping comments, stripped from ``#`` without trimming, and
    took an untrimmed piece as an entry: blank pieces fail the whole file, an indented ``@`` is
    a store URI, and ``;`` inside a comment starts a real entry (nix-protocols.md 6.1).
    """
    old: list[tuple[str, ...]] = []
    for piece in (p for p in line.split(";") if p):
        text = piece.split("#", 1)[0]
        if not text:
            continue
        if text.startswith("@"):
            old.append(("@", text[1:].strip(BLANKS)))
        elif not text.strip(BLANKS):
            return "rejects the whole file for a blank entry here ('store URL was not found')"
        else:
            old.append(("machine", *nix_words(text)))
    new = _new_reading(line)
    if old == new:
        return None
    return f"reads this line as {_describe(old)}, not {_describe(new)}"
