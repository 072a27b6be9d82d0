"""A derivation in the form BuildDerivation sends it (nix-protocols.md section 2.5).

The BasicDerivation wire form has no input derivations: the caller passes the input closure as
``input_srcs`` instead. Names, environment keys and paths are sorted by their bytes, as Nix
writes them, so requests match Nix's own bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

from offload.protocol.records import sorted_paths
from offload.protocol.wire import encode_int, encode_str, encode_strs
from offload.store.drv import Derivation

__all__ = ["encode_basic_derivation"]


def _drv_str(value: str) -> bytes:
    # Derivation strings may carry arbitrary bytes as surrogate escapes (offload.store.drv).
    return encode_str(value.encode("utf-8", "surrogateescape"))


def _byte_key(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def encode_basic_derivation(drv: Derivation, input_srcs: Iterable[str] | None = None) -> bytes:
    """The BasicDerivation wire form (section 2.5): no inputDrvs, ``input_srcs`` if given."""
    srcs = drv.input_srcs if input_srcs is None else input_srcs
    out = [encode_int(len(drv.outputs))]
    for name in sorted(drv.outputs, key=_byte_key):
        o = drv.outputs[name]
        out += [_drv_str(name), _drv_str(o.path), _drv_str(o.hash_algo), _drv_str(o.hash)]
    out += [encode_strs(sorted_paths(srcs)), _drv_str(drv.platform), _drv_str(drv.builder)]
    out.append(encode_int(len(drv.args)))
    out += [_drv_str(arg) for arg in drv.args]
    out.append(encode_int(len(drv.env)))
    for key in sorted(drv.env, key=_byte_key):
        out += [_drv_str(key), _drv_str(drv.env[key])]
    return b"".join(out)
