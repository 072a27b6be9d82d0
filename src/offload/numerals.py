"""Whole numbers in text that others wrote: ASCII digits only.

``str.isdigit`` is true of "²" and of other scripts' digits, which ``int`` refuses ("²") or
reads as a number the writer never wrote as one. A check that took them let ``int`` raise
where an error line, or a default, was meant ("internal error: ValueError")."""

from __future__ import annotations

__all__ = ["is_decimal"]


def is_decimal(text: str) -> bool:
    """Whether ``text`` is one or more of 0-9 and nothing else."""
    return text.isascii() and text.isdigit()
