"""The run's machines spec read through, with the warnings the local Nix version calls for.

offload reads machines as the newest Nix does (``config.machines``); a line an older Nix reads
differently or rejects is a ``NixCompat``. Only when there is one is the local Nix asked its
version (``nix --version``, one short process), and only those that apply to it become warnings.
``NIX_REMOTE_SYSTEMS`` (colon-separated machines files, the default of ``builders``) is read as
Nix >= 2.24 reads it: every file; older Nix joins the names with spaces into one path that does
not exist, and so reads none of several.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from offload.config.machines import Machine, NixCompat, read_machines, read_text_file
from offload.errors import ConfigError, TransportError

__all__ = [
    "MACHINES_DEFAULT_ORIGIN",
    "REMOTE_SYSTEMS_ORIGIN",
    "local_nix_version",
    "read_spec",
    "remote_systems_spec",
]

MACHINES_DEFAULT_ORIGIN = "Nix's default builders"
REMOTE_SYSTEMS_ORIGIN = "NIX_REMOTE_SYSTEMS"
_VERSION_RE = re.compile(r"\(Nix\) ([0-9]+(?:\.[0-9]+)*)")


@cache
def local_nix_version() -> tuple[int, ...] | None:
    """The version of the ``nix`` on PATH, or None when it cannot be told."""
    from offload import process

    try:
        done = process.run(["nix", "--version"], check=False, timeout=30)
    except TransportError:
        return None
    match = _VERSION_RE.search(done.stdout)
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def _remote_systems_compat(spec: str, origin: str) -> list[NixCompat]:
    files = [line for line in spec.split("\n") if line]
    if origin != REMOTE_SYSTEMS_ORIGIN or len(files) < 2:
        return []
    clause = (
        f"reads none of the {len(files)} NIX_REMOTE_SYSTEMS files "
        "(it joins their names with spaces into one path)"
    )
    return [NixCompat(REMOTE_SYSTEMS_ORIGIN, (2, 24), clause)]


def read_spec(
    spec: str, origin: str, system: str, *, lenient: bool = False
) -> tuple[list[Machine], list[str], list[ConfigError]]:
    """Machines, warnings, and (``lenient``) every problem; else the first problem raises."""
    reading = read_machines(
        spec,
        source=origin,
        system=system,
        read_file=read_text_file,
        base_dir=Path.cwd(),
        warn_missing=origin != MACHINES_DEFAULT_ORIGIN,
    )
    if not lenient:
        reading.raise_first()
    warnings = list(reading.warnings)
    compat = [*_remote_systems_compat(spec, origin), *reading.compat]
    if compat:
        version = local_nix_version()
        warnings += [note.message(version) for note in compat if note.applies(version)]
    return reading.machines, warnings, reading.errors


def remote_systems_spec(env: Mapping[str, str]) -> str | None:
    """The ``builders`` default ``NIX_REMOTE_SYSTEMS`` gives (one ``@file`` a line), if set."""
    value = env.get("NIX_REMOTE_SYSTEMS")
    if value is None:
        return None
    return "\n".join(f"@{name}" for name in value.split(":") if name)
