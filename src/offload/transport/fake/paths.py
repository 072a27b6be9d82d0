"""The fake store's paths: a valid path is its references and its real NAR bytes.

Hash and size follow from the NAR, so what a client checks (narHash, narSize) always matches
what it is sent. Path sets go out sorted by base name, as Nix writes a StorePathSet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from offload.protocol.serve import PathInfo
from offload.protocol.wire import encode_str
from offload.store.nar import NAR_MAGIC, nar_hash_nix32
from offload.store.path import STORE_DIR, nix32_encode

__all__ = ["FakePath", "nar_of_text", "sorted_paths", "store_path"]


def store_path(name: str, *, store_dir: str = STORE_DIR) -> str:
    """A valid store path for ``name`` whose hash part is derived from the name."""
    return f"{store_dir}/{nix32_encode(hashlib.sha256(name.encode()).digest()[:20])}-{name}"


def nar_of_text(text: str | bytes, *, executable: bool = False) -> bytes:
    """The NAR of one regular file holding ``text`` (what ``nix-store --dump`` writes)."""
    data = text.encode() if isinstance(text, str) else text
    tokens = [NAR_MAGIC, b"(", b"type", b"regular"]
    tokens += [b"executable", b""] if executable else []
    tokens += [b"contents", data, b")"]
    return b"".join(encode_str(t) for t in tokens)


def sorted_paths(paths: Iterable[str]) -> list[str]:
    # Nix writes a StorePathSet sorted by base name (nix-protocols.md 1).
    return sorted(set(paths), key=lambda p: (p.rpartition("/")[2], p))


@dataclass(frozen=True)
class FakePath:
    """One valid path: its references and its NAR, from which hash and size follow."""

    path: str
    references: tuple[str, ...]
    nar: bytes = field(repr=False)
    deriver: str | None = None

    @classmethod
    def from_text(
        cls,
        path: str,
        text: str | bytes,
        references: Iterable[str] = (),
        deriver: str | None = None,
    ) -> FakePath:
        return cls(path, tuple(sorted(set(references))), nar_of_text(text), deriver)

    @cached_property
    def nar_hash(self) -> str:
        return nar_hash_nix32(hashlib.sha256(self.nar).hexdigest())

    @property
    def nar_size(self) -> int:
        return len(self.nar)

    def info(self) -> PathInfo:
        return PathInfo(
            path=self.path,
            deriver=self.deriver,
            references=tuple(sorted_paths(self.references)),
            nar_size=self.nar_size,
            nar_hash=self.nar_hash,
        )
