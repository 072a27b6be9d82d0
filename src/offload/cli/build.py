"""`offload build`: a drop-in for nix-build that schedules the whole graph over the pool.

This module holds what the command does before it builds anything: the arguments, the
settings and machines, and the builders' ssh masters, started at once
(``offload.transport.links.early``) so that they connect while the rest of the command
(``offload.cli.build_exec``: the scheduler, history, renderers) is imported.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from offload.backoff import Health, connections, load_backoff
from offload.cli.build_args import add_build_arguments, eval_flags, nix_json, refusal
from offload.cli.interrupts import steady_runner
from offload.cli.machines import pool_from_args
from offload.config.left_out import with_left_out
from offload.errors import ConfigError, Unschedulable
from offload.marks import mark
from offload.nix import Evaluation, Installables, sources
from offload.paths import ensure_state_dir
from offload.transport.links import early
from offload.transport.persist import kept_dir

if TYPE_CHECKING:
    from offload.config.pool import Pool


def remembered_backoff(state: Path, on: Sequence[str], pool: Pool) -> dict[str, Health]:
    """Backoff from earlier runs, except for builders the user named (those are tried now)
    and those whose machines line was mended since (``offload.backoff``)."""
    named = {name for value in on for name in value.split(",")}
    backoff = load_backoff(state / "backoff.json", time.time(), connections(pool))
    return {name: health for name, health in backoff.items() if name not in named}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "build",
        help="build derivations like nix-build, over the whole pool",
        description="Build Nix derivations like nix-build, scheduling the whole graph over the "
        "local machine and the builders. Output paths go to stdout, everything else to stderr.",
        nix_values=True,  # as nix-build: --argstr flags -O2, -o -link
    )
    add_build_arguments(parser)
    parser.set_defaults(func=run)


def _said_once(said: set[str], *, nix_json: bool) -> Callable[[str], None]:
    """Prints an evaluator's line unless it was said already (unknown settings); with
    ``nix_json`` (--log-format internal-json), as the ``@nix`` line Nix would have written."""
    shown: Callable[[str], str] = str
    if nix_json:
        from offload.ui.nixjson import nix_msg  # only then: start-up pays for no other module

        shown = nix_msg

    def say(line: str) -> None:
        if line not in said:
            print(shown(line), file=sys.stderr)

    return say


def run(args: argparse.Namespace) -> int:
    refused = refusal(args)
    if refused is not None:
        raise refused
    what = _installables(args)
    sources(what)  # a missing FILE is reported before the pool is loaded
    pool = pool_from_args(args)
    said = {f"warning: {w}" for w in pool.nix_settings.warnings}
    say = _said_once(said, nix_json=nix_json(args))
    _warn_unused(args, say)
    # Nix evaluates from here on, while offload connects and imports the rest of itself.
    with Evaluation(what, env=pool.local_env(), say=say) as evaluation:
        try:
            return _run(args, pool, _marked(evaluation.roots), evaluation.give_up)
        except Unschedulable as exc:  # the fix may be a flag of this command line
            raise with_left_out(exc, pool) from None


def _warn_unused(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    """A setting given on the command line that offload build has no use for, said: Nix's
    build hook (nix-build with `--build-hook X` runs X; offload schedules every build itself,
    and X never runs). From nix.conf, where a hook such as offload-hook is set for every
    nix-build, or given empty (no hook), it is not worth a word. Said by ``say``, as the
    run's other warnings (Nix's message with ``--log-format internal-json``)."""
    if any(name == "build-hook" and value.strip() for name, value in args.option or ()):
        say(
            "warning: build-hook is not used: offload build schedules the builds itself (the"
            " hook is for nix-build and the daemon: `offload hook install --print`)"
        )


def _run(
    args: argparse.Namespace,
    pool: Pool,
    evaluate: Callable[[], list[tuple[str, str]]],
    give_up: Callable[[], None],
) -> int:
    with _state() as (state, kept):
        mark("settings")
        if args.report is not None:
            from offload.report import check_target, not_history  # not cheap: --report only

            check_target(args.report)  # before the run, not after it
            not_history(args.report, state / "history.sqlite")
        backoff = remembered_backoff(state, args.on, pool)
        if args.dry_run:
            from offload.cli.build_dry import show_dry_run

            return show_dry_run(
                evaluate(),
                pool,
                state,
                as_json=args.json,
                backoff=backoff,
                check=args.mode == "check",
            )
        usable = [
            m for m in pool.machines if m.enabled and m.max_jobs > 0 and m.name not in backoff
        ]
        # Over the masters an earlier run or offload-hook left, if still there; those started
        # now stay for the next (offload.transport.persist), unless the state is not kept:
        # their sockets would go with it.
        shared = kept_dir(state) if kept else None
        # A second Ctrl-C waits for the first one's clean-up (cli.interrupts).
        with steady_runner() as runner:
            try:
                # The builders connect while the modules the run builds with are imported.
                runner.run(early.start_masters(usable, shared=shared))
                from offload.cli.build_exec import build

                return build(
                    args,
                    pool,
                    evaluate,
                    state,
                    backoff=backoff,
                    run=runner.run,
                    shared=shared,
                    kept=kept,
                )
            except BaseException:
                # Stopped (Ctrl-C, an error) while Nix may still evaluate, in a thread of the
                # run that the runner's close waits for: for ever, for an evaluation that
                # never ends.
                give_up()
                raise
            finally:
                runner.run(early.close_unclaimed())


@contextlib.contextmanager
def _state() -> Iterator[tuple[Path, bool]]:
    """The run's state directory and whether it is kept: the user's, or where that cannot be
    made, a temporary one removed after the run, said once: what a run keeps there (history,
    logs, backoff) is estimates and copies, no reason not to build (README)."""
    try:
        state = ensure_state_dir()
    except ConfigError as exc:
        unusable = exc
    else:
        yield state, True
        return
    import tempfile  # only here: a run's start-up pays for no module it does not use

    try:
        temporary = tempfile.TemporaryDirectory(prefix="offload-state-")
    except OSError as exc:  # no temporary directory either: the run could not keep its logs
        why = exc.strerror or str(exc)
        msg = f"{unusable.message}; nor a temporary one in {tempfile.gettempdir()}: {why}"
        raise ConfigError(msg, hint=unusable.hint) from exc
    print(
        f"warning: {unusable.message}; this run's history, build logs and backoff are not"
        f" kept (hint: {unusable.hint})",
        file=sys.stderr,
    )
    with temporary as place:
        yield Path(place), False


def _marked(
    evaluate: Callable[[], list[tuple[str, str]]],
) -> Callable[[], list[tuple[str, str]]]:
    """``evaluate`` noting when it is done (it runs in a thread while sessions open)."""

    def evaluated() -> list[tuple[str, str]]:
        roots = evaluate()
        mark("evaluated")
        return roots

    return evaluated


def _installables(args: argparse.Namespace) -> Installables:
    return Installables(
        files=tuple(args.paths),
        attrs=tuple(args.attr),
        expr=args.expr,
        args=tuple(args.auto_args),
        flags=eval_flags(args),
    )
