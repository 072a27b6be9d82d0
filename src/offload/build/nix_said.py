"""What the local store's Nix prints while a run plans, passed on as nix-build shows it, its
fatal error once.

Asked to substitute, the local Nix tries its binary caches and says what goes wrong in its own
lines: retries, caches it leaves out, and, when it cannot go on (a cache it used in the last 7
days, so it skips that cache's ``nix-cache-info``, now fails a narinfo query), its ``error:``
and exit. That error ends the session, and the run fails with it (``RemoteError``, shown by
offload as ``error: local: ...``). Passed on as it came as well, it would be said twice.

A substitution that failed is told by Nix as "warning: build of '/nix/store/...' failed" (its
worker's words for any goal, here the output's): said as what it is, a substitute that failed,
whose derivation the run builds instead (nix-build says nothing of the kind as it builds).

So an ``error:`` line, and the lines Nix continues it on (indented, or empty: Nix strips a
blank line's indent, as in an HTTP error's "response body:" part), are held until the next
other line (then said: an error Nix went on after, such as a substitute that failed) or the
end of the block: said then, unless the block ends with the local session's own error, which
carries the same words (``protocol.stderr.ErrorTail`` made it from them).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator

from offload.errors import RemoteError
from offload.protocol.stderr import strip_ansi
from offload.protocol.store import StoreClient, also_heard

__all__ = ["heard"]

# Nix's worker on a goal that failed, with the paths it named (``showPaths``): outputs, not
# ``.drv`` files, when the goal was a substitution.
_SUBSTITUTE_FAILED = re.compile(r"warning: build of ((?:'/[^']*'(?:, )?)+) failed")


@contextlib.contextmanager
def heard(
    local: StoreClient, say: Callable[[str], None], read: Callable[[str], None]
) -> Iterator[None]:
    """What ``local`` prints meanwhile goes to ``say`` as well (the session keeps its tail),
    but its "copying path ... from" lines: the run tells each derivation its caches gave
    (``report_substituted``). Each line said is ``read`` too (a cache Nix left out is a fault
    of the run's: ``caches``; Nix's fatal error is the run's, and no cache left out). For the
    whole planning, not the substituting query alone: a line printed just before Nix's answer
    may be read just after it."""
    held: list[str] = []

    def flush() -> None:
        for line in held:
            say(line)
            read(line)
        held.clear()

    def hear(line: str) -> None:
        if line.startswith("copying path "):
            return
        error = strip_ansi(line).startswith("error:")
        if error or (held and _continues(line)):
            if error:
                flush()
            held.append(line)
            return
        flush()
        say(_substitute_said(line))
        read(line)

    with also_heard(local, hear):
        try:
            yield
        except RemoteError as exc:
            if exc.peer != local.name or not _carries(exc, held):
                flush()
            held.clear()
            raise
        finally:
            flush()


def _substitute_said(line: str) -> str:
    """``line``, or for Nix's "build of 'OUT' failed" of a substitution (outputs, no ``.drv``),
    what it means in a run: the substitute failed, and the derivation is built."""
    failed = _SUBSTITUTE_FAILED.fullmatch(strip_ansi(line))
    if failed is None or ".drv'" in failed[1]:
        return line
    return f"warning: substituting {failed[1]} from a binary cache failed: built instead"


def _continues(line: str) -> bool:
    """Whether ``line`` goes on an error block: indented, or blank (Nix's ``indent`` strips
    the indent off a blank line of a message, then ends the line)."""
    return not line.strip() or line[:1].isspace()


def _carries(error: RemoteError, held: list[str]) -> bool:
    """Whether ``error`` says what the ``held`` block said (``ErrorTail`` joins its lines);
    compared word by word, as a blank line of the block joins as two spaces."""
    said = " ".join(" ".join(strip_ansi(line) for line in held).split()).removeprefix("error:")
    said = said.strip()
    return bool(said) and said in " ".join((error.said or error.message).split())
