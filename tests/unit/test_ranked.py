"""Ranked running copies: read in key order from the top, released copies leave at once."""

from __future__ import annotations

import random

from offload.scheduler.policy.ranked import Key, Ranked


def test_entries_stay_in_key_order_as_copies_come_and_go() -> None:
    rng = random.Random(7)  # noqa: S311 -- reproducible test input
    ranked = Ranked()
    held: dict[int, Key] = {}
    for copy in range(1, 400):
        key = (rng.choice((1.0, 2.0, 3.5)), copy, f"j{copy}")
        ranked.add(key)
        held[copy] = key
        if rng.random() < 0.4:
            gone = rng.choice(sorted(held))
            ranked.discard(gone)
            del held[gone]
    assert ranked.entries == sorted(held.values())
    assert len(ranked) == len(held)


def test_discarding_an_absent_copy_changes_nothing() -> None:
    ranked = Ranked()
    ranked.add((2.0, 1, "a"))
    ranked.add((1.0, 2, "b"))
    ranked.discard(3)
    ranked.discard(1)
    ranked.discard(1)
    assert ranked.entries == [(1.0, 2, "b")]


def test_remove_at_forgets_the_copy() -> None:
    ranked = Ranked()
    ranked.add((1.0, 1, "a"))
    ranked.add((2.0, 2, "b"))
    ranked.remove_at(0)
    ranked.discard(1)  # already gone: no error, nothing else removed
    assert ranked.entries == [(2.0, 2, "b")]
    ranked.add((0.5, 1, "a"))
    assert ranked.entries == [(0.5, 1, "a"), (2.0, 2, "b")]
