"""A well-formed ``.drv`` read in a few passes of regular expressions (``scan``).

``offload.store.drv``'s parser walks a derivation token by token in Python, which is what a
graph of thousands of derivations spent most of its reading on (about 0.17 ms a derivation of
ten variables). Here one expression matches the whole term, every list and string of it in C,
and the strings are then taken out of each list at once. It only accepts: anything it does not
take (a malformed term, a path that is not absolute, a name given twice) is None, and the
cursor parser then reads the bytes again, so that one parser says what is wrong and where.
What it takes, it reads as that parser does (``tests/unit/test_drv_scan.py`` holds it to that).

A string's escapes are Nix's: ``\\n``, ``\\r`` and ``\\t`` are LF, CR and TAB, a backslash
before any other byte is that byte.
"""

from __future__ import annotations

import codecs
import re

__all__ = ["Scanned", "scan"]

# A string's body and its quotes; unrolled so that no input makes it backtrack.
_BODY = r'[^"\\]*(?:\\.[^"\\]*)*'
_STR = '"' + _BODY + '"'


def _items(item: str) -> str:
    """The insides of a ``[...]`` list of ``item``."""
    return "(?:" + item + "(?:," + item + ")*)?"


def _list(item: str) -> str:
    """A ``[...]`` list of ``item``, its insides captured."""
    return r"\[(" + _items(item) + r")\]"


_OUTPUT = r"\(" + ",".join([_STR] * 4) + r"\)"
_INPUT = r"\(" + _STR + r",\[" + _items(_STR) + r"\]\)"
_PAIR = r"\(" + _STR + "," + _STR + r"\)"
# outputs, input derivations, input sources, platform, builder, args, env.
_FIELDS = [_list(_OUTPUT), _list(_INPUT), _list(_STR), f"({_STR})", f"({_STR})", _list(_STR)]
_TERM = re.compile(r"Derive\(" + ",".join([*_FIELDS, _list(_PAIR)]) + r"\)", re.DOTALL)
_STRINGS = re.compile('"(' + _BODY + ')"', re.DOTALL)
_INPUTS = re.compile(r'\("(' + _BODY + r')",\[(' + _items(_STR) + r")\]\)", re.DOTALL)
_ESCAPED = re.compile(rb"\\(.)", re.DOTALL)
# A backslash before anything but what Nix escapes (", \, n, r, t). Searched at every backslash,
# also an escaped one: a false alarm only takes the slower way.
_OTHER_ESCAPE = re.compile(r'\\[^"\\nrt]', re.DOTALL)
_UNESCAPE = {b"n": b"\n", b"r": b"\r", b"t": b"\t"}

_ENCODING = "utf-8"
_ERRORS = "surrogateescape"

# outputs (name, path, hash algorithm, hash), input derivations (path, output names), input
# sources, platform, builder, args, env (name, value): in the file's order.
Scanned = tuple[
    list[tuple[str, str, str, str]],
    list[tuple[str, list[str]]],
    list[str],
    str,
    str,
    list[str],
    list[tuple[str, str]],
]


def scan(data: bytes) -> Scanned | None:
    """``data``'s fields if it is a well-formed derivation (module docstring), else None."""
    # Decoded once, not string by string: UTF-8 finds its footing again at every ASCII byte,
    # so each string's text is the same either way (an escaped one is unescaped as bytes).
    term = _TERM.fullmatch(data.decode(_ENCODING, _ERRORS))
    if term is None:
        return None
    outputs_raw, inputs_raw, srcs_raw, platform, builder, args_raw, env_raw = term.groups()
    # Each findall below resumes where the last string or item ended, so it sees only the
    # punctuation between them: it takes exactly the items the whole match checked.
    flat = _strings(outputs_raw)
    outputs = list(zip(flat[0::4], flat[1::4], flat[2::4], flat[3::4], strict=True))
    inputs = [(_text(path), _strings(names)) for path, names in _INPUTS.findall(inputs_raw)]
    srcs = _strings(srcs_raw)
    env_flat = _strings(env_raw)
    env = list(zip(env_flat[0::2], env_flat[1::2], strict=True))
    if (
        any(path and not path.startswith("/") for _, path, _, _ in outputs)
        or not all(path.startswith("/") for path, _ in inputs)
        or not all(path.startswith("/") for path in srcs)
        or len({name for name, *_ in outputs}) != len(outputs)
        or len({path for path, _ in inputs}) != len(inputs)
        or len({name for name, _ in env}) != len(env)
    ):
        return None
    return (
        outputs,
        inputs,
        srcs,
        _text(platform[1:-1]),
        _text(builder[1:-1]),
        _strings(args_raw),
        env,
    )


def _strings(raw: str) -> list[str]:
    return [body if "\\" not in body else _unescaped(body) for body in _STRINGS.findall(raw)]


def _text(body: str) -> str:
    return body if "\\" not in body else _unescaped(body)


def _unescaped(body: str) -> str:
    raw = body.encode(_ENCODING, _ERRORS)  # the file's bytes again
    if _OTHER_ESCAPE.search(body) is None:
        # Only the five escapes Nix writes, which Python's own decoder reads alike, in C
        # (pickle reads its STRING opcode with it): a script of 50 escapes in 2 us, not 30.
        raw = codecs.escape_decode(raw)[0]
    else:
        raw = _ESCAPED.sub(lambda m: _UNESCAPE.get(m[1], m[1]), raw)
    return raw.decode(_ENCODING, _ERRORS)
