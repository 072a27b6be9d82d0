"""Option values bound as Nix binds them, for a parser that stands in for a Nix command.

Nix's parser gives an option the next N words, whatever they are: ``--argstr flags -O2``,
``--arg n -x``, ``-I -dir``, ``-o -link``, ``--option name --`` all take the word after them.
argparse first sorts every word into option or value by its look, so a value starting with
``-`` is taken for an option and refused ("expected 2 arguments"). ``bind`` reads the words
first, as Nix does: after an option of N values (N fixed), the next N words are its values,
and one starting with ``-`` gets a NUL in front (no argv word holds one), which makes argparse
take it for a value; the option's type, made ``Unescaping``, removes it before anything sees
the value. A ``--`` that is not a value still ends the options; the words after it are left as
they are. Only exact option words bind (Nix knows no abbreviations; ``--opt=value`` and ``-jN``
are argparse's).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["ESCAPE", "Unescaping", "bind"]

ESCAPE = "\0"
Type = Callable[[str], Any]


def _arity(action: argparse.Action) -> int:
    """How many words ``action`` takes when that is fixed (``nargs`` None or a number), else 0
    (a switch; ``?``, ``*``, ``+``: argparse's to decide, and Nix has none of those)."""
    if not action.option_strings:
        return 0
    if action.nargs is None:
        return 1
    return action.nargs if isinstance(action.nargs, int) else 0


@dataclass(frozen=True)
class Unescaping:
    """argparse's ``type`` for a value ``bind`` may have escaped: ``convert`` (the option's own
    type; None: the text as it is) of the value without its escape. An error names the value
    as given, in argparse's words."""

    convert: Type | None

    def __call__(self, text: str) -> Any:  # noqa: ANN401 - what ``convert`` returns
        value = text.removeprefix(ESCAPE)
        if self.convert is None:
            return value
        try:
            return self.convert(value)
        except (TypeError, ValueError) as exc:  # argparse's message, without the escape
            name = getattr(self.convert, "__name__", repr(self.convert))
            msg = f"invalid {name} value: {value!r}"
            raise argparse.ArgumentTypeError(msg) from exc


def bind(actions: Iterable[argparse.Action], words: Iterable[str]) -> list[str]:
    """``words`` with every option's values marked as values (``ESCAPE``); the options that
    take values get ``Unescaping`` types (once)."""
    arity: dict[str, int] = {}
    for action in actions:
        count = _arity(action)
        if count:
            arity.update(dict.fromkeys(action.option_strings, count))
            convert = action.type  # a name in argparse's registry (a str) is not used here
            if convert is None or (callable(convert) and not isinstance(convert, Unescaping)):
                action.type = Unescaping(convert)
    words = list(words)
    bound: list[str] = []
    at = 0
    while at < len(words):
        word = words[at]
        bound.append(word)
        at += 1
        if word == "--":
            bound += words[at:]
            break
        values = words[at : at + arity.get(word, 0)]
        bound += [ESCAPE + value if value.startswith("-") else value for value in values]
        at += len(values)
    return bound
