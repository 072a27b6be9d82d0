"""What makes a machine unusable although Nix takes its line, for `offload machines` to say.

Nix accepts these lines and finds out at build time, one failed connection at a time: a key
file that is not there, a store URI no build can run on (``http://`` is a binary cache; an
unknown scheme is no store at all), zero job slots, a host key column that is base64 of no
ssh key (Nix pins it anyway; ssh then refuses the host), and control or non-UTF-8 bytes in a
column. Pure: whether a key file exists is asked through ``exists``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from offload.config.machines.model import Machine, shown

__all__ = ["machine_problems"]

_CACHES = ("http", "https", "s3", "file")
_IN_PROCESS = ("local", "daemon", "auto", "path", "unix")


def _scheme_problem(machine: Machine) -> str | None:
    if machine.is_ssh:
        return None
    uri = shown(machine.uri)
    if machine.scheme in _CACHES:
        return f"'{uri}' is a binary cache, not a builder: no build can run there"
    if machine.scheme in _IN_PROCESS:
        return f"'{uri}' is a store on this host: offload builds only over ssh:// and ssh-ng://"
    return f"'{uri}': Nix knows no store type '{shown(machine.scheme)}'"


def _junk_columns(machine: Machine) -> list[str]:
    values = {
        "storeUri": machine.uri,
        "systems": ",".join(machine.systems),
        "sshKey": machine.ssh_key or "",
        "features": ",".join(sorted(machine.supported_features | machine.mandatory_features)),
    }
    return [
        f"column {column} holds control characters or bytes that are not UTF-8: '{shown(text)}'"
        for column, text in values.items()
        if shown(text, len(text) * 4) != text
    ]


def machine_problems(machine: Machine, exists: Callable[[str], bool]) -> list[str]:
    """One line per problem, each starting with the machine's ``file:line`` and name."""
    found: list[str] = []
    scheme = _scheme_problem(machine)
    if scheme is not None:
        found.append(scheme)
    if machine.max_jobs == 0:
        found.append("maxJobs is 0: no build is ever sent to it")
    if machine.is_ssh and machine.ssh_key and not exists(str(Path(machine.ssh_key).expanduser())):
        found.append(f"ssh key file {shown(machine.ssh_key, 400)} does not exist")
    if machine.pins_junk:
        found.append(
            "the host key is base64 of no ssh public key: Nix pins it and ssh refuses the host, "
            "so offload does not connect (write base64 -w0 /etc/ssh/ssh_host_ed25519_key.pub)"
        )
    found += _junk_columns(machine)
    return [f"{machine.source}: {machine.name}: {problem}" for problem in found]
