"""What the local store's Nix prints while a run plans, passed on as nix-build shows it, its
fatal error once.

Asked to substitute, the local Nix tries its binary caches and says what goes wrong in its own
lines: retries, caches it leaves out, and, when it cannot go on (a cache it used in the last 7
days, so it skips that cache's ``nix-cache-info``, now fails a narinfo query), its ``error:``
and exit. That error ends the session, and the run fails with it (``RemoteError``, shown by
offload as ``error: local: ...``). Passed on as it came as well, it would be said twice.

So an ``error:`` line, and the lines Nix continues it on (indented, or empty: Nix strips a
blank line's indent, as in an HTTP error's "response body:" part), are held until the next
other line (then said: an error Nix went on after, such as a substitute that failed) or the
end of the block: said then, unless the block ends with the local session's own error, which
carries the same words (``protocol.stderr.ErrorTail`` made it from them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from offload.errors import RemoteError
from offload.protocol.stderr import strip_ansi
from offload.protocol.store import StoreClient, also_heard

__all__ = ["heard"]


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
        say(line)
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
