"""Nix's ``post-build-hook`` for the builds a run has on builders.

Nix runs the program its ``post-build-hook`` setting names after each build it registers here,
its own and those its build hook brought home (``DerivationGoal::buildDone``), with
``DRV_PATH`` and ``OUT_PATHS`` (the outputs, blank-separated) added to its environment: that is
how people upload what they build to a cache, or sign it. A build on this machine runs it
already, as its ``nix-store --serve`` is this host's Nix. One on a builder runs the builder's
setting, never this host's: so a run whose local Nix names a hook has every build's outputs
brought home, as Nix's own hook does, and runs it for each once they are valid here
(``offload.scheduler.run.copy``'s ``after_home``).

Its output (stdout and stderr) goes to the build's log lines, as Nix shows it under the build.
One that fails fails the build, in Nix's words ("program '...' failed with exit code 1"),
its outputs valid here all the same, and stops the run, with ``-k`` too, as nix-build stops
at it (builds that ended meanwhile get no hook). Hooks run one at a time, as Nix runs them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence

from offload.config.pool import Pool
from offload.errors import HookFailed, NotStarted
from offload.process import spawn
from offload.protocol.stderr import pump_lines
from offload.scheduler.run.copy import AfterHome

__all__ = ["post_build_hook", "run_post_build_hook"]


def post_build_hook(pool: Pool, *, euid: int, daemon: bool) -> tuple[AfterHome | None, str | None]:
    """What runs the local Nix's ``post-build-hook`` after each build on a builder (None when
    it names none), and a warning when it is not run here: where a nix-daemon builds for this
    user (``daemon``: one listens here; ``euid`` not root), the daemon runs it, as root, for
    the builds it makes, and here it would run as this user, without root's keys or
    credentials, and fail builds that succeeded. A single-user Nix runs it as its user."""
    program = pool.nix_settings.get("post-build-hook")
    if not program:
        return None, None
    if euid != 0 and daemon:
        return None, (
            f"post-build-hook '{program}' is the nix-daemon's to run, as root: the builds on"
            " builders do not get it (run offload as root for them to)"
        )
    one_at_a_time = asyncio.Lock()
    failed: list[str] = []

    async def run(drv_path: str, outputs: Sequence[str], said: Callable[[str], None]) -> None:
        async with one_at_a_time:
            # Builds that ended while one failed, the run stopping: nix-build never got there.
            if failed:
                raise HookFailed(f"post-build-hook not run: it failed for '{failed[0]}'")
            try:
                await run_post_build_hook(program, drv_path, outputs, said, env=pool.local_env())
            except HookFailed:
                failed.append(drv_path)
                raise

    return run, None


async def run_post_build_hook(
    program: str,
    drv_path: str,
    outputs: Sequence[str],
    said: Callable[[str], None],
    *,
    env: Mapping[str, str] | None,
) -> None:
    """Run ``program`` for ``drv_path`` built with ``outputs``, its lines told to ``said``;
    ``HookFailed`` (this host's, not a builder's) when it fails or cannot be started.
    ``env``: the local store's (None: this process's)."""
    # The local store's environment (the run's --option in NIX_CONFIG), as Nix gives its own.
    hook_env = {
        **(os.environ if env is None else env),
        "DRV_PATH": drv_path,
        "OUT_PATHS": " ".join(sorted(outputs)),
    }
    try:
        async with spawn([program], env=hook_env, stdin=False) as proc:
            assert proc.stdout is not None
            assert proc.stderr is not None

            # A line past 64 KiB comes in pieces: readline raised ValueError past the
            # stream's limit, and the run ended with it.
            def heard(line: bytes) -> None:
                said(line.decode(errors="replace"))

            await asyncio.gather(pump_lines(proc.stdout, heard), pump_lines(proc.stderr, heard))
            code = await proc.wait()
    except NotStarted as exc:
        raise HookFailed(f"cannot run post-build-hook '{program}': {exc.message}") from exc
    if code != 0:
        raise HookFailed(f"program '{program}' failed with exit code {code}")
