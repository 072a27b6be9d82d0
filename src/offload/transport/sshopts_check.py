"""Whether ssh takes ``NIX_SSHOPTS`` at all: a fault of this host, not of any builder.

ssh reads its command line before it connects anywhere: an option it does not know (``-Z``),
a bad port (``-p notaport``), a config file that is not there (``-F /nonexistent``), an ``-o``
line it refuses: it exits 255 with its words, the same for every builder. A run that met that
as each builder failing to connect backed every builder off for later runs (and the hook's),
and said the machines line was to check; doctor said the host name did not resolve. So where
builders fail as a run starts, ``ssh -G`` is asked once, with the same options, of a name no
config knows: ssh's own refusal is then the reason, this host's, kept against no builder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from offload.errors import NotStarted, OffloadError
from offload.process import run_async
from offload.transport.ssh import split_sshopts

__all__ = ["SSHOPTS_FIX", "sshopts_refused"]

SSHOPTS_FIX = "fix or remove it in NIX_SSHOPTS (`ssh -G $NIX_SSHOPTS HOST` shows how ssh reads it)"
# A name no ssh config names: what ssh -G makes of it depends on the options alone.
_PROBE = "offload-sshopts-check.invalid"


async def sshopts_refused(env: Mapping[str, str], timeout: float = 10.0) -> str | None:
    """ssh's words when it refuses ``env``'s NIX_SSHOPTS before connecting anywhere (or why
    ssh could not be run here with them); None when it takes them, or there are none."""
    sshopts = env.get("NIX_SSHOPTS", "")
    if not sshopts.strip():
        return None
    # Not canonicalized: a config that canonicalizes with no local fallback fails ssh -G for
    # a name no DNS knows, which says nothing of the options (ssh takes the first value).
    argv = ["ssh", "-G", "-o", "CanonicalizeHostname=no", *split_sshopts(sshopts), "--", _PROBE]
    try:
        done = await asyncio.wait_for(run_async(argv, env=env, check=False), timeout)
    except NotStarted as exc:
        return f"ssh could not be run here: {exc.message}"
    except (TimeoutError, OffloadError):
        return None  # not told: the builders' own errors stand
    said = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    if done.returncode == 0 or any(_PROBE in line for line in said):
        return None  # taken, or refused for the probe's name: nothing of the options
    return f"ssh refuses NIX_SSHOPTS ({said[0] if said else f'exit {done.returncode}'})"
