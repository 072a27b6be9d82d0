"""Pools for tests of selection and what a pool says of itself (config/pool.py): machines
parsed from a spec (source ``m``), an offload.toml (``o.toml``) over them, and a local machine."""

from __future__ import annotations

from offload.config.machines import Machine, parse_machines
from offload.config.pool import Pool, apply_toml
from offload.config.settings import LocalMachine, parse_offload_toml

__all__ = ["LOCAL", "SYSTEM", "machines", "pool"]

SYSTEM = "x86_64-linux"
LOCAL = LocalMachine(1.0, 2, (SYSTEM,), frozenset({"kvm"}))


def machines(text: str) -> list[Machine]:
    return parse_machines(text, source="m", system=SYSTEM)[0]


def pool(text: str, toml: str | None = None) -> Pool:
    found = machines(text)
    if toml is not None:
        found, _ = apply_toml(found, parse_offload_toml(toml, "o.toml"), system=SYSTEM)
    return Pool(LOCAL, tuple(found), (), LOCAL)
