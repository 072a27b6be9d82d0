"""What ``offload setup client`` learns about each builder: its host key, then its settings.

The host key comes from ``ssh-keyscan`` (ed25519 preferred, then ECDSA, then RSA). Nothing
vouches for it yet: it is trusted on first use, and its fingerprint is shown so that the user
can compare it with the builder's own. Everything after that goes over ssh with that key
pinned, through the doctor's probes (``offload.doctor.examine``), so a builder that cannot be
set up is refused with the doctor's words for why (port, login, key, Nix) and the settings
(systems, features, cores, max-jobs) come from the builder's own ``nix show-config``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from offload.config.machines import encode_host_key, machine_from_columns
from offload.doctor import DoctorOptions, Verdict, examine
from offload.doctor.model import PREREQUISITES
from offload.doctor.reach import parse_ssh_g
from offload.errors import ConfigError, OffloadError
from offload.numerals import is_decimal
from offload.process import run_async
from offload.setup.client import Builder, Overrides
from offload.setup.values import PublicKey, Target, parse_public_key
from offload.transport.dialect import mismatch_fix
from offload.transport.ssh import split_sshopts

__all__ = [
    "OTHER_PROGRAM_FIX",
    "Login",
    "Probed",
    "choose_host_key",
    "facts_to_builder",
    "probe_all",
]

# A builder whose key runs only the other scheme's program than the lines setup would write:
# the doctor's fix ("write ssh-ng:// in NAME") names a line the user has not got yet.
OTHER_PROGRAM_FIX = {
    "ssh": "give setup client --ssh-ng: the key runs only `nix-daemon --stdio` (what `offload "
    "setup builder --ssh-ng` authorizes), which ssh-ng:// machines lines open",
    "ssh-ng": "leave --ssh-ng out: the key runs only `nix-store --serve --write` (what `offload "
    "setup builder` authorizes), which ssh:// machines lines open",
}

_KEY_PREFERENCE = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)


@dataclass(frozen=True)
class Probed:
    """One target's outcome: the builder to print, or why there is none."""

    target: Target
    builder: Builder | None
    error: str | None = None
    hint: str | None = None


def choose_host_key(scan: str) -> PublicKey | None:
    """The preferred key among ``ssh-keyscan`` output lines (``host type base64``)."""
    found: dict[str, PublicKey] = {}
    for line in scan.splitlines():
        parts = line.split()
        if line.startswith("#") or len(parts) < 3:
            continue
        try:
            key = parse_public_key(f"{parts[1]} {parts[2]}", "ssh-keyscan")
        except ConfigError:
            continue
        found.setdefault(key.kind, key)
    return next((found[kind] for kind in _KEY_PREFERENCE if kind in found), None)


def _words(config: Mapping[str, str], name: str) -> list[str]:
    return config.get(name, "").split()


def facts_to_builder(
    target: Target,
    key: PublicKey,
    config: Mapping[str, str] | None,
    cores: int | None,
    overrides: Overrides,
) -> Builder:
    """The machines entry for a builder whose settings are ``config`` (``nix show-config``).

    Systems: ``system`` and ``extra-platforms``, what Nix on the builder accepts. Features: its
    ``system-features``. Jobs: its ``max-jobs`` when above 1 (``auto`` is shown as its cores),
    else its cores. Each can be overridden; without the settings they must be: a guess of one
    slot and no features would waste a big builder, silently.
    """
    if config is None:
        missing = [
            flag
            for flag, given in (
                ("--system", bool(overrides.systems)),
                ("--feature", overrides.features is not None),
                ("--jobs", overrides.jobs is not None),
            )
            if not given
        ]
        if missing:
            raise ConfigError(
                "cannot read the builder's systems, features and max-jobs",
                hint=f"give them with {', '.join(missing)} (--feature '' for none; a key "
                "restricted to one of Nix's programs runs nothing else), or set up with an "
                "unrestricted key",
            )
    config = config or {}
    systems = overrides.systems or tuple(
        dict.fromkeys([*_words(config, "system"), *_words(config, "extra-platforms")])
    )
    if not systems:
        raise ConfigError("the builder reports no system", hint="give --system")
    features = (
        overrides.features
        if overrides.features is not None
        else tuple(sorted(set(_words(config, "system-features"))))
    )
    max_jobs = overrides.jobs
    if max_jobs is None:
        setting = config.get("max-jobs", "")
        max_jobs = int(setting) if is_decimal(setting) and int(setting) > 1 else (cores or 1)
    return Builder(target, key, systems, features, max_jobs, overrides.speed)


async def _scan(target: Target, timeout: float) -> tuple[PublicKey | None, str]:
    argv = [
        "ssh-keyscan",
        "-T",
        str(max(1, round(timeout))),
        "-p",
        str(target.port),
        "-t",
        "ed25519,ecdsa,rsa",
        target.host,
    ]
    try:
        done = await asyncio.wait_for(run_async(argv, check=False), timeout + 5)
    except TimeoutError:
        return None, f"no answer from {target.host}:{target.port} within {timeout:g} s"
    key = choose_host_key(done.stdout)
    if key is None:
        tail = [line for line in done.stderr.splitlines() if not line.startswith("#")]
        why = tail[-1] if tail else f"no sshd answered (refused, or silent for {timeout:g} s)"
        return None, f"ssh-keyscan {target.host}:{target.port}: {why}"
    return key, ""


# What makes a builder unusable: no session (the prerequisites), a nix-daemon there that
# refuses every build the client sends (``trusted``), or a serve program that starts none
# (``slots``: the builder's own max-jobs 0, ``doctor.slot_facts.builder_jobs_check``).
_BLOCKING = (*PREREQUISITES, "trusted", "slots")


@dataclass(frozen=True)
class Login:
    """How every builder is logged into: user, key, and the machines lines' scheme."""

    user: str
    identity: str
    scheme: str = "ssh"


async def _alias_elsewhere(target: Target, options: DoctorOptions) -> str | None:
    """Where the ssh config already sends ``target.name`` when not to the target: a ``Host``
    block of it earlier in the file ours is appended to wins (ssh takes each option's first
    value), and every login to the alias would reach that host (doctor then saw a changed host
    key, and its fix pinned the other machine's). None if the alias is free or the target's.
    Free is what ssh makes of a name no block names (a ``Host *`` with ``HostName %h.lan``, a
    ``-p`` in NIX_SSHOPTS): an alias that goes where an unused one would is named by none."""
    unused = f"offload-unused-{secrets.token_hex(4)}"
    named, free = await asyncio.gather(_ssh_g(target.name, options), _ssh_g(unused, options))
    if named is None or free is None:
        return None
    (host, port), (free_host, free_port) = named, free
    if (host, port) == (free_host.replace(unused, target.name), free_port):
        return None
    if (host.casefold(), port) == (target.host.casefold(), target.port):
        return None
    return f"{host}:{port}"


async def _ssh_g(name: str, options: DoctorOptions) -> tuple[str, int] | None:
    """The host and port ssh would connect to for ``name`` (``ssh -G``), None if unknown."""
    argv = ["ssh", "-G", *split_sshopts(options.env.get("NIX_SSHOPTS", "")), "--", name]
    try:
        done = await asyncio.wait_for(run_async(argv, env=options.env, check=False), 10)
    except (TimeoutError, OffloadError):
        return None
    if done.returncode != 0:
        return None
    config = parse_ssh_g(done.stdout, name, None)
    return config.hostname, config.port


async def _probe(
    target: Target, login: Login, overrides: Overrides, options: DoctorOptions
) -> Probed:
    if (elsewhere := await _alias_elsewhere(target, options)) is not None:
        return Probed(
            target,
            None,
            f"your ssh config already sends '{target.name}' to {elsewhere}: a Host block for it"
            " appended after that one is never used (ssh takes the first)",
            f"name the builder otherwise (NAME={target.host}:{target.port}), or mend the Host"
            f" block that names {target.name}",
        )
    key, why = await _scan(target, options.timeout)
    if key is None:
        return Probed(target, None, why, "check the host and port, and that sshd runs there")
    host = f"[{target.host}]" if ":" in target.host else target.host
    columns = [
        f"{login.scheme}://{login.user}@{host}:{target.port}",
        None,
        login.identity,
        None,
        None,
        None,
        None,
        encode_host_key(key.bare),
    ]
    machine = machine_from_columns(columns, source=target.name, system="-")
    report, facts = await examine(machine, options)
    failed = next(
        (c for c in report.checks if c.name in _BLOCKING and c.verdict == Verdict.FAIL), None
    )
    if failed is not None:
        fix = failed.fix
        if fix == mismatch_fix(login.scheme, target.name, speaks_other=True)[1]:
            fix = OTHER_PROGRAM_FIX[login.scheme]
        return Probed(target, None, f"{failed.name}: {failed.detail}", _for_setup(fix, target))
    cores = facts.load.cores if facts.load is not None else None
    try:
        return Probed(target, facts_to_builder(target, key, facts.config, cores, overrides))
    except OffloadError as exc:
        return Probed(target, None, exc.message, exc.hint)


def _for_setup(fix: str | None, target: Target) -> str | None:
    """doctor's fix, which names the machines line's column 3 for the key: setup client has
    written no machines file yet, and takes the key as ``--identity``."""
    column = f"column 3 of {target.name}"
    if fix is None:
        return None
    return fix.replace(f"in {column}", "with --identity").replace(column, "--identity")


async def probe_all(
    targets: Sequence[Target], login: Login, overrides: Overrides, options: DoctorOptions
) -> list[Probed]:
    """Every target probed at once, in the order given."""
    return list(await asyncio.gather(*(_probe(t, login, overrides, options) for t in targets)))
