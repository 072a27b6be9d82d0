"""The work history saw after each build, by name (``offload.history.tails``)."""

from __future__ import annotations

from offload.history.tails import name_of, tails

H = "0" * 32


def drv(name: str) -> str:
    return f"/nix/store/{H}-{name}.drv"


WORK = {"a": 1.0, "b": 2.0, "c": 5.0, "d": 1.0}


def test_a_tail_is_the_heaviest_chain_of_work_after_a_name() -> None:
    # a -> b -> d and a -> c -> d (arrows: "is an input of"); versions do not count.
    edges = [
        (drv("b-1.0"), drv("a-2.1")),
        (drv("c-3"), drv("a-2.1")),
        (drv("d"), drv("b-1.0")),
        (drv("d"), drv("c-3")),
    ]
    found = tails(edges, WORK.__getitem__)
    assert found == {"a": 5.0 + 1.0, "b": 1.0, "c": 1.0, "d": 0.0}
    assert name_of(drv("b-1.0")) == "b"
    assert name_of("not a store path") is None


def test_a_cycle_of_names_ends_and_counts_each_name_once_on_a_chain() -> None:
    # A bootstrap's stages share names: stdenv built on stdenv, by way of gcc.
    edges = [
        (drv("gcc-12"), drv("stdenv")),
        (drv("stdenv"), drv("gcc-12")),
        (drv("d"), drv("stdenv")),
    ]
    found = tails(edges, {"gcc": 3.0, "stdenv": 1.0, "d": 1.0}.__getitem__)
    assert found["stdenv"] == 3.0  # by gcc (its own stdenv not again)
    # Met inside the cycle, gcc's own tail leaves out the rest of it: short, never endless.
    assert 0.0 <= found["gcc"] <= 1.0 + 1.0


def test_a_long_chain_needs_no_deep_recursion() -> None:
    edges = [(drv(f"n{i + 1}"), drv(f"n{i}")) for i in range(5000)]
    assert tails(edges, lambda _name: 1.0)["n0"] == 5000.0
