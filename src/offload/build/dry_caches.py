"""A dry run's binary caches: asked as nix-build --dry-run asks them, faults told as a run
tells them.

A run asks the local store to substitute what its caches have, which downloads it: a dry run
must not. nix-build --dry-run asks its caches only which outputs they have (``queryMissing``:
narinfos, no NARs), top-down from the roots; ``nix-store --realise --dry-run`` on the roots to
build asks the same of the same caches (the run's --options in its environment). What it says
besides its lists of paths (a cache it retries, or cannot reach) goes to stderr as nix-build
--dry-run shows it, and each cache it leaves out is told as a run tells it (``CacheFaults``).
A failure that stops Nix (a cache it used in the last 7 days, now down) stops the dry run too,
with Nix's words once, as it stops nix-build's. Its lists are read (``CachesSaid``): what it
would fetch is shown as Nix shows it, and only what it would build is planned.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from offload.ansi import strip_ansi
from offload.build.caches import CacheFaults
from offload.config.pool import Pool
from offload.errors import NixError
from offload.names import LOCAL
from offload.process import spawn
from offload.ui.events import Event, MachineEvent

__all__ = ["CachesSaid", "caches_asked", "listed_paths"]

# Nix's lists (printMissing): their headings and their store paths, one a line, indented.
_HEADING = re.compile(
    r"(?:these \d+ |this )(?:derivations?|paths?) will be (built|fetched)\b.*"
    r"|(don't know how to build) these paths.*"
)
_LISTED = re.compile(r"  (/\S+)")


@dataclass
class CachesSaid:
    """What the local Nix said, asked what the caches have: the caches it left out, the
    derivations it would build (None: the caches were not asked, or it listed nothing) and its
    list of what it would fetch, as it printed it (its heading, then a path a line)."""

    left_out: list[MachineEvent] = field(default_factory=list)
    built: set[str] | None = None
    fetched: list[str] = field(default_factory=list)
    listed: bool = False  # Nix printed a list (what it asked of its caches is known)

    def heard(self, plain: str, line: str, listing: str | None) -> str | None:
        """Take ``plain`` (``line`` without colours) if it is part of Nix's lists; returns the
        list it is in now (``listing``: the one before it), None when it is in none."""
        if (heading := _HEADING.fullmatch(plain)) is not None:
            listing = heading.group(1) or heading.group(2)
            self.listed = True
        elif (path := _LISTED.fullmatch(plain)) is None or listing is None:
            return None
        elif listing == "built":
            assert self.built is not None
            self.built.add(path.group(1))
        if listing == "fetched":
            self.fetched.append(line)
        return listing


def listed_paths(lines: Sequence[str]) -> list[str]:
    """The store paths of one of Nix's lists as it printed it (``CachesSaid.fetched``)."""
    return [found.group(1) for line in lines if (found := _LISTED.fullmatch(strip_ansi(line)))]


async def caches_asked(
    roots: Sequence[tuple[str, str]], pool: Pool, say: Callable[[str], None]
) -> CachesSaid:
    """What the local Nix said, asked which of ``roots`` (derivation, output) its caches have;
    what it said meanwhile, but its lists, goes to ``say``. ``NixError`` if it failed."""
    if not pool.local_substitutes or not roots:
        return CachesSaid()
    said = CachesSaid(built=set())
    told: list[Event] = []
    faults = CacheFaults(told.append, {LOCAL: pool.nix_settings.words("substituters")})
    # print-missing: its lists are what is read here, whatever nix.conf says of them.
    argv = ["nix-store", "--realise", "--dry-run", "--option", "print-missing", "true"]
    argv += [f"{drv}!{out}" for drv, out in roots]
    error: list[str] = []  # Nix's last error block: said once, as the dry run's error
    listing: str | None = None
    async with spawn(argv, env=pool.local_env(), stdin=False) as proc:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\r\n")
            plain = strip_ansi(line)
            # An error block goes on on indented lines, and blank ones (Nix strips their indent).
            if plain.startswith("error:") or (error and (not line.strip() or line[:1].isspace())):
                error = [line] if plain.startswith("error:") else [*error, line]
                continue
            for held in error:  # an error Nix went on after (a substitute it could not query)
                say(held)
                faults.heard(LOCAL, held)
            error = []
            listing = said.heard(plain, line, listing)
            if listing is None:
                say(line)
            faults.heard(LOCAL, line)
        status = await proc.wait()
    if status != 0:
        text = "\n".join(error) or f"error: nix-store --realise --dry-run {_ended(status)}"
        raise NixError(strip_ansi(text.splitlines()[0]).removeprefix("error: "), text=text)
    for held in error:
        say(held)
        faults.heard(LOCAL, held)
    faults.end()  # a cache's error held for a body that never came: Nix said nothing after it
    said.left_out = [e for e in told if isinstance(e, MachineEvent)]
    if not said.listed:  # roots to build, and no list of Nix's: nothing known of its caches
        said.built = None
    return said


def _ended(status: int) -> str:
    """How a process that failed ended: its exit code, or the signal that killed it (asyncio
    gives it negated: Nix 2.8 aborts on a cache it disabled, with --fallback)."""
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
        return f"was killed by signal {-status}"
    return f"exited with {status}"
