"""Derivations as hypothesis draws them: any field Nix can hold, printed as Nix prints it."""

from __future__ import annotations

from hypothesis import strategies as st

from offload.store.drv import Derivation, DerivationOutput

__all__ = ["derivations", "mutated", "mutations", "nix_strings"]

# Strings as Nix can hold them: any bytes, seen through surrogateescape.
nix_strings = st.binary(max_size=20).map(lambda b: b.decode("utf-8", "surrogateescape"))
# Fields Nix prints raw cannot hold '"' (it would end the string) or a backslash.
raw_strings = st.text(
    st.characters(blacklist_characters='"\\', blacklist_categories=["Cs"]), max_size=12
)
raw_paths = raw_strings.map(lambda s: "/" + s)
outputs = st.builds(
    DerivationOutput,
    path=st.one_of(st.just(""), raw_paths),
    hash_algo=st.sampled_from(["", "sha256", "r:sha256", "sha1"]),
    hash=st.one_of(st.just(""), st.just("impure"), raw_strings),
)
derivations = st.builds(
    Derivation.create,
    outputs=st.dictionaries(raw_strings, outputs, max_size=3),
    input_drvs=st.dictionaries(raw_paths, st.lists(raw_strings, max_size=3), max_size=3),
    input_srcs=st.lists(raw_paths, max_size=3),
    platform=raw_strings,
    builder=nix_strings,
    args=st.lists(nix_strings, max_size=4),
    env=st.dictionaries(nix_strings, nix_strings, max_size=5),
)

# Up to four (position, byte, delete) changes to a derivation's bytes (``mutated``).
mutations = st.lists(
    st.tuples(st.integers(min_value=0), st.integers(0, 255), st.booleans()), max_size=4
)


def mutated(data: bytes, changes: list[tuple[int, int, bool]]) -> bytes:
    """``data`` with each change made in turn: the byte at the position (modulo the length)
    deleted, or overwritten."""
    buf = bytearray(data)
    for position, value, delete in changes:
        if not buf:
            break
        index = position % len(buf)
        if delete:
            del buf[index]
        else:
            buf[index] = value
    return bytes(buf)
