"""The local machine's one name.

The machine offload runs on is a member of every pool like the builders are, and everything that
names machines names it ``LOCAL``: the pool's ``--on``/``--exclude`` token, the scheduler's slot
spec and cost hub, the holder of outputs brought home, the local store's serve sessions (so a
``ProtocolError.peer`` of ``LOCAL`` is the local store's fault), run events and history. No
builder may take the name (offload.toml and the test fleet refuse it). It sits at the bottom of
the layers so that every package can use it without importing upwards.
"""

from __future__ import annotations

__all__ = ["LOCAL"]

LOCAL = "local"
