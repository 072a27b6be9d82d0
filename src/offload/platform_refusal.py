"""A builder's Nix refusing a derivation for a system or feature it lacks: its words mean the
builder's machines line claims what its Nix does not have, which ``offload doctor`` checks.
Read by ``offload build`` and offload-hook alike, in each Nix's words (derivation-goal.cc,
derivation-builder.cc, derivation-building-goal.cc):

- up to 2.29: "a 'aarch64-linux' with features {} is required to build '...', but I am a
  'x86_64-linux' with features {...}";
- 2.30-2.34: "Cannot build '...'. Reason: required system or feature not available.
  Required system: ...";
- 2.35: "Cannot build '...'. Reason: platform mismatch. Required system: ..." or "Reason:
  missing system features. Required features: ...".
"""

from __future__ import annotations

from offload.ansi import strip_ansi

__all__ = ["claimed_not_had"]

# Each a set of words that, all in a build's error, are that refusal.
_WORDINGS = (
    ("is required to build", "but I am a"),
    ("Cannot build '", "Required system: "),
    ("Cannot build '", "Required features: "),
    ("Reason: required system or feature not available",),
    ("Reason: platform mismatch",),
    ("Reason: missing system features",),
)


def claimed_not_had(error: str, machine: str) -> str | None:
    """The fix for ``error`` (a build's, on builder ``machine``) where it is that refusal;
    else None."""
    said = strip_ansi(error)
    if not any(all(words in said for words in wording) for wording in _WORDINGS):
        return None
    return (
        f"the machines line of '{machine}' claims a system or feature its Nix does not have:"
        f" `offload doctor {machine}` checks it"
    )
