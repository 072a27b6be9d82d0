"""`offload log DRV|PATH`: show the kept log of the newest build of a derivation.

``DRV`` is a .drv path (or its basename); any other ``PATH`` is taken as an output path (or a
link to one, like ``./result``) and its deriver asked of the local store with ``nix-store -q
--deriver``. A path is read as ``nix-store -l`` reads it: links outside the store followed, then
the store object it is in taken (``x.drv/`` is ``x.drv``). A build offload did not run is looked
up in Nix's own logs (``nix-store --read-log``). Of several attempts, the newest that ran to its
end is shown (a speculative copy that lost, or one stopped or lost with its machine, only when
no attempt ran to its end: ``offload.logs``, and then said so on stderr). ``--machine`` picks
the newest build on one machine, useful when speculative copies ran on two (Nix is not asked
then; a machine with no log of it is an error naming those that have one). On a terminal the log
keeps its colours, as ``nix log``'s pager shows them, and loses every other escape code and
control character (a build could set the clipboard or the window's title); elsewhere it is
stripped of them all. A write that fails (a full disk) is one error line. Where no log is kept
and the history's newest record of the derivation is of a build that ran nowhere (skipped, its
outputs substituted or fetched), the error's hint says so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterable
from typing import TextIO

from offload.cli.arguments import nonempty
from offload.cli.history_file import open_history
from offload.config.machines.model import shown
from offload.errors import OffloadError
from offload.logs import BuildLogs, LogFile
from offload.process import output_lines, run
from offload.store import STORE_DIR
from offload.ui.term import colours_only, sanitize_text

__all__ = ["find_deriver", "register", "show_log", "store_object"]

# Symbolic links followed to reach the store, at most: Linux's own bound (ELOOP).
_MAX_LINKS = 40


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "log",
        help="show the log of a build offload ran",
        description="Print the kept log of the newest build of a derivation.",
    )
    parser.add_argument("target", metavar="DRV|PATH", help="a .drv path or an output path")
    parser.add_argument(
        "--machine",
        type=nonempty("machine name"),
        metavar="M",
        help="the newest build on this machine",
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if not args.target:  # not the current directory
        raise OffloadError("an empty path", hint="give a .drv path or an output path")
    return show_log(args.target, machine=args.machine)


def show_log(
    target: str,
    *,
    machine: str | None = None,
    logs: BuildLogs | None = None,
    out: TextIO | None = None,
) -> int:
    out = sys.stdout if out is None else out
    # A .drv's basename is looked up as it is; outside the store, Nix says why (not in the
    # store, no such file).
    named = store_object(target) or target
    drv_path = named if named.endswith(".drv") else find_deriver(named)
    logs = logs or BuildLogs()
    try:
        lines: Iterable[str] = logs.lines(drv_path, machine)
        _say_if_stopped(logs, drv_path, machine)
    except OffloadError as exc:
        nix = None if machine else output_lines(["nix-store", "--read-log", drv_path])
        if nix is None:  # Nix keeps no log of it either
            said = None if machine else _not_built(drv_path)
            if said is not None:
                raise OffloadError(exc.message, hint=said) from None
            raise
        lines = nix
    shown_as = colours_only if _isatty(out) else sanitize_text
    try:
        for line in lines:  # a log may be hundreds of MiB: never held whole
            out.write(shown_as(line))
        out.flush()
    except BrokenPipeError:
        raise  # `| head`: the reader is gone, as for any command (cli's exit 141)
    except OSError as exc:
        why = exc.strerror or str(exc)
        hint = "free space where it goes, or send it elsewhere"
        raise OffloadError(f"cannot write the log to {_name(out)}: {why}", hint=hint) from exc
    return 0


def _say_if_stopped(logs: BuildLogs, drv_path: str, machine: str | None) -> None:
    """A note on stderr where the log shown is of an attempt that did not run to its end (no
    attempt did): it read as the build's whole log (a tester)."""
    with contextlib.suppress(OffloadError):
        shown_log = LogFile.parse(logs.kept(drv_path, machine))
        if shown_log is not None and shown_log.stopped:
            print(
                f"note: this attempt on {shown_log.machine} did not run to its end (stopped, or"
                " lost with its machine), and none did: its log stops where the attempt did",
                file=sys.stderr,
            )


def _not_built(drv_path: str) -> str | None:
    """Why the history says ``drv_path`` has no log: its newest record is of a build that did
    not run (skipped for a dependency that failed, its outputs substituted or fetched); None
    where it says nothing of that (or cannot be read: the error stays the logs')."""
    try:
        with open_history(daemon=False, command="log", note=False) as history:
            newest = history.builds(drv_path=drv_path, limit=1)
    except (OffloadError, OSError):
        return None
    if not newest or newest[0].status not in _NOT_RUN:
        return None
    build = newest[0]
    why = f": {shown(build.error, 300)}" if build.error else ""
    return f"it was not built: {_NOT_RUN[build.status]} (run {build.run_said}){why}"


# Statuses of builds that ran nowhere, as `offload log` says them.
_NOT_RUN = {
    "skipped": "skipped, as a dependency failed",
    "substituted": "its outputs were substituted from a cache",
    "fetched": "its outputs were fetched from a builder that had them",
}


def _name(out: TextIO) -> str:
    name = getattr(out, "name", None)
    return "standard output" if name in (None, "<stdout>", 1) else str(name)


def store_object(target: str) -> str | None:
    """The store object ``target`` names, as ``nix-store -l`` finds it: symlinks outside the
    store followed (``./result``), then a trailing slash or a path inside the object dropped
    (``x.drv/``, ``OUT/bin/hello``); None where that leads outside the store."""
    prefix = STORE_DIR + "/"
    path = os.path.abspath(target)  # noqa: PTH100 - a string, as Nix's absPath makes it
    for _ in range(_MAX_LINKS):
        if path.startswith(prefix):
            base = path[len(prefix) :].split("/", 1)[0]
            return prefix + base if base else None
        if not os.path.islink(path):  # noqa: PTH114 - strings throughout
            return None
        path = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))  # noqa: PTH115, PTH118, PTH120
    return None


def find_deriver(path: str) -> str:
    """The .drv that produced the output ``path``, as the local store records it."""
    # Absolute, as Nix takes a relative one: never a word nix-store could read as an option
    # (`offload log -- --` asked it about nothing, then blamed the path for no deriver).
    asked = os.path.abspath(path)  # noqa: PTH100 - a string, as Nix's absPath makes it
    result = run(["nix-store", "--query", "--deriver", asked], check=False)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        reason = lines[-1].removeprefix("error: ") if lines else f"exit code {result.returncode}"
        raise OffloadError(
            f"cannot find the derivation of {shown(path, 200)}: {shown(reason, 300)}",
            hint="give a .drv path, or an output path that is valid in the local store",
        )
    deriver = result.stdout.strip()
    if not deriver.endswith(".drv"):  # Nix prints "unknown-deriver"
        raise OffloadError(
            f"{shown(path, 200)} has no known deriver",
            hint="it was added to the store, not built; give the .drv path if you know it",
        )
    return deriver


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
