"""A builder's Nix refusing a derivation for a system or feature it lacks: Nix's words ("a
'aarch64-linux' with features {} is required to build '...', but I am a 'x86_64-linux' with
features {...}", derivation-goal.cc) mean the builder's machines line claims what its Nix does
not have, which ``offload doctor`` checks. Read by ``offload build`` and offload-hook alike.
"""

from __future__ import annotations

__all__ = ["claimed_not_had"]

_WORDS = ("is required to build", "but I am a")


def claimed_not_had(error: str, machine: str) -> str | None:
    """The fix for ``error`` (a build's, on builder ``machine``) where it is that refusal;
    else None."""
    if not all(words in error for words in _WORDS):
        return None
    return (
        f"the machines line of '{machine}' claims a system or feature its Nix does not have:"
        f" `offload doctor {machine}` checks it"
    )
