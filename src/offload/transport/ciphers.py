"""Which cipher a builder's ssh master offers first: AES-GCM where both ends have AES in hardware.

OpenSSH offers chacha20-poly1305 first, because it is fast on any CPU. Where both ends have
AES instructions, AES-GCM moves bulk bytes faster. Measured here (loopback, 2 cores, 200 MiB
through ``ssh host 'cat >/dev/null'``): 0.47-0.53 s against 0.56-0.69 s for chacha20. A closure
copy took 0.83x the time (paired median of 8, ``docs/BENCHMARKS.md``). Where one end has no AES
unit (a Raspberry Pi 4), AES-GCM is several times slower than chacha20: ssh's order is kept.

The model, decided once per master started (``offload.transport.links.ssh_master``):

- the builder's CPU: told by its systems (``SshTarget.aes``: x86-64 and Apple's, whose CPUs
  Nix runs on have had AES since 2010; an ``aarch64-linux`` board may not);
- this host's CPU: ``/proc/cpuinfo``'s flags (``aes``), on macOS every Mac Nix supports;
- the user's choice: whatever ``Ciphers`` (or ``-c``) their ssh config, the system's (a
  crypto policy) or ``NIX_SSHOPTS`` gives for that host is kept. ``ssh -G`` tells: the list it
  resolves for the host is then not ssh's own default (``ssh -G -F /dev/null``).

The offer is ssh's default list with its AES-GCM ciphers moved to the front, so a server that
refuses them still agrees on what it would have without offload; nothing is offered that ssh
would not offer by itself.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from offload.errors import OffloadError
from offload.process import run_async

__all__ = [
    "AES_SYSTEMS",
    "builds_on_aes",
    "cpu_has_aes",
    "gcm_first",
    "offered_ciphers",
    "this_host_has_aes",
]

# Systems whose CPUs have AES instructions: x86-64 since Westmere and Bulldozer (2010), and
# every Mac on Apple silicon. Other systems' boards may lack them (the Pi 4's Cortex-A72).
AES_SYSTEMS = frozenset({"x86_64-linux", "x86_64-darwin", "aarch64-darwin"})
# Listed beside one of those by a machine that builds for it too (an x86-64 one for i686).
_ALSO_BUILT = frozenset({"i686-linux"})
_GCM = "-gcm@openssh.com"
# How long ``ssh -G`` may take (it connects nowhere, but a config's ``Match exec`` runs a
# command): past it, ssh's own order is kept.
RESOLVE_TIMEOUT = 5.0
_CPUINFO = Path("/proc/cpuinfo")


def builds_on_aes(systems: Iterable[str]) -> bool:
    """Whether a builder of ``systems`` has AES instructions: one of ``AES_SYSTEMS`` is among
    them, and nothing else but what such a machine builds too."""
    listed = set(systems)
    return bool(listed & AES_SYSTEMS) and listed <= AES_SYSTEMS | _ALSO_BUILT


def cpu_has_aes(cpuinfo: str) -> bool:
    """Whether ``/proc/cpuinfo``'s text lists AES: ``flags`` (x86) or ``Features`` (ARM)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"}:
            return "aes" in value.split()
    return False


@functools.cache
def this_host_has_aes() -> bool:
    """Whether this host's CPU has AES instructions (read once)."""
    if sys.platform == "darwin":
        return True
    try:
        return cpu_has_aes(_CPUINFO.read_text(errors="replace"))
    except OSError:
        return False


def gcm_first(ciphers: str) -> str | None:
    """``ciphers`` (ssh's comma-separated list) with its AES-GCM ones first, in their order;
    None if that changes nothing (none there, or first already)."""
    names = [name for name in ciphers.split(",") if name]
    gcm = [name for name in names if name.endswith(_GCM)]
    offered = gcm + [name for name in names if not name.endswith(_GCM)]
    return ",".join(offered) if gcm and offered != names else None


def _resolved(out: str) -> str | None:
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "ciphers":
            return value.strip()
    return None


async def _ciphers(argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The cipher list ``argv`` (an ``ssh -G``) resolves; None if ssh could not tell in time."""
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            done = await run_async(argv, env=env, check=False)
    except (OffloadError, TimeoutError):
        return None
    return _resolved(done.stdout) if done.returncode == 0 else None


async def offered_ciphers(ssh_argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The ``Ciphers`` value a master with ``ssh_argv`` (``ssh``, its options, ``--`` and the
    destination, as ``offload.transport.ssh.ssh_argv`` builds it for a builder with AES) is
    to be given, or None: keep what ssh resolves (the module docstring)."""
    if not this_host_has_aes():
        return None
    program, *words = ssh_argv
    users, default = await asyncio.gather(
        _ciphers([program, "-G", *words], env),
        _ciphers([program, "-G", "-F", "/dev/null", "--", "offload-default"], env),
    )
    if users is None or users != default:
        return None
    return gcm_first(default)
