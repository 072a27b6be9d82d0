"""Nix's booleans (``BaseSetting<bool>::parse``): true, yes, 1 and false, no, 0."""

from __future__ import annotations

import pytest

from offload.booleans import nix_bool
from offload.transport.ssh import ssh_target
from tests.helpers.machines_text import one


@pytest.mark.parametrize("word", ["true", "yes", "1"])
def test_nix_s_true_words(word: str) -> None:
    assert nix_bool(word) is True
    assert nix_bool(word, default=False) is True


@pytest.mark.parametrize("word", ["false", "no", "0"])
def test_nix_s_false_words_even_where_true_is_the_default(word: str) -> None:
    assert nix_bool(word, default=True) is False


@pytest.mark.parametrize("word", [None, "", "maybe", "True", "on"])
def test_other_words_are_the_default(word: str | None) -> None:
    assert nix_bool(word) is False
    assert nix_bool(word, default=True) is True


@pytest.mark.parametrize(("query", "compressed"), [("1", True), ("yes", True), ("no", False)])
def test_a_builder_s_compress_parameter_is_read_as_nix_reads_it(
    query: str, compressed: bool
) -> None:
    # ?compress=1 and ?compress=yes: ssh got no -C, though Nix passes it.
    assert ssh_target(one(f"ssh://nx-a.invalid?compress={query}")).compress is compressed
