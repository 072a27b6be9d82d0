"""Nix's own programs for the hook, when the PATH Nix gave it has none.

The hook starts this host's ``nix-store`` (the local store's ``--serve`` session, ``--restore``
and ``--register-validity`` to bring outputs home: ``offload.hook.home``) from its PATH. A
nix-daemon that systemd starts outside NixOS has only the system's directories there (Nix's
installer sets none), and so has every hook it starts; Nix's own hook needs none, being Nix's
binary itself. So where no ``nix-store`` is on the PATH, the directory of the Nix that started
the hook (its parent's executable: ``nix-daemon``, ``nix-build``, ``nix``, each a link to
Nix's one binary beside ``nix-store``) is put at its end, for this process and every process
it starts (the coordinator's sessions take the hook's environment). The same Nix then does
both halves of the build. A PATH that is not set is exec's default (``/bin:/usr/bin``), looked
in and kept as such. Standard library only, as the hook's client is.
"""

from __future__ import annotations

import os

# os.path, not pathlib: the hook's client imports nothing it can do without (its start is a
# cost of every remote build).
# ruff: noqa: PTH113, PTH115, PTH117, PTH118, PTH120

__all__ = ["nix_beside_parent"]

_PROGRAM = "nix-store"


def nix_beside_parent() -> str | None:
    """Add the starting Nix's directory to PATH when PATH has no ``nix-store``; that
    directory, or None when PATH has one or none is found beside the parent."""
    # Unset, it is exec's default (/bin:/usr/bin), where every program was looked for: kept.
    path = os.environ.get("PATH", os.defpath)
    if any(_program(directory) for directory in path.split(os.pathsep) if directory):
        return None
    try:
        parent = os.readlink(f"/proc/{os.getppid()}/exe")
    except OSError:
        return None
    directory = os.path.dirname(parent)
    if not os.path.isabs(directory) or not _program(directory):
        return None
    os.environ["PATH"] = f"{path}{os.pathsep}{directory}" if path else directory
    return directory


def _program(directory: str) -> bool:
    candidate = os.path.join(directory, _PROGRAM)
    return os.path.isfile(candidate) and os.access(candidate, os.X_OK)
