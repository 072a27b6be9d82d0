"""What a builder's Nix says to a user outside its ``trusted-users``, and how offload says it.

A Nix daemon builds input-addressed derivations and adds unsigned paths only for trusted users
(nix-protocols.md 5.1). The refusal reaches offload in the daemon's own words, over
``ssh-ng://`` as a daemon error and over ``ssh://`` on the stderr of ``nix-store --serve
--write`` (which, for a user who is not root, stores through that daemon). Either way it is a
fact about the builder's set-up, not a build failure, and one line says which fix it needs.
"""

from __future__ import annotations

from offload.errors import DaemonError, TransportError

__all__ = [
    "is_untrusted",
    "untrusted_daemon_error",
    "untrusted_hint",
    "untrusted_message",
    "untrusted_said",
]

# daemon.cc and local-store.cc's signature check: "lacks a valid signature" in 2.8, "lacks a
# signature by a trusted key" in later releases; the build refusal is worded alike in all.
_REFUSALS = (
    "not privileged to build input-addressed derivations",
    "lacks a signature by a trusted key",
    "lacks a valid signature",
)
# A daemon's own word, as a session opens, said in offload's (``untrusted_said``).
_SAID = "its Nix daemon says it does not trust the ssh user"


def is_untrusted(text: str) -> bool:
    """Is ``text`` (a remote error) a Nix daemon refusing a user it does not trust?"""
    return any(refusal in text for refusal in (*_REFUSALS, _SAID))


def untrusted_message(name: str, detail: str) -> str:
    return (
        f"builder '{name}' does not trust the ssh user: its Nix daemon refused "
        f"({detail.strip()}); only trusted-users may build derivations offload sends "
        "and add unsigned paths"
    )


def untrusted_hint(name: str) -> str:
    return (
        f"add the user offload logs in as to `trusted-users` in {name}'s nix.conf "
        "and restart its nix-daemon"
    )


def untrusted_said(name: str) -> TransportError:
    """A daemon that says, as a session opens, that it does not trust the user (Nix 2.15 and
    later): told before any build goes there, where Nix's own hook could not have taken one
    back (offload-hook's accept). A session that could not be had, as one whose program did
    not start (``TransportError``): ``offload build`` and offload-hook leave the builder out
    and back it off. One line that names no builder: who shows it names it."""
    error = TransportError(
        f"{_SAID}: it builds no input-addressed derivation (all that offload sends) and "
        "adds no unsigned path for it",
        hint=untrusted_hint(name),
    )
    error.peer = name
    return error


def untrusted_daemon_error(exc: DaemonError, name: str) -> DaemonError | None:
    """``exc`` as offload says it when the daemon refused an untrusted user, else None."""
    if not is_untrusted(exc.message):
        return None
    error = DaemonError(untrusted_message(name, exc.message), hint=untrusted_hint(name))
    error.peer, error.said = name, exc.message.removeprefix(f"{name}: ")
    return error
