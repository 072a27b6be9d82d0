"""Which cipher a builder's ssh master offers first: AES-GCM where both ends have AES in hardware.

OpenSSH offers chacha20-poly1305 first, because it is fast on any CPU. Where both ends have
AES instructions, AES-GCM moves bulk bytes faster. Measured here (loopback, 2 cores, 200 MiB
through ``ssh host 'cat >/dev/null'``): 0.47-0.53 s against 0.56-0.69 s for chacha20. A closure
copy took 0.855x the time (paired median of 8, ``docs/BENCHMARKS.md``, session 31). Where one
end has no AES unit (a Raspberry Pi 4), AES-GCM is several times slower than chacha20: ssh's
order is kept.

The model, decided once per master started (``offload.transport.links.ssh_master``):

- the builder's CPU: told by its systems (``SshTarget.aes``: x86-64 and Apple's, whose CPUs
  Nix runs on have had AES since 2010; an ``aarch64-linux`` board may not);
- this host's CPU: ``/proc/cpuinfo``'s flags (``aes``), on macOS every Mac Nix supports;
- the user's choice: whatever ``Ciphers`` (or ``-c``) their ssh config, the system's (a
  crypto policy) or ``NIX_SSHOPTS`` gives for that host is kept. ``ssh -G`` with the master's
  own words tells: the list it resolves is then not ssh's own default (``ssh -G -F
  /dev/null``, asked once per process). A config's ``Match exec`` command runs once more for
  it, as ssh runs it for every connection; a ``Ciphers`` that is exactly ssh's default list
  looks like no choice. A builder whose x86-64 CPU is a virtual one without AES (a VM's
  ``kvm64`` model) is better off with ``Ciphers`` set for it in the ssh config: ``offload
  doctor`` reads its ``/proc/cpuinfo`` and says so (``doctor.facts.cipher_check``).

The offer is ssh's default list with its AES-GCM ciphers moved to the front, so a server that
refuses them still agrees on what it would have without offload; nothing is offered that ssh
would not offer by itself.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
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
# ssh's default list per (program, PATH): ``_default``.
_DEFAULTS: dict[tuple[str, str | None], str | None] = {}
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
        with _CPUINFO.open(errors="replace") as lines:
            # The first processor's lines say it: a big host's whole file is long.
            head = itertools.takewhile(lambda line: line.strip(), lines)
            return cpu_has_aes("".join(head))
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


async def _default(program: str, env: Mapping[str, str]) -> str | None:
    """ssh's own list, with no config at all: the same for every host (asked once)."""
    key = (program, env.get("PATH"))
    if key not in _DEFAULTS:
        argv = [program, "-G", "-F", "/dev/null", "--", "offload-default"]
        _DEFAULTS[key] = await _ciphers(argv, env)
    return _DEFAULTS[key]


async def offered_ciphers(master_argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The ``Ciphers`` value a master started with ``master_argv`` (``ssh``, its options, the
    destination and its command, for a builder with AES, without a ``Ciphers`` of offload's)
    is to be given, or None: keep what ssh resolves (the module docstring)."""
    if not this_host_has_aes():
        return None
    program, *words = master_argv
    # The master's own words, command included: a config may choose by it (``Match``).
    users, default = await asyncio.gather(
        _ciphers([program, "-G", *words], env), _default(program, env)
    )
    if users is None or users != default:
        return None
    return gcm_first(default)
