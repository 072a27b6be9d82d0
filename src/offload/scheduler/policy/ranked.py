"""Running copies in one order, most urgent first, read from the top without popping.

A ``Ranked`` is a sorted list of keys ``(rank, copy number, job id)``, smallest first, with the
key of each copy it holds, so a copy whose slot is released leaves at once (``discard``). A
round reads the first few keys in place: with a heap it had to pop them and push them back,
and copies that had ended stayed in it until they surfaced. The list holds the running copies
only, so it stays as small as the pool's slots.
"""

from __future__ import annotations

import bisect

__all__ = ["Key", "Ranked"]

# (rank, copy number, job id): copy numbers are unique, so no two keys are equal.
Key = tuple[float, int, str]


class Ranked:
    __slots__ = ("_keys", "entries")

    def __init__(self) -> None:
        self.entries: list[Key] = []
        self._keys: dict[int, Key] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, copy: int) -> bool:
        return copy in self._keys

    def add(self, key: Key) -> None:
        bisect.insort(self.entries, key)
        self._keys[key[1]] = key

    def discard(self, copy: int) -> None:
        """Forget copy number ``copy``; nothing happens if it is not held."""
        key = self._keys.pop(copy, None)
        if key is not None:
            del self.entries[bisect.bisect_left(self.entries, key)]

    def remove_at(self, index: int) -> None:
        del self._keys[self.entries.pop(index)[1]]

    def rerank(self, copy: int, rank: float) -> None:
        """Copy number ``copy`` moves to ``rank``; nothing happens if it is not held."""
        key = self._keys.get(copy)
        if key is not None and key[0] != rank:
            self.discard(copy)
            self.add((rank, copy, key[2]))
