"""A hook process's context made as the hook makes it, with nothing to ask Nix or a builder."""

from __future__ import annotations

import os
from pathlib import Path

from offload.hook.context import HookContext, load_context
from offload.hook.keep import Keep
from offload.hook.wire import HookIO
from offload.slots import SlotLocks

__all__ = ["hook_context"]

SYSTEM = "x86_64-linux"


def hook_context(tmp_path: Path, builders: str, said: list[bytes] | None = None) -> HookContext:
    """A hook's context for ``builders`` (no local builds), its state and slot locks in
    ``tmp_path``; what it says goes to ``said``."""
    out = said if said is not None else []
    context = load_context(
        {"max-jobs": "0", "system": SYSTEM, "builders": builders},
        state=tmp_path, verbosity=0, env={}, io=HookIO(out.append, out.append),
        parent=os.getpid(), keep=Keep(tmp_path),
    )  # fmt: skip
    context.slots = SlotLocks(tmp_path / "current-load")
    return context
