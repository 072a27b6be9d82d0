"""A builder's Nix program that is not there: how it is said, and its fix, in one wording.

The program offload starts on a builder over ssh (``nix-store --serve --write``, ``nix-daemon
--stdio``, or the one ``remote-program=`` names) may be missing from the PATH that sshd gives a
non-interactive session (Nix set up for login shells only, or not installed). A session that
could not start it (``links.lending.not_started``), the line ``offload build`` says for that
builder (``build.faults.explain``) and doctor's ``nix`` row (``doctor.facts.nix_check``) all
say it with ``not_on_path`` and give ``install_nix`` as the fix: the words a user searches for
are the same wherever they met them. This host's own ``nix-store --serve`` (the local store's
session: ``offload-hook`` reads inputs and brings outputs home through it) missing from the
PATH offload was given is said as this host's (``here``), with ``fix_path_here``: no builder
is at fault. Pure.
"""

from __future__ import annotations

__all__ = ["NOT_ON_PATH", "NOT_ON_PATH_HERE", "fix_path_here", "install_nix", "not_on_path"]

NOT_ON_PATH = "is not on the builder's PATH"
NOT_ON_PATH_HERE = "is not on this host's PATH"


def not_on_path(program: str, said: str, *, here: bool = False) -> str:
    """``program`` is not there, with the last words the builder's (``here``: this host's)
    shell ``said``."""
    return f"{program} {NOT_ON_PATH_HERE if here else NOT_ON_PATH}: {said}"


def fix_path_here() -> str:
    """The fix for this host's Nix program not on the PATH offload was started with."""
    return (
        "offload starts this host's Nix programs from its PATH: put Nix's bin directory on it;"
        " offload-hook has the PATH of the Nix that starts it, a nix-daemon's for its hook"
    )


def install_nix(where: str = "the store URI") -> str:
    """The fix, naming ``where`` ``remote-program=`` goes (the machines file's line when it
    is known, else the store URI)."""
    return (
        "install Nix on the builder so that non-interactive ssh sessions find it on PATH,"
        f" or name the program with ?remote-program= in {where}"
    )
