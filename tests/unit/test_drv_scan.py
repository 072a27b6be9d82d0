"""The regular-expression reading of a ``.drv`` (``drv_scan``) against the cursor parser, the
reference: it takes every well-formed derivation and reads it alike, field by field and in
order, and declines everything the cursor parser rejects."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload.errors import StoreError
from offload.store.drv import Derivation, cursor_parse, drv_bytes, parse_derivation
from offload.store.drv_scan import scan
from tests.helpers.derivations import derivations, mutated, mutations, nix_strings

FIXTURES = sorted((Path(__file__).parent.parent / "fixtures" / "drv").glob("*.drv"))
FIXTURE_BYTES = [p.read_bytes() for p in FIXTURES]
# What a term is made of, and the escapes Nix writes and those it only reads.
PIECES = st.sampled_from(
    ["(", ")", "[", "]", ",", '"', "\\", "\\n", "\\t", "\\a", "\\\n", "/", "out", "\xe9", "\udce2"]
)


def _fields(drv: Derivation) -> tuple[object, ...]:
    """Every field, maps as item lists: their order is part of what is read."""
    return (
        list(drv.outputs.items()),
        list(drv.input_drvs.items()),
        drv.input_srcs,
        drv.platform,
        drv.builder,
        drv.args,
        list(drv.env.items()),
    )


def _read_alike(data: bytes) -> None:
    """``scan`` takes ``data`` exactly when the cursor parser does, and reads it alike."""
    try:
        expected = cursor_parse(data)
    except StoreError:
        assert scan(data) is None
        with pytest.raises(StoreError, match="malformed derivation at byte"):
            parse_derivation(data)
        return
    assert scan(data) is not None
    assert _fields(parse_derivation(data)) == _fields(expected)


@pytest.mark.parametrize("data", FIXTURE_BYTES, ids=[p.name for p in FIXTURES])
def test_every_fixture_is_read_alike(data: bytes) -> None:
    _read_alike(data)


@given(derivations)
def test_derivations_as_nix_prints_them_are_read_alike(drv: Derivation) -> None:
    _read_alike(drv_bytes(drv))


@given(st.lists(nix_strings, max_size=3), st.lists(st.lists(PIECES, max_size=8).map("".join)))
def test_strings_with_any_escape_are_read_as_nix_reads_them(
    args: list[str], raw_args: list[str]
) -> None:
    # Raw argument text, escapes unchecked: \a and a backslash before a line feed are read by
    # Nix as "a" and a line feed; a lone quote or backslash makes the term malformed.
    quoted = ",".join(f'"{a}"' for a in raw_args)
    printed = drv_bytes(Derivation.create(
        outputs={}, input_drvs={}, input_srcs=[], platform="x", builder="b", args=args, env={},
    ))  # fmt: skip
    _read_alike(printed.replace(b',"b",[', b',"b",[' + quoted.encode("utf-8", "surrogateescape")))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURE_BYTES), mutations)
def test_mutated_fixtures_are_declined_or_read_alike(
    data: bytes, changes: list[tuple[int, int, bool]]
) -> None:
    _read_alike(mutated(data, changes))


def test_what_the_cursor_parser_rejects_is_declined() -> None:
    printed = drv_bytes(Derivation.create(
        outputs={}, input_drvs={"/a.drv": ["out"]}, input_srcs=["/src"], platform="x",
        builder="b", args=[], env={"k": "v"},
    ))  # fmt: skip
    for bad in [
        printed.replace(b'"/src"', b'"src"'),  # a source that is not an absolute path
        printed.replace(b'"/a.drv"', b'"a.drv"'),  # nor an input derivation
        printed.replace(b'("k","v")', b'("k","v"),("k","w")'),  # a variable set twice
        printed + b" ",  # anything after the term
        printed.replace(b"Derive(", b"Derive( "),
    ]:
        assert scan(bad) is None
        _read_alike(bad)


def test_escapes_nix_only_reads_are_read_as_it_reads_them() -> None:
    # \a is "a", a backslash before a line feed is the line feed, an escaped byte joins the
    # bytes around it (E2 82 AC: the euro sign), and an escaped backslash escapes nothing more.
    term = b'Derive([],[],[],"x","b",["\\a","\\\n","\xe2\\\x82\xac","\\\\n"],[])'
    scanned = scan(term)
    assert scanned is not None
    assert scanned[5] == ["a", "\n", "\u20ac", "\\n"]
    _read_alike(term)
