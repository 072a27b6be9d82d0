"""The word a user meant: of the words known where they typed, the closest to what they typed
(difflib's ratio, as Python's own "did you mean" suggestions), or None when none is close.
One rule for every "did you mean" offload says: subcommands, machines-file URI parameters,
systems, NixOS options."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["meant"]


def meant(word: str, known: Iterable[str], cutoff: float = 0.6) -> str | None:
    """``cutoff``: how close (difflib's ratio) a known word must be; higher where the known
    words are alike (systems: ``aarch64-linux`` is 0.64 of ``x86_64-linux``)."""
    import difflib  # only on the way to an error or a warning

    close = difflib.get_close_matches(word, list(known), n=1, cutoff=cutoff)
    return close[0] if close else None
