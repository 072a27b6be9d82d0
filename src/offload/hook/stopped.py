"""What a hook process (``offload.hook.client``) says and does when its coordinator dies under
it, imported only then: every import costs each derivation Nix sends away.

Once the coordinator accepted, Nix shows only ``@nix`` messages from the hook
(``wire.write_nix_json``, written out: this process imports no json). Otherwise a plain line,
which Nix shows when it next writes to the hook and finds it gone, as "build hook died
unexpectedly: <what the hook left>" (a JSON message there was shown raw). While Nix waits for a
reply, the hook answers ``# postpone`` first: a hook that ends then fails the whole nix-build
("unexpected EOF reading a line"). Nix asks again after a postpone, finds this hook gone
(EPIPE), shows the line that follows the postpone, builds the derivation itself and starts a
new hook for the next: one derivation built here. A decline would cost two (this one, and the
next, which finds the hook gone).
"""

from __future__ import annotations

import os
import sys

from offload.hook.client import ACCEPTED, ANSWERED

__all__ = ["TAKEN_OVER", "say_stopped"]

# The coordinator is told once it took over.
TAKEN_OVER = (
    "offload-hook: warning: the coordinator stopped (its log: hook-coordinator.log in the state"
    " directory); a new one decides in its place\n"
)
_STOPPED = (
    "offload-hook: error: the coordinator stopped before the hook ended"
    " (its log: hook-coordinator.log in the state directory)"
)
_COORDINATOR_STOPPED = {
    True: '@nix {"action":"msg","level":0,"msg":"' + _STOPPED + '"}\n',
    False: _STOPPED + "\n",
}
_POSTPONE = "# postpone\n"


def say_stopped(turn: bytes, *, try_pending: bool) -> None:
    """Say the coordinator died, after ``turn`` (none yet: Nix sends a try with the settings,
    so it waits for a reply; ``try_pending``: Nix sent one no reply answered); and answer for
    it when Nix waits for one."""
    if turn == ACCEPTED:
        sys.stderr.write(_COORDINATOR_STOPPED[True])
        return
    waits = turn != ANSWERED or try_pending or _request_unread()
    _refuse_requests()
    sys.stderr.write((_POSTPONE if waits else "") + _COORDINATOR_STOPPED[False])


def _refuse_requests() -> None:
    """Close the pipe Nix writes its tries to (this process holds its last read end), before
    anything is said: Nix, reading the postpone, may write its next try (another derivation's)
    at once, while this process still runs; written into an open pipe, Nix would wait for a
    reply and meet EOF ("unexpected EOF reading a line": the nix-build fails), where EPIPE is
    a hook gone, which it survives (it builds that derivation itself)."""
    try:
        null = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        os.close(0)
        return
    os.dup2(null, 0)  # rather than a bare close: fd 0 stays taken, as the interpreter expects
    os.close(null)


def _request_unread() -> bool:
    """Nix wrote a try the coordinator never read (its turn was not told): it waits."""
    import select

    try:
        return bool(select.select([0], [], [], 0)[0]) and os.read(0, 1) != b""
    except OSError:
        return False
