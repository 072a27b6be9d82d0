"""Store values: paths, derivations and archives. Pure, and imports nothing above it."""

from offload.store.drv import (
    Derivation,
    DerivationOutput,
    derivation_to_json,
    drv_bytes,
    parse_derivation,
    print_derivation,
    read_derivation,
)
from offload.store.nar import NarStats, copy_nar, dump_nar, nar_hash_nix32
from offload.store.path import (
    STORE_DIR,
    StorePath,
    is_store_path,
    nix32_decode,
    nix32_encode,
    split_name_version,
)

__all__ = [
    "STORE_DIR",
    "Derivation",
    "DerivationOutput",
    "NarStats",
    "StorePath",
    "copy_nar",
    "derivation_to_json",
    "drv_bytes",
    "dump_nar",
    "is_store_path",
    "nar_hash_nix32",
    "nix32_decode",
    "nix32_encode",
    "parse_derivation",
    "print_derivation",
    "read_derivation",
    "split_name_version",
]
