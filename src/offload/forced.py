"""The one program each ssh scheme opens on a builder, as a key restricted to it names it.

An ``ssh://`` builder is spoken to through Nix's serve program, an ``ssh-ng://`` one through
its daemon (Nix's own build hook and ssh-ng store start the same). A careful builder restricts
the client's key to that program (``command=`` in authorized_keys, or sshd's
``ForceCommand``): the transport tells such a key by its answer, the doctor and ``offload
setup`` name the program to allow, the test fleet forces it. It sits at the bottom of the
layers, so that each of them reads it here.
"""

from __future__ import annotations

__all__ = ["FORCED"]

FORCED = {"ssh": "nix-store --serve --write", "ssh-ng": "nix-daemon --stdio"}
