"""The local fleet as data: member specs, the files that describe it, and its recorded state.

A fleet lives in one directory. Each member ``NAME`` is an sshd on 127.0.0.1 inside its own mount
namespace, where ``<dir>/NAME/nix`` is bind-mounted over ``/nix``, ``<dir>/NAME/etc-nix`` over
``/etc/nix`` and ``<dir>/NAME/home`` over the login user's home: its own store, its own
``nix.conf`` and a clean home (not when the fleet itself lives in that home, as the default
one does: ``home_to_replace``). A member may also see its own text in some
``/proc`` files (``proc_overrides``, bind-mounted from ``<dir>/NAME/proc/N`` the way LXCFS does),
e.g. a fake ``/proc/loadavg`` and boot id, so that it looks like a busy machine of its own.
The client side is a key pair, an ssh config with one ``Host NAME`` alias per member (Nix 2.8
takes no ``host:port``), a pinned ``known_hosts`` and a Nix machines file. A member's store URI
there is ``ssh://NAME?ssh-key=<dir>/client_key`` (``member_uri``): Nix and offload key a
machine's slot locks by its URI, and the key's path, unique to the fleet's directory, keeps two
fleets whose members have the same names from sharing them, while the member keeps its name
(``--on NAME``, offload's tables and events). ``fleet.json`` records
what was started (pid, the pid's start time so a recycled pid is never signalled, and the mount
namespace so stray sessions can be found; ``records``).

Everything here is pure: it renders and parses text; ``manager`` does the I/O.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from offload.errors import FleetError
from offload.forced import FORCED
from offload.names import LOCAL
from offload.paths import state_dir
from offload.slots import NIX_CURRENT_LOAD

__all__ = [
    "CLIENT_KEY",
    "DEFAULT_SPECS",
    "FEATURES",
    "FORCED_COMMANDS",
    "MEMBER_AUTHORIZED_KEYS",
    "MEMBER_SPEED_FILE",
    "SSHD",
    "ForcedCommand",
    "MemberSpec",
    "authorized_keys",
    "check_fleet_dir",
    "check_host",
    "check_programs",
    "client_argv",
    "default_fleet_dir",
    "home_to_replace",
    "known_hosts_line",
    "machines_line",
    "member_argv",
    "member_uri",
    "nix_conf",
    "proc_override_file",
    "speed_text",
    "ssh_config",
    "sshd_config",
    "validate_specs",
]

SSHD = "/usr/sbin/sshd"
CLIENT_KEY = "client_key"
# Inside a member's namespace; on the host these are <member>/etc-nix/<name>.
MEMBER_SPEED_FILE = "/etc/nix/offload-speed"
# The authorized keys live in the member's own /etc/nix: StrictModes checks every directory up to
# `/`, and a fleet under /tmp (mode 1777) would be refused there.
MEMBER_AUTHORIZED_KEYS = "/etc/nix/offload-authorized-keys"
FEATURES = ("benchmark", "big-parallel", "nixos-test", "kvm")
DEFAULT_SPECS_TEXT = ("fast:4:2", "medium:2:2", "slow:1:2")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# What a fleet directory's path may hold: it goes unquoted into a URI's query, a machines line's
# columns and ssh_config lines.
_DIR_CHARS = re.compile(r"[A-Za-z0-9._/+-]+")
_RESERVED = frozenset({LOCAL, "localhost"})
# The programs hardened builders restrict their key to, by the short name a spec uses: the
# serve program (NixOS `nix.sshServe`, ssh://) and the daemon (srvos' remote builder, ssh-ng://).
FORCED_COMMANDS = {"serve": FORCED["ssh"], "daemon": FORCED["ssh-ng"]}
# The member kind whose sessions store through a nix-daemon that does not trust them.
UNTRUSTED = "untrusted"
# Where such a member's daemon listens (inside its namespace: its own /nix).
DAEMON_SOCKET = "/nix/var/nix/daemon-socket/socket"
# Where the restriction is written: the client key's authorized_keys line, or sshd's config.
_FORCE_IN = ("keys", "sshd")


@dataclass(frozen=True)
class ForcedCommand:
    """The one command a member runs for the client's key, whatever the client asks for.

    ``where="keys"`` writes ``restrict,command="..."`` before the key in authorized_keys;
    ``where="sshd"`` writes ``ForceCommand ...`` into the member's sshd_config.
    """

    command: str
    where: str = "keys"

    def __post_init__(self) -> None:
        # authorized_keys quotes the command in "..." and sshd_config takes one line.
        if not self.command.strip() or any(c in self.command for c in '"\\\n\r'):
            raise FleetError(f"invalid forced command {self.command!r}")
        if self.where not in _FORCE_IN:
            raise FleetError(f"invalid place {self.where!r} for a forced command", hint="keys|sshd")

    @classmethod
    def parse(cls, text: str) -> ForcedCommand:
        """``serve``, ``daemon``, or either with ``@sshd`` (or ``@keys``, the default)."""
        short, _, where = text.partition("@")
        if short not in FORCED_COMMANDS:
            raise FleetError(
                f"invalid forced command {text!r} in a fleet member",
                hint="write serve or daemon, optionally with @sshd (ForceCommand) or @keys;"
                " or untrusted (sessions through a daemon that does not trust them)",
            )
        return cls(FORCED_COMMANDS[short], where or "keys")

    @property
    def text(self) -> str:
        short = next((k for k, v in FORCED_COMMANDS.items() if v == self.command), self.command)
        return short if self.where == "keys" else f"{short}@{self.where}"


@dataclass(frozen=True)
class MemberSpec:
    """What a member should be: its ssh alias, its speed factor and its build slots.

    ``proc_overrides``: (``/proc`` file, text) pairs the member sees instead of the host's.
    ``forced``: the one command the client's key may run there (a hardened builder), or None.
    ``untrusted``: the client's sessions store through a nix-daemon of the member's own that
    does not trust them (as for a login user outside ``trusted-users``), not as root directly.
    """

    name: str
    speed: float = 1.0
    jobs: int = 1
    proc_overrides: tuple[tuple[str, str], ...] = field(default=())
    forced: ForcedCommand | None = None
    untrusted: bool = False

    def __post_init__(self) -> None:
        if not _LABEL.fullmatch(self.name):
            raise FleetError(
                f"invalid fleet member name {self.name!r}",
                hint="use a hostname label: lowercase letters, digits and '-', at most 63",
            )
        if self.name in _RESERVED:
            raise FleetError(
                f"fleet member name {self.name!r} is reserved",
                hint="`local` is the local machine and Nix never uses ssh for `localhost`",
            )
        if not (math.isfinite(self.speed) and self.speed > 0):
            raise FleetError(
                f"invalid speed {self.speed!r} for fleet member {self.name}",
                hint="a speed is a finite number above 0 (NAME:SPEED:JOBS, e.g. fast:4:2)",
            )
        # Nix reads max-jobs as an unsigned int: more failed only once the member's sshd ran.
        if not 1 <= self.jobs < 2**32:
            raise FleetError(
                f"invalid jobs {self.jobs!r} for fleet member {self.name}",
                hint="a member takes 1 to 4294967295 jobs (NAME:SPEED:JOBS, e.g. fast:4:2)",
            )
        targets = [target for target, _ in self.proc_overrides]
        for target in targets:
            parts = Path(target).parts
            if parts[:2] != ("/", "proc") or len(parts) < 3 or ".." in parts:
                raise FleetError(f"fleet member {self.name}: {target!r} is not a file in /proc")
        if len(set(targets)) != len(targets):
            raise FleetError(f"fleet member {self.name}: a /proc file is overridden twice")

    @classmethod
    def parse(cls, text: str) -> MemberSpec:
        """Parse ``NAME[:SPEED[:JOBS[:KIND]]]``; SPEED may be a float, JOBS is an integer >= 1,
        KIND a ``ForcedCommand`` (``serve``, ``daemon``, ``serve@sshd``...), ``untrusted``, or
        both (``serve+untrusted``)."""
        parts = text.strip().split(":")
        hint = (
            "write NAME[:SPEED[:JOBS[:KIND]]], e.g. fast:4:2, locked:1:1:serve, x:1:1:untrusted"
            " or y:1:1:serve+untrusted"
        )
        if len(parts) > 4 or not parts[0]:
            raise FleetError(f"invalid fleet member {text!r}", hint=hint)
        speed = 1.0
        jobs = 1
        if len(parts) > 1:
            try:
                speed = float(parts[1])
            except ValueError:
                raise FleetError(f"invalid speed in fleet member {text!r}", hint=hint) from None
        if len(parts) > 2:
            try:
                jobs = int(parts[2])
            except ValueError:
                raise FleetError(f"invalid jobs in fleet member {text!r}", hint=hint) from None
        kind, plus, untrusted = parts[3].partition(f"+{UNTRUSTED}") if len(parts) > 3 else ("",) * 3
        if plus and (untrusted or kind in ("", UNTRUSTED)):  # only a forced command before it
            raise FleetError(f"invalid kind in fleet member {text!r}", hint=hint)
        if kind == UNTRUSTED:
            return cls(parts[0], speed, jobs, untrusted=True)
        forced = ForcedCommand.parse(kind) if kind else None
        return cls(parts[0], speed, jobs, forced=forced, untrusted=bool(plus))

    @property
    def text(self) -> str:
        """Back to ``NAME:SPEED:JOBS[:KIND]``."""
        kinds = [self.forced.text] if self.forced is not None else []
        kinds += [UNTRUSTED] if self.untrusted else []
        kind = ":" + "+".join(kinds) if kinds else ""
        return f"{self.name}:{speed_text(self.speed)}:{self.jobs}{kind}"

    @property
    def nix_speed(self) -> int:
        """The speed factor for Nix 2.8's machines file, which takes only positive integers."""
        return max(1, math.floor(self.speed + 0.5))


DEFAULT_SPECS: tuple[MemberSpec, ...] = tuple(MemberSpec.parse(s) for s in DEFAULT_SPECS_TEXT)


def validate_specs(specs: Sequence[MemberSpec]) -> tuple[MemberSpec, ...]:
    if not specs:
        raise FleetError("a fleet needs at least one member", hint="give --member NAME:SPEED:JOBS")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise FleetError(
                f"fleet member {spec.name!r} is given twice", hint="give each member once"
            )
        seen.add(spec.name)
    return tuple(specs)


def check_host(euid: int, platform: str) -> None:
    """Refuse early, before anything is created, where the fleet cannot work."""
    if not platform.startswith("linux"):
        raise FleetError(
            f"the local fleet needs Linux mount namespaces (this is {platform})",
            hint="use real builders",
        )
    if euid != 0:
        raise FleetError(
            "the local fleet must be started as root",
            hint=(
                "the local fleet needs root for mount namespaces; run as root or use real builders"
            ),
        )


def check_programs(find: Callable[[str], str | None] = shutil.which, sshd: str = SSHD) -> None:
    """Refuse early where a member could not run: each mounts a store of its own over /nix,
    so its Nix must live outside it (a distribution's package, as Debian's nix-bin), and
    it is OpenSSH's sshd. On NixOS, or with Nix's own installer, `fleet up` failed late, at
    its first ssh, with a hint about ssh."""
    if not os.access(sshd, os.X_OK):
        raise FleetError(
            f"the local fleet runs OpenSSH's server at {sshd}, and there is none",
            hint="install OpenSSH's server (Debian: openssh-server), or use real builders",
        )
    found = find("nix-store")
    where = None if found is None else os.path.realpath(found)
    if where is None or where.startswith("/nix/"):
        raise FleetError(
            "the local fleet mounts a store of its own over /nix, and "
            + ("no nix-store is on PATH" if where is None else f"this Nix lives in it ({where})"),
            hint="it needs a Nix installed outside /nix (Debian's nix-bin); or use real builders",
        )


def check_fleet_dir(fleet_dir: Path) -> None:
    """Refuse a directory whose path the fleet's files could not carry as written."""
    if not _DIR_CHARS.fullmatch(str(fleet_dir)):
        raise FleetError(
            f"fleet directory {str(fleet_dir)!r} has characters a machines line cannot carry",
            hint="use a path of letters, digits and . _ / + -",
        )


def default_fleet_dir(env: Mapping[str, str], home: Path) -> Path:
    if env.get("OFFLOAD_FLEET_DIR"):
        return Path(env["OFFLOAD_FLEET_DIR"])
    return state_dir(env, home) / "fleet"


def speed_text(speed: float) -> str:
    """``4.0`` -> ``4``, ``1.5`` -> ``1.5``: what a builder's shell reads from its speed file."""
    return f"{speed:g}"


def nix_conf(spec: MemberSpec) -> str:
    # An empty build-users-group: the nixbld uids are shared with the host and the other members,
    # and two stores using nixbld1 at once kill each other's builders (signal 9). An untrusted
    # member's daemon trusts nobody: its clients (root, through the daemon) are refused as any
    # login user outside trusted-users is.
    trusted = "" if spec.untrusted else " root"
    return (
        "build-users-group =\n"
        "substituters =\n"
        "sandbox = false\n"
        f"max-jobs = {spec.jobs}\n"
        f"trusted-users ={trusted}\n"
    )


def authorized_keys(spec: MemberSpec, client_pub: str) -> str:
    """The member's authorized_keys: the client key, restricted if the member is hardened."""
    forced = spec.forced
    if forced is None or forced.where != "keys":
        return client_pub
    return f'restrict,command="{forced.command}" {client_pub.strip()}\n'


def sshd_config(member_root: Path, port: int, spec: MemberSpec) -> str:
    forced = spec.forced
    force = f"ForceCommand {forced.command}\n" if forced and forced.where == "sshd" else ""
    # Sessions of an untrusted member store through its daemon, as a non-root user's Nix does.
    force += "SetEnv NIX_REMOTE=daemon\n" if spec.untrusted else ""
    return force + (
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {member_root / 'ssh_host_ed25519_key'}\n"
        f"AuthorizedKeysFile {MEMBER_AUTHORIZED_KEYS}\n"
        "PidFile none\n"  # nothing reads it; sshd would write it 0644
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes yes\n"
        "PrintMotd no\n"
        "PrintLastLog no\n"
        "X11Forwarding no\n"
        "AllowTcpForwarding no\n"
        # Schedulers multiplex many sessions over one ControlMaster connection, and open
        # connections in bursts; the defaults (10, 10:30:100) refuse some of them.
        "MaxSessions 64\n"
        "MaxStartups 64\n"
        "LogLevel ERROR\n"
    )


def proc_override_file(member_root: Path, index: int) -> Path:
    """Where the text of a member's ``index``-th ``/proc`` override is kept on the host."""
    return member_root / "proc" / str(index)


def home_to_replace(login_home: Path, fleet_dir: Path) -> Path | None:
    """The login home a member gets a clean one over, or None: not ``/``, and not a home
    holding the fleet itself (the default fleet lives in ~/.local/state), which the member's
    sshd must still see."""
    if login_home == Path("/") or fleet_dir.is_relative_to(login_home):
        return None
    return login_home


def member_argv(
    member_root: Path,
    config: Path,
    proc_overrides: Sequence[tuple[str, str]] = (),
    home: Path | None = None,
    *,
    daemon: bool = False,
) -> list[str]:
    """The command that starts a member: sshd in a fresh mount namespace over its own dirs.

    ``home`` is the login user's home directory; the member's own ``<dir>/NAME/home`` is
    mounted over it, so sessions run in a clean home as on a real builder, not under this
    host's shell start-up files (a ``.bashrc`` that sets up pyenv costs each session ~0.1 s).
    ``unshare`` and the shell both exec, so the started pid is sshd's own. With ``daemon``, a
    nix-daemon over the member's store runs beside it (an ``untrusted`` member's), listening
    before sshd starts; it lives in the namespace, where ``fleet down`` stops everything.
    """
    # At most 10 s: sessions find the daemon listening (if it ever does).
    wait = f"i=0; while [ ! -S {DAEMON_SOCKET} ] && [ $i -lt 200 ]; do /bin/sleep 0.05; "
    wait += "i=$((i+1)); done"
    start_daemon = f"nix-daemon </dev/null & {wait}; " if daemon else ""
    overrides = "".join(
        f"mount --bind {shlex.quote(str(proc_override_file(member_root, i)))} "
        f"{shlex.quote(target)} && "
        for i, (target, _) in enumerate(proc_overrides)
    )
    script = (
        f"mount --bind {shlex.quote(str(member_root / 'nix'))} /nix && "
        f"mount --bind {shlex.quote(str(member_root / 'etc-nix'))} /etc/nix && "
        f"{overrides}"
        + (
            f"mount --bind {shlex.quote(str(member_root / 'home'))} {shlex.quote(str(home))} && "
            if home is not None
            else ""
        )
        + start_daemon
        + f"exec {SSHD} -D -e -f {shlex.quote(str(config))}"
    )
    return ["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script]


def client_argv(current_load: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` run as if on a client host of its own, next to the fleet's members.

    It runs in a fresh mount namespace where ``current_load`` is bind-mounted over Nix's
    ``current-load`` directory, so neither offload nor Nix's hook there sees the slot locks of
    this host's other clients (the store stays this host's, shared). The mount point must exist.
    ``unshare`` and the shell both exec: the started pid is the client's own.
    """
    mount = f"mount --bind {shlex.quote(str(current_load))} {shlex.quote(str(NIX_CURRENT_LOAD))}"
    script = f'{mount} && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script, "sh", *argv]


def ssh_config(fleet_dir: Path, ports: Mapping[str, int]) -> str:
    blocks = [
        f"Host {name}\n"
        "  HostName 127.0.0.1\n"
        f"  Port {port}\n"
        "  User root\n"
        f"  IdentityFile {fleet_dir / CLIENT_KEY}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {fleet_dir / 'known_hosts'}\n"
        f"  HostKeyAlias {name}\n"
        "  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n"
        "  ConnectTimeout 5\n"
        "  LogLevel ERROR\n"
        for name, port in ports.items()
    ]
    return "\n".join(blocks)


def known_hosts_line(name: str, host_pub: str) -> str:
    return f"{name} {_key_only(host_pub)}\n"


def member_uri(spec: MemberSpec, client_key: Path) -> str:
    """A member's store URI: ``ssh-ng://`` for one whose key runs only the daemon (the only
    protocol it speaks), ``ssh://`` for the rest; the fleet's own key in the query makes the
    URI, and so the slot locks Nix and offload name after it, the fleet's own."""
    daemon = spec.forced is not None and spec.forced.command == FORCED_COMMANDS["daemon"]
    scheme = "ssh-ng" if daemon else "ssh"
    return f"{scheme}://{spec.name}?ssh-key={client_key}"


def machines_line(spec: MemberSpec, system: str, client_key: Path, host_pub: str) -> str:
    """A member's machines line (``member_uri``), with its host key pinned."""
    host_key = base64.b64encode(f"{_key_only(host_pub)}\n".encode()).decode()
    return (
        f"{member_uri(spec, client_key)} {system} {client_key} {spec.jobs} {spec.nix_speed} "
        f"{','.join(FEATURES)} - {host_key}\n"
    )


def _key_only(pub: str) -> str:
    """``type base64`` of a public key line, without its comment."""
    fields = pub.split()
    if len(fields) < 2:
        raise FleetError(f"malformed public key {pub.strip()!r}")
    return f"{fields[0]} {fields[1]}"
