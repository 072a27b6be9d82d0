"""Store paths and Nix's base-32 encoding.

A store path is ``<store dir>/<hash part>-<name>``: the hash part is 32 characters of Nix's
base-32 alphabet (160 bits), the name is what a person reads. ``StorePath`` holds the full path
string and is only ever built by ``StorePath.parse``, so every instance is valid: sub-paths,
``..`` and other store directories are rejected at the boundary, not discovered later.

Nix base-32 ("nix32") is not RFC 4648: the alphabet omits e, o, t and u, and the digits are
written from the most significant 5-bit group of the little-endian number the bytes form
(nix-protocols.md section 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from offload.errors import StoreError
from offload.typing_compat import override

__all__ = [
    "NIX32_ALPHABET",
    "STORE_DIR",
    "StorePath",
    "is_store_path",
    "nix32_decode",
    "nix32_encode",
    "split_name_version",
]

STORE_DIR = "/nix/store"
NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
HASH_PART_LENGTH = 32
MAX_NAME_LENGTH = 211

_NIX32_INDEX = {c: i for i, c in enumerate(NIX32_ALPHABET)}
_HASH_PART = re.compile(f"[{NIX32_ALPHABET}]{{{HASH_PART_LENGTH}}}")
_NAME_CHARS = re.compile(r"[A-Za-z0-9+\-._?=]+")
# The dash before a version: followed by anything but a letter (Nix uses C isalpha() in the C
# locale: ASCII letters only). Read for every derivation of a graph and every build log.
_VERSION_DASH = re.compile(r"-(?=[^A-Za-z])")


def nix32_encode(data: bytes) -> str:
    if not data:
        return ""
    length = (len(data) * 8 - 1) // 5 + 1
    value = int.from_bytes(data, "little")
    return "".join(NIX32_ALPHABET[(value >> (5 * n)) & 0x1F] for n in range(length - 1, -1, -1))


def nix32_decode(s: str) -> bytes:
    size = len(s) * 5 // 8
    # Only lengths that nix32_encode can produce are valid; Nix derives the length from the hash
    # type, we derive the hash size from the length and insist that the two agree.
    if s and (size == 0 or (size * 8 - 1) // 5 + 1 != len(s)):
        raise StoreError(f"invalid nix32 string {s!r}: length {len(s)} encodes no whole bytes")
    value = 0
    for c in s:
        digit = _NIX32_INDEX.get(c)
        if digit is None:
            raise StoreError(f"invalid nix32 string {s!r}: {c!r} is not in the nix32 alphabet")
        value = (value << 5) | digit
    if value >> (8 * size):
        raise StoreError(f"invalid nix32 string {s!r}: value does not fit in {size} bytes")
    return value.to_bytes(size, "little")


def _name_problem(name: str) -> str | None:
    if not name:
        return "the name is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"the name is {len(name)} characters long, more than {MAX_NAME_LENGTH}"
    # Nix's checkName: "." and "..", and names read as them with a version ("..-1"). Any other
    # name may start with '.' (`src = ./.` in ~/.dotfiles is "<hash>-.dotfiles"), as in every
    # Nix but 2.19.0-2.20.1, which refused them all and were reverted.
    if name in {".", ".."} or name.startswith((".-", "..-")):
        return f"the name {name[:20]!r} is '.' or '..', which Nix 2.20.2 and later refuse"
    if "/" in name:
        return "it has a sub-path after the store object"
    if not _NAME_CHARS.fullmatch(name):
        bad = next(c for c in name if not _NAME_CHARS.fullmatch(c))
        return f"the name contains the character {bad!r}, allowed are A-Z a-z 0-9 and +-._?="
    return None


def _path_problem(s: str, store_dir: str) -> str | None:
    prefix = store_dir.rstrip("/") + "/"
    if not s.startswith(prefix):
        return f"it is not in the store directory {store_dir}"
    base = s[len(prefix) :]
    hash_part, dash, name = base.partition("-")
    if not _HASH_PART.fullmatch(hash_part):
        return f"the hash part {hash_part!r} is not {HASH_PART_LENGTH} nix32 characters"
    if not dash:
        return "there is no '-<name>' after the hash part"
    return _name_problem(name)


@dataclass(frozen=True, order=True)
class StorePath:
    """A full, valid store path such as ``/nix/store/<hash>-hello-2.12.1``."""

    path: str

    @classmethod
    def parse(cls, s: str, store_dir: str = STORE_DIR) -> StorePath:
        problem = _path_problem(s, store_dir)
        if problem is not None:
            raise StoreError(f"invalid store path {s!r}: {problem}")
        return cls(s)

    @property
    def base_name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def hash_part(self) -> str:
        return self.base_name[:HASH_PART_LENGTH]

    @property
    def name(self) -> str:
        return self.base_name[HASH_PART_LENGTH + 1 :]

    @property
    def is_derivation(self) -> bool:
        return self.name.endswith(".drv")

    @property
    def derivation_name(self) -> str:
        """The name a derivation gives itself (``hello-2.12``): a .drv's name without ``.drv``."""
        return self.name.removesuffix(".drv")

    @override
    def __str__(self) -> str:
        return self.path


def is_store_path(s: str, store_dir: str = STORE_DIR) -> bool:
    return _path_problem(s, store_dir) is None


def split_name_version(name: str) -> tuple[str, str]:
    """Split like Nix's ``DrvName``: the version starts after the first ``-`` not followed by a
    letter, so ``gcc-wrapper-12.3.0`` gives ``("gcc-wrapper", "12.3.0")``."""
    found = _VERSION_DASH.search(name)
    return (name, "") if found is None else (name[: found.start()], name[found.end() :])
