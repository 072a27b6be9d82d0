"""Derivations in Nix's ATerm ``.drv`` format (nix-protocols.md section 7).

A ``.drv`` file is one term with no whitespace and no trailing newline::

    Derive([outputs],[inputDrvs],[inputSrcs],"platform","builder",[args],[env])

``Derivation`` mirrors it field for field. Parsing and printing are exact inverses on what Nix
writes: collections are kept in Nix's order (sorted maps, sorted sets, args in order) and strings
are decoded as UTF-8 with ``surrogateescape``, so arbitrary bytes that Nix copies into env values
survive a round trip. ``print_derivation`` returns that text; ``drv_bytes`` encodes it back to the
file's exact bytes.

Only builder, args and env strings are escaped by Nix (``"`` ``\\`` LF CR TAB); output names,
paths, hash fields, inputs and the platform are written raw.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, TypeVar, assert_never

from offload.errors import StoreError
from offload.store.drv_scan import Scanned, scan

__all__ = [
    "Derivation",
    "DerivationOutput",
    "OutputKind",
    "cursor_parse",
    "derivation_to_json",
    "drv_bytes",
    "parse_derivation",
    "print_derivation",
    "read_derivation",
]

OutputKind = Literal["input-addressed", "fixed", "floating", "deferred", "impure"]

_ENCODING = "utf-8"
_ERRORS = "surrogateescape"
_FEATURE_SEPARATORS = re.compile(r"[ \t\n\r]+")
_T = TypeVar("_T")
_V = TypeVar("_V")


@dataclass(frozen=True)
class DerivationOutput:
    path: str  # "" for floating CA / deferred / impure
    hash_algo: str  # "" for input-addressed; "r:sha256" for recursive (NAR) hashing
    hash: str  # base16, "" unless fixed CA; "impure" for impure

    @property
    def kind(self) -> OutputKind:
        # Same decision as Nix's parseDerivationOutput (derivations.cc).
        if self.hash_algo:
            if self.hash == "impure":
                return "impure"
            return "fixed" if self.hash else "floating"
        return "input-addressed" if self.path else "deferred"


def _frozen_map(items: Iterable[tuple[str, _V]]) -> Mapping[str, _V]:
    # Nix keeps these in std::map<std::string>, ordered by bytes, not by code points.
    mapping = dict(items)
    return MappingProxyType({key: mapping[key] for key in _byte_sorted(mapping)})


def _byte_sorted(strings: Iterable[str]) -> list[str]:
    """``strings`` in the order of their UTF-8 bytes (Nix's std::set and std::map order)."""
    values = list(strings)
    if all(s.isascii() for s in values):
        return sorted(values)  # the same order, and no string encoded: most names and paths
    return sorted(values, key=_sort_key)


def _sort_key(s: str) -> bytes:
    return s.encode(_ENCODING, _ERRORS)


@dataclass(frozen=True)
class Derivation:
    # The mappings are read-only views; they take no part in hashing (mappingproxy is unhashable),
    # which keeps Derivation usable as a dict key.
    outputs: Mapping[str, DerivationOutput] = field(hash=False)  # keys sorted by name
    input_drvs: Mapping[str, tuple[str, ...]] = field(hash=False)  # drv -> sorted output names
    input_srcs: tuple[str, ...]
    platform: str
    builder: str
    args: tuple[str, ...]
    env: Mapping[str, str] = field(hash=False)

    @classmethod
    def create(
        cls,
        *,
        outputs: Mapping[str, DerivationOutput],
        input_drvs: Mapping[str, Iterable[str]],
        input_srcs: Iterable[str],
        platform: str,
        builder: str,
        args: Iterable[str],
        env: Mapping[str, str],
    ) -> Derivation:
        """Build a derivation in Nix's canonical order (sorted maps and sets)."""
        return cls(
            outputs=_frozen_map(outputs.items()),
            input_drvs=_frozen_map((k, tuple(_byte_sorted(set(v)))) for k, v in input_drvs.items()),
            input_srcs=tuple(_byte_sorted(set(input_srcs))),
            platform=platform,
            builder=builder,
            args=tuple(args),
            env=_frozen_map(env.items()),
        )

    @property
    def name(self) -> str:
        """``env["name"]``; with structured attrs the name lives in ``__json`` instead."""
        if "name" in self.env or "__json" not in self.env:
            return self.env.get("name", "")
        try:
            value = json.loads(self.env["__json"])
        except (ValueError, RecursionError):
            return ""
        name = value.get("name") if isinstance(value, dict) else None
        return name if isinstance(name, str) else ""

    def _structured_attrs(self) -> dict[str, object] | None:
        raw = self.env.get("__json")
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise StoreError(f"derivation {self.name!r}: __json is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise StoreError(f"derivation {self.name!r}: __json is not a JSON object")
        return value

    @property
    def required_features(self) -> frozenset[str]:
        attrs = self._structured_attrs()
        if attrs is None:
            # tokenizeString's separators, not str.split()'s Unicode whitespace.
            features = _FEATURE_SEPARATORS.split(self.env.get("requiredSystemFeatures", ""))
            return frozenset(f for f in features if f)
        value = attrs.get("requiredSystemFeatures", [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            msg = f"derivation {self.name!r}: requiredSystemFeatures must be a list of strings"
            raise StoreError(msg)
        return frozenset(value)

    @property
    def prefer_local_build(self) -> bool:
        return self._bool_attr("preferLocalBuild", default=False)

    @property
    def allow_substitutes(self) -> bool:
        """Nix's ``allowSubstitutes`` (true unless set false): whether its outputs may be
        taken from a binary cache. ``writeText``, ``runCommandLocal`` and other builds cheaper
        than their download set it false, and Nix builds them (unless its
        ``always-allow-substitutes`` setting, where the local Nix has one, is true)."""
        return self._bool_attr("allowSubstitutes", default=True)

    def _bool_attr(self, name: str, *, default: bool) -> bool:
        """A boolean attribute as Nix's ``getBoolAttr`` reads it: from a plain environment
        "1" is true and anything else false; from structured attrs, a JSON boolean."""
        attrs = self._structured_attrs()
        if attrs is None:
            return self.env.get(name, "1" if default else "") == "1"
        value = attrs.get(name, default)
        if not isinstance(value, bool):
            raise StoreError(f"derivation {self.name!r}: {name} must be a boolean")
        return value

    @property
    def output_paths(self) -> dict[str, str]:
        return {name: out.path for name, out in self.outputs.items() if out.path}


# --- parsing -------------------------------------------------------------------------------------

_PLAIN = re.compile(rb'[^"\\]*')
_UNESCAPE = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t"}


def _first(pair: tuple[str, object]) -> str:
    return pair[0]


def _name(output: tuple[str, str, str, str]) -> str:
    return output[0]


class _Parser:
    """A cursor over the bytes of one ``.drv``; every failure names the byte offset."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fail(self, expected: str) -> StoreError:
        if self.pos >= len(self.data):
            found = "the end of the input"
        else:
            found = repr(self.data[self.pos : self.pos + 16].decode(_ENCODING, "replace"))
        return StoreError(
            f"malformed derivation at byte {self.pos}: expected {expected}, found {found}"
        )

    def literal(self, token: bytes) -> None:
        if not self.data.startswith(token, self.pos):
            raise self.fail(repr(token.decode()))
        self.pos += len(token)

    def at(self, token: bytes) -> bool:
        if self.data.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def string(self, what: str) -> str:
        if not self.at(b'"'):
            raise self.fail(f"'\"' opening {what}")
        parts: list[bytes] = []
        while True:
            match = _PLAIN.match(self.data, self.pos)
            assert match is not None  # the pattern matches the empty string
            parts.append(match.group())
            self.pos = match.end()
            if self.pos >= len(self.data):
                raise self.fail(f"'\"' closing {what}")
            if self.data[self.pos] == ord('"'):
                self.pos += 1
                return b"".join(parts).decode(_ENCODING, _ERRORS)
            self.pos += 1  # the backslash
            if self.pos >= len(self.data):
                raise self.fail(f"an escaped character in {what}")
            char = self.data[self.pos]
            parts.append(_UNESCAPE.get(char, bytes([char])))
            self.pos += 1

    def path(self, what: str) -> str:
        start = self.pos
        value = self.string(what)
        # Nix's parsePath only insists on an absolute path; the store dir is checked by callers.
        if not value.startswith("/"):
            self.pos = start
            raise self.fail(f"an absolute path as {what}")
        return value

    def items(
        self, read: Callable[[], _T], unique: tuple[str, Callable[[_T], str]] | None = None
    ) -> list[_T]:
        """A ``[a,b,...]`` list; ``unique`` names the items and their key when keys must differ."""
        self.literal(b"[")
        result: list[_T] = []
        seen: set[str] = set()
        if self.at(b"]"):
            return result
        while True:
            start = self.pos
            item = read()
            if unique is not None:
                what, key_of = unique
                key = key_of(item)
                if key in seen:
                    self.pos = start
                    raise self.fail(f"{what} other than the duplicate {key!r}")
                seen.add(key)
            result.append(item)
            if self.at(b"]"):
                return result
            if not self.at(b","):
                raise self.fail("',' or ']' after a list item")

    def output(self) -> tuple[str, str, str, str]:
        self.literal(b"(")
        name = self.string("an output name")
        self.literal(b",")
        start = self.pos
        path = self.string("an output path")
        if path and not path.startswith("/"):
            self.pos = start
            raise self.fail("an absolute output path or an empty string")
        self.literal(b",")
        hash_algo = self.string("an output hash algorithm")
        self.literal(b",")
        hash_ = self.string("an output hash")
        self.literal(b")")
        return name, path, hash_algo, hash_

    def input_drv(self) -> tuple[str, list[str]]:
        self.literal(b"(")
        path = self.path("an input derivation path")
        self.literal(b",")
        names = self.items(lambda: self.string("an output name of an input derivation"))
        self.literal(b")")
        return path, names

    def env_pair(self) -> tuple[str, str]:
        self.literal(b"(")
        key = self.string("an environment variable name")
        self.literal(b",")
        value = self.string("an environment variable value")
        self.literal(b")")
        return key, value

    def derivation(self) -> Derivation:
        self.literal(b"Derive(")
        outputs = self.items(self.output, ("an output", _name))
        self.literal(b",")
        input_drvs = self.items(self.input_drv, ("an input derivation", _first))
        self.literal(b",")
        input_srcs = self.items(lambda: self.path("an input source path"))
        self.literal(b",")
        platform = self.string("the platform")
        self.literal(b",")
        builder = self.string("the builder")
        self.literal(b",")
        args = self.items(lambda: self.string("an argument"))
        self.literal(b",")
        env = self.items(self.env_pair, ("an environment variable", _first))
        self.literal(b")")
        if self.pos != len(self.data):
            raise self.fail("the end of the derivation")
        return _derivation((outputs, input_drvs, input_srcs, platform, builder, args, env))


def _derivation(fields: Scanned) -> Derivation:
    """A derivation from its fields as a ``.drv`` lists them (both readers end here)."""
    outputs, input_drvs, input_srcs, platform, builder, args, env = fields
    return Derivation.create(
        outputs={name: DerivationOutput(path, algo, hash_) for name, path, algo, hash_ in outputs},
        input_drvs=dict(input_drvs),
        input_srcs=input_srcs,
        platform=platform,
        builder=builder,
        args=args,
        env=dict(env),
    )


def parse_derivation(text: str | bytes) -> Derivation:
    """Parse a ``.drv`` file's contents; any malformation is a ``StoreError``.

    A well-formed one is read by ``drv_scan`` (a few regular expressions); what that does not
    take, ``cursor_parse`` reads, and says where it is malformed."""
    if isinstance(text, str):
        try:
            data = text.encode(_ENCODING, _ERRORS)
        except UnicodeEncodeError as exc:
            msg = f"malformed derivation: character {exc.start} cannot be encoded as UTF-8"
            raise StoreError(msg) from exc
    else:
        data = text
    scanned = scan(data)
    if scanned is None:
        return cursor_parse(data)
    return _derivation(scanned)


def cursor_parse(data: bytes) -> Derivation:
    """``data`` read token by token (``_Parser``): the reference reading, whose errors name
    the byte where a derivation is malformed; ``parse_derivation`` gives the same, faster."""
    return _Parser(data).derivation()


def read_derivation(path: str | Path) -> Derivation:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read derivation {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        return parse_derivation(data)
    except StoreError as exc:
        raise StoreError(f"{path}: {exc.message}", hint=exc.hint) from exc


# --- printing ------------------------------------------------------------------------------------

_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _quoted(s: str) -> str:
    return '"' + s.translate(_ESCAPES) + '"'


def _raw(s: str) -> str:
    # printUnquotedString: names, paths and hashes are written without any escaping.
    return '"' + s + '"'


def print_derivation(drv: Derivation) -> str:
    """The ATerm text Nix writes for ``drv``; ``drv_bytes`` gives the file's exact bytes."""
    outputs = ",".join(
        f"({_raw(name)},{_raw(o.path)},{_raw(o.hash_algo)},{_raw(o.hash)})"
        for name, o in _sorted_items(drv.outputs)
    )
    input_drvs = ",".join(
        f"({_raw(path)},[{','.join(_raw(n) for n in sorted(names, key=_sort_key))}])"
        for path, names in _sorted_items(drv.input_drvs)
    )
    input_srcs = ",".join(_raw(p) for p in sorted(drv.input_srcs, key=_sort_key))
    args = ",".join(_quoted(a) for a in drv.args)
    env = ",".join(f"({_quoted(k)},{_quoted(v)})" for k, v in _sorted_items(drv.env))
    return (
        f"Derive([{outputs}],[{input_drvs}],[{input_srcs}],{_raw(drv.platform)},"
        f"{_quoted(drv.builder)},[{args}],[{env}])"
    )


def drv_bytes(drv: Derivation) -> bytes:
    return print_derivation(drv).encode(_ENCODING, _ERRORS)


def _sorted_items(mapping: Mapping[str, _V]) -> list[tuple[str, _V]]:
    return sorted(mapping.items(), key=lambda kv: _sort_key(kv[0]))


# --- nix show-derivation -------------------------------------------------------------------------


def _output_json(output: DerivationOutput) -> dict[str, object]:
    # show-derivation.cc (2.8) prints each output according to its kind, not its raw fields.
    kind = output.kind
    match kind:
        case "input-addressed":
            return {"path": output.path}
        case "fixed":
            return {"path": output.path, "hashAlgo": output.hash_algo, "hash": output.hash}
        case "floating":
            return {"hashAlgo": output.hash_algo}
        case "deferred":
            return {}
        case "impure":
            return {"hashAlgo": output.hash_algo, "impure": True}
        case _:
            assert_never(kind)


def derivation_to_json(drv: Derivation) -> dict[str, object]:
    """The value ``nix show-derivation`` (2.8) prints for this derivation, in its key order."""
    return {
        "outputs": {name: _output_json(o) for name, o in _sorted_items(drv.outputs)},
        "inputSrcs": sorted(drv.input_srcs, key=_sort_key),
        "inputDrvs": {
            path: sorted(names, key=_sort_key) for path, names in _sorted_items(drv.input_drvs)
        },
        "system": drv.platform,
        "builder": drv.builder,
        "args": list(drv.args),
        "env": dict(_sorted_items(drv.env)),
    }
