"""The doctor's ``slots`` rows: whether a builder's slots are counted on the builder (its slot
files under flock, ``offload.transport.wrapper``) or on this host only, and why; and the
builder's own ``max-jobs``.

A builder whose own ``max-jobs`` is 0 starts no build sent over ssh:// (its serve program builds
under its settings): the ``slots`` row fails there (``builder_jobs_check``), unless the builder
hands builds on to machines of its own ``builders`` (their files read there), which only warns.
Pure functions of what the session's start line and ``nix show-config`` said.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from offload.doctor.facts import NixConfig
from offload.doctor.model import Check, Verdict
from offload.transport.links.turns import FALLBACKS, RESTRICTED_FALLBACKS
from offload.transport.wrapper import SLOT_DIRS

__all__ = ["builder_jobs_check", "builders_files", "max_jobs_zero", "own_builders", "slots_check"]


# How to get a builder's slots counted on the builder, by why they are not.
_RESTRICTED_FIX = (
    "nothing to fix if this host is its only client; else let the key run more than its one "
    "program (`restrict` without `command=`, what `offload setup builder --unrestricted` writes;"
    " or no `ForceCommand` for the user in sshd_config, where that forces it)"
)
_SLOT_FIXES = {
    **dict.fromkeys(RESTRICTED_FALLBACKS.values(), _RESTRICTED_FIX),
    FALLBACKS["noflock"]: "install util-linux on the builder (flock(1))",
    FALLBACKS["nodir"]: "let the builder's user create ~/.cache/offload-slots "
    "(or /nix/var/nix/offload-slots)",
}


def slots_check(
    slots: int,
    fallback: str | None,
    *,
    full: Literal["busy", "yield"] | None = None,
    counted: str | None = None,
) -> Check:
    """Where a build session's slot was counted: on the builder (every client on every host
    counts the same ``slots``, among the accounts ``counted`` says: ``wrapper.parse_count``;
    ``full`` when none was had now: others hold them all, ``busy``, or a free one is left to
    another client waiting there, ``yield``), or, with why (``fallback``), on this host only.
    None at all (maxJobs 0): no build is ever sent there, by Nix or offload."""
    if slots == 0:
        return Check(
            "slots",
            Verdict.WARN,
            "maxJobs is 0: no build is ever sent to it",
            "give its machines line (or offload.toml's max-jobs) 1 or more",
        )
    if fallback is not None:
        return Check(
            "slots",
            Verdict.WARN,
            f"counted on this host only: {fallback}; clients on other hosts do not see them",
            _SLOT_FIXES.get(fallback),
        )
    now = _FULL_NOW[full] if full else ""
    if counted == "home":
        # Its user cannot write the Nix state: the count is in its home, apart from other
        # accounts' (a CI logging in as root, a person as themselves).
        detail = (
            f"{slots} counted on the builder, by every offload client logging in as this "
            f"user (in its ~/{SLOT_DIRS[1]}){now}; clients logging in as another user count "
            "theirs apart"
        )
        return Check("slots", Verdict.OK, detail, _PER_USER_FIX)
    detail = f"{slots} counted on the builder, by every offload client on every host"
    return Check("slots", Verdict.OK, detail + now)


_FULL_NOW = {
    "busy": "; all held by others now",
    "yield": "; the next free one goes to another client waiting there now",
}

_PER_USER_FIX = (
    "nothing to fix if every client logs in as this user (`offload setup builder` makes one "
    "for all); else give them all that one, or each builder's max-jobs is per account"
)


_JOBS_FIX = (
    "set max-jobs to 1 or more in the builder's nix.conf (its cores: `max-jobs = auto`; NixOS: "
    "nix.settings.max-jobs): builds sent over ssh:// run under the builder's own max-jobs"
)


def _entries(text: str) -> list[str]:
    """A ``builders`` value's (or machines file's) entries, as Nix splits them: at newlines and
    ``;``, less comments and blanks."""
    pieces = (piece.partition("#")[0].strip() for piece in re.split(r"[\n;]", text))
    return [piece for piece in pieces if piece]


def builders_files(config: NixConfig | None) -> list[str]:
    """The machines files (``@FILE``) the builder's own ``builders`` setting names."""
    setting = (config or {}).get("builders", "")
    return [entry[1:].strip() for entry in _entries(setting) if entry.startswith("@")]


def own_builders(config: NixConfig | None, files: Mapping[str, str]) -> int:
    """How many machines the builder's own ``builders`` setting lists: its entries, and the
    lines of the files it names (``files``: their text there; one it could not read lists
    none, as Nix skips a missing one)."""
    entries = _entries((config or {}).get("builders", ""))
    inline = [entry for entry in entries if not entry.startswith("@")]
    named = builders_files(config)
    return len(inline) + sum(len(_entries(files.get(path, "").replace(";", " "))) for path in named)


def max_jobs_zero(config: NixConfig | None) -> bool:
    return bool(config) and (config or {}).get("max-jobs", "").strip() == "0"


def builder_jobs_check(config: NixConfig | None, slots: Check, *, serve: bool, own: int) -> Check:
    """The ``slots`` row, unless the builder's own ``max-jobs`` (``config``) is 0: over ssh://
    (``serve``) its serve program then starts no build ("unable to start any build"), or only
    hands them on to the ``own`` machines its own ``builders`` lists. The daemon's protocol
    (ssh-ng://) sends the client's max-jobs with every session (offload's and Nix's hook's: 1),
    so it is not asked."""
    if not serve or not max_jobs_zero(config):
        return slots
    if own:
        return Check(
            "slots",
            Verdict.WARN,
            f"the builder's max-jobs is 0: it builds nothing itself, only hands builds on to the "
            f"{own} machine(s) its own builders setting lists; where none takes one, it fails",
            _JOBS_FIX,
        )
    return Check(
        "slots",
        Verdict.FAIL,
        "the builder's max-jobs is 0 and it has no builders of its own: every build sent there "
        'fails ("unable to start any build")',
        _JOBS_FIX,
    )
