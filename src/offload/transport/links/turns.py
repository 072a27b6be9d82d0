"""How a link's build sessions share a builder's slots with other clients (``pool.Link``,
``offload.transport.wrapper`` the wrapper on the builder): how long a session keeps its slot
after a build and for how long in all (its turn), how often a build waiting for one asks again,
who this process is to the other clients there, and the words for why a builder's slots are
counted on this host only.

The model: a link given ``builder_slots`` and a ``slot_start`` opens a session per build whose
wrapper holds one of the builder's slot files under flock (``offload.transport.wrapper``), so
every client on every host (``offload build`` and ``offload-hook`` alike) sees the same count;
after its build it keeps the slot ``LINGER`` s for this process's next build there, then is
closed (never left idle holding it longer), and a builder whose slots are all held answers
``busy`` and is asked again every ``BUSY_POLL`` s. Turns keep one client from starving others
there: a session is reused only within its ``TURN`` (from its start), then closed after its
build, and a client waiting for a slot says so on the builder (``CLIENT_ID``'s marker), where
another client's new session yields the freed slot to it. Where no lock can be taken (a
restricted key, no flock(1), no slot directory) ``slot_fallback`` says why and builds use
pooled sessions, counted on this host only; ``slots_on_builder`` says which of the two the
first build session found (None before).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from offload.numerals import is_decimal

if TYPE_CHECKING:
    from offload.transport.links.base import SessionPipes

__all__ = [
    "BUSY_POLL",
    "CLIENT_ID",
    "DAEMON_RESTRICTED_FALLBACK",
    "FALLBACKS",
    "LINGER",
    "RESTRICTED_FALLBACK",
    "RESTRICTED_FALLBACKS",
    "TURN",
    "holds_slot",
    "slot_fallback",
]

# How often a build waiting for a slot another client holds on the builder asks again.
BUSY_POLL = 0.25
# How long a build session keeps its builder-side slot after its build, for this run's next
# build there: a session start per build costs tens of milliseconds (a chain of small builds
# paid it on every link), while a slot held this long by an idle client costs others little.
LINGER = 1.0
# A build session's turn: one that has held its builder-side slot longer than this (from its
# start) is closed after its build instead of lingering, so that another client waiting there
# gets the slot (the wrapper yields it, ``offload.transport.wrapper``) within about TURN plus one
# build; without contention it costs a session start (tens of ms) per slot per TURN.
TURN = 5.0
# Who this process (a run, a hook coordinator) is to the builders' slot wrappers: random.
CLIENT_ID = secrets.token_hex(8)
# Why a builder's slots are counted on this host only, by what its start line said; a
# restricted key, by the program it runs (the session's dialect: ssh:// or ssh-ng://).
RESTRICTED_FALLBACK = "its key runs only the serve program: no slot lock can be taken there"
DAEMON_RESTRICTED_FALLBACK = (
    "its key runs only `nix-daemon --stdio`: no slot lock can be taken there"
)
RESTRICTED_FALLBACKS = {"serve": RESTRICTED_FALLBACK, "daemon": DAEMON_RESTRICTED_FALLBACK}
FALLBACKS = {
    "noflock": "it has no flock(1) (util-linux): no slot lock can be taken there",
    "nodir": "no directory for slot locks could be made there (~/.cache/offload-slots)",
}


def holds_slot(pipes: SessionPipes) -> bool:
    """The session's start line says it holds one of the builder's slots."""
    return pipes.slot is not None and is_decimal(pipes.slot)


def slot_fallback(pipes: SessionPipes) -> str | None:
    """Why a build session's start line says the builder's slots cannot be counted there, if
    it says so."""
    if pipes.restricted:
        return RESTRICTED_FALLBACKS[pipes.dialect.name]
    return FALLBACKS.get(pipes.slot or "")
