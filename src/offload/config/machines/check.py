"""What makes a machine unusable although Nix takes its line, for `offload machines` to say
(and, of a system no build asks for, every command that reads the pool: ``claim_problems``).

Nix accepts these lines and finds out at build time, one failed connection at a time: a key
file that is not there, a store URI no build can run on (``http://`` is a binary cache; an
unknown scheme is no store at all), zero job slots, a host key column that is base64 of no
ssh key (Nix pins it anyway; ssh then refuses the host), control or non-UTF-8 bytes in a
column, and host or user names with a shell's metacharacters (ssh 9.6 refuses them). Pure:
whether a key file exists is asked through ``exists``.

Nix also takes, with at most a warning, what is most likely a slip: a system that is no Nix
system (``x86-64-linux``; ``x86_64-linx``, a CPU and kernel Nix does not know that is close to a
common system; or a path when the columns are shifted), which no build asks for; a
URI parameter its ssh stores do not know (``ssh-kye=``), which it ignores; and two lines with
one name (``duplicate_names``), which offload could not tell apart (``--on``, backoff): the
pool leaves a repeat out (``config.naming``), so there it finds a machine named ``local``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from offload.config.machines.model import Machine, shell_char, shown, ssh_name_problem
from offload.names import LOCAL
from offload.spelling import meant

__all__ = [
    "claim_problems",
    "duplicate_names",
    "expanded",
    "key_missing",
    "key_too_open",
    "machine_problems",
    "names_public_key",
    "param_problems",
    "real_system",
    "refusals",
]


# A Nix system is cpu-os ("x86_64-linux", "aarch64-darwin"), or cpu-level-os for the x86-64
# levels newer Nix lists in extra-platforms ("x86_64-v3-linux"); these are the common ones.
_SYSTEM = re.compile(r"[a-z0-9_]+(-v[1-4])?-[a-z0-9]+")
_KNOWN_SYSTEMS = (
    "x86_64-linux", "aarch64-linux", "i686-linux", "armv7l-linux", "armv6l-linux",
    "riscv64-linux", "powerpc64le-linux", "x86_64-darwin", "aarch64-darwin", "x86_64-freebsd",
)  # fmt: skip
# Nix's own system features (globals.hh's defaults, and those its builds set): a word close to
# one of them in a machines line is likely a slip (``bigparallel``).
_KNOWN_FEATURES = (
    "benchmark", "big-parallel", "kvm", "nixos-test", "uid-range", "ca-derivations",
    "recursive-nix", "apple-virt",
)  # fmt: skip
# The parameters Nix's ssh stores take (nix-protocols.md 6.2: ssh:// and ssh-ng://, with the
# settings of every store), and offload's own builders-use-substitutes.
_SSH_PARAMS = (
    "ssh-key", "base64-ssh-public-host-key", "compress", "remote-program", "remote-store",
    "max-connections", "max-connection-age", "log-fd", "path-info-cache-size", "trusted",
    "priority", "want-mass-query", "system-features", "builders-use-substitutes",
)  # fmt: skip


_NIX_BOOLEANS = ("true", "false", "yes", "no", "1", "0")  # ``offload.booleans``


def _close(word: str, known: Sequence[str]) -> str:
    match = meant(word, known)
    return f" (did you mean {match}?)" if match else ""


# Nix's CPUs and kernels (nixpkgs' lib.systems.parse, the common ones): a system made of them
# is one a user may mean (an aarch64-linux claimed for binfmt emulation), not a slip.
_CPUS = frozenset((
    "x86_64", "i686", "aarch64", "armv5tel", "armv6l", "armv7l", "armv7a", "riscv32", "riscv64",
    "powerpc64", "powerpc64le", "mips64el", "mipsel", "s390x", "loongarch64", "wasm32", "wasm64",
))  # fmt: skip
_KERNELS = frozenset((
    "linux", "darwin", "freebsd", "netbsd", "openbsd", "cygwin", "windows", "none", "wasi",
    "solaris", "illumos", "genode", "redox",
))  # fmt: skip


def real_system(system: str) -> bool:
    """Is ``system`` a CPU and kernel Nix knows (``x86_64-v3-linux`` too), not a misspelling?"""
    cpu, _, kernel = system.rpartition("-")
    return kernel in _KERNELS and (cpu in _CPUS or cpu.rpartition("-")[0] in _CPUS)


def _misspelt(system: str) -> str | None:
    """The common system a well-formed but unknown ``system`` misspells (``x86_64-linx``)."""
    return None if real_system(system) else meant(system, _KNOWN_SYSTEMS, cutoff=0.8)


def claim_problems(machine: Machine) -> list[str]:
    """A system or feature in ``machine``'s line that no build asks for (a misspelling, a
    path), said. A feature is any word (``cuda``, ``slowboard``): one only a letter or a dash
    from one of Nix's (``bigparallel``) is said."""
    found = [
        f"feature '{shown(feature)}' is not Nix's {match} (a misspelling?): builds that need "
        f"{match} never go there"
        for feature in sorted(machine.supported_features | machine.mandatory_features)
        if feature not in _KNOWN_FEATURES
        and (match := meant(feature, _KNOWN_FEATURES, cutoff=0.85)) is not None
    ]
    for system in machine.systems:
        if _SYSTEM.fullmatch(system):
            if (match := _misspelt(system)) is not None:
                found.append(
                    f"system '{shown(system)}' is no Nix system (did you mean {match}?): "
                    "no build asks for it"
                )
            continue
        if "/" in system:
            why = "looks like a path (are the columns shifted? 2 is the systems, 3 the ssh key)"
        else:
            why = "is no Nix system" + _close(system, _KNOWN_SYSTEMS)
        found.append(f"system '{shown(system)}' {why}: no build asks for it")
    return found


def param_problems(machine: Machine) -> list[str]:
    """What is wrong with the URI's parameters as written (a name Nix does not know, an empty
    remote-program), which no check of the builder itself finds (``offload doctor``)."""
    if not machine.is_ssh:
        return []
    found = [
        f"URI parameter '{shown(key)}' means nothing to Nix's ssh stores{_close(key, _SSH_PARAMS)}"
        for key in machine.params
        if key not in _SSH_PARAMS
    ]
    compress = machine.params.get("compress")
    if compress is not None and compress not in _NIX_BOOLEANS:
        # Nix: "Boolean setting 'compress' has invalid value 'on'", and no build there.
        found.append(
            f"compress={shown(compress)} is no boolean Nix takes: its hook leaves the machine"
            " out (offload reads it as false); write compress=true or false"
        )
    if machine.params.get("remote-program") == "":
        # offload runs the default there; Nix's own hook runs nothing ("--serve: command
        # not found"), and every build it sends fails.
        found.append(
            "remote-program is empty: Nix's own hook runs no program there, and its builds"
            " fail; remove the parameter (offload runs the default)"
        )
    return found


def duplicate_names(machines: Sequence[Machine]) -> list[str]:
    """One line per machine whose name an earlier line has, or the local machine's:
    ``--on``, tables and backoff would take the two for one."""
    first: dict[str, Machine] = {}
    for machine in machines:
        first.setdefault(machine.name, machine)
    return [
        f"{machine.source}: {machine.name}: named as "
        + ("the local machine is" if machine.name == LOCAL else f"{first[machine.name].source} is")
        + ": offload cannot tell them apart (give one a name in offload.toml)"
        for machine in machines
        if first[machine.name] is not machine or machine.name == LOCAL
    ]


def _junk_columns(machine: Machine) -> list[str]:
    values = {
        "storeUri": machine.uri,
        "systems": ",".join(machine.systems),
        "sshKey": machine.ssh_key or "",
        "features": ",".join(sorted(machine.supported_features | machine.mandatory_features)),
    }
    # A parameter's value as decoded (%00 is a NUL byte in remote-store).
    values |= {f"storeUri's parameter {name}": text for name, text in machine.params.items()}
    return [
        f"{'' if ' ' in column else 'column '}{column} holds control characters or bytes "
        f"that are not UTF-8: '{shown(text)}'"
        for column, text in values.items()
        if shown(text, len(text) * 4) != text
    ]


_PINS_JUNK = (
    "the host key is base64 of no ssh public key: Nix pins it and ssh refuses the host, "
    "so offload does not connect (write base64 -w0 /etc/ssh/ssh_host_ed25519_key.pub)"
)


def _refused_names(machine: Machine) -> list[str]:
    """Host and user names ssh must not be given (``ssh_name_problem``): offload does not
    connect."""
    found = []
    for what, name in (("host", machine.host), ("user", machine.user)):
        if name is None or (problem := ssh_name_problem(name)) is None:
            continue
        said = f"the {what} name '{shown(name)}' {problem}: offload does not connect to it"
        if shell_char(name) is not None:
            said += " (OpenSSH 9.6 refuses it too; an older one would hand it to a ProxyCommand's"
            said += " shell)"
        found.append(said)
    return found


def expanded(path: str) -> str:
    """``path`` with a leading ``~`` or ``~user`` expanded; one naming no user stays as it is
    (a file then missing, as ssh finds it), where ``Path.expanduser`` raised an internal error."""
    return os.path.expanduser(path)  # noqa: PTH111 - see above


def key_missing(machine: Machine, exists: Callable[[str], bool] = os.path.exists) -> bool:
    """Does ``machine``'s line (or offload.toml) name an ssh key file that does not exist? ssh
    then logs in with another key where it has one, without a word."""
    key = machine.ssh_key
    if not machine.is_ssh or not key:
        return False
    return not exists(expanded(key))


def names_public_key(key: str) -> bool:
    """Does ``key`` name a public key file (``.pub``) where ssh needs the private one? ssh says
    such a file is too open (a .pub is made readable) or no key it can load: neither is the
    fix, which is to name the private key."""
    return key.endswith(".pub")


def key_too_open(key: str) -> bool:
    """Does ssh ignore the key file ``key`` as too open? It does a file of this user's that
    others may read or write (OpenSSH's sshkey_perm_ok: mode & 077), and goes on with another
    key without a word where one gets in. False for a file that cannot be looked at."""
    try:
        found = Path(expanded(key)).stat()
    except (OSError, ValueError):
        return False
    return found.st_uid == os.getuid() and bool(found.st_mode & 0o077)


def machine_problems(machine: Machine, exists: Callable[[str], bool]) -> list[str]:
    """One line per problem, each starting with the machine's ``file:line`` and name."""
    found: list[str] = []
    if machine.uri_problem is not None:
        found.append(_unusable_uri(machine))
    if machine.scheme_problem is not None:
        found.append(machine.scheme_problem)
    # Where the user fixes it: an offload.toml table that set the value, else the line.
    if machine.max_jobs == 0:
        table = machine.toml_table("max_jobs")
        said = "maxJobs is 0" if table is None else f"max-jobs is 0 in {shown(table)}"
        found.append(f"{said}: no build is ever sent to it")
    if machine.ssh_key and key_missing(machine, exists):
        table = machine.toml_table("ssh_key")
        where = "" if table is None else f" (ssh-key of {shown(table)})"
        found.append(f"ssh key file {shown(machine.ssh_key, 400)}{where} does not exist")
    elif machine.is_ssh and machine.ssh_key and names_public_key(machine.ssh_key):
        key = shown(machine.ssh_key, 400)
        found.append(f"ssh key file {key} is a public key: name the private key (not its .pub)")
    elif machine.is_ssh and machine.ssh_key and key_too_open(machine.ssh_key):
        key = shown(machine.ssh_key, 400)
        found.append(
            f"ssh key file {key} is readable by others, so ssh ignores it (chmod 600 {key})"
        )
    if machine.pins_junk:
        found.append(_PINS_JUNK)
    found += claim_problems(machine)
    found += param_problems(machine)
    found += _junk_columns(machine)
    found += _refused_names(machine)
    return [f"{machine.source}: {machine.name}: {problem}" for problem in found]


def _unusable_uri(machine: Machine) -> str:
    # Nix before 2.23 takes the line and fails as it connects; 2.23 on parse every URI as they
    # read the spec, and one they cannot parse (which depends on the version: a port of 0
    # from 2.31) fails the whole spec ("Cannot parse Nix store").
    return (
        f"{machine.not_connected}: offload leaves it out (Nix before 2.23 takes the line, and"
        " fails to connect when it builds; a newer one may refuse the whole spec for it);"
        " write it as ssh://[user@]host (a Host alias for a port)"
    )


def refusals(machine: Machine) -> list[str]:
    """Why offload does not connect to ``machine`` (``Machine.not_connected``), with the fix,
    as ``machine_problems`` says it: one line each (none when it connects)."""
    found = [_PINS_JUNK] if machine.pins_junk else []
    found += [_unusable_uri(machine)] if machine.uri_problem is not None else []
    found += _refused_names(machine)
    if not found and machine.not_connected is not None:  # a NUL byte
        found.append(f"{machine.not_connected}: offload does not connect to it")
    return [f"{machine.source}: {machine.name}: {problem}" for problem in found]
