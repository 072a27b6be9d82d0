"""What a builder's side says, once, for the NixOS module and the script alike: the build user
and the client's key (``BuilderSetup``), the key's authorized_keys line, the sshd lines for that
user, the nix-daemon's memory limits and the seeds' tuning (``offload.setup.builder`` says why
each is there).
"""

from __future__ import annotations

from dataclasses import dataclass

from offload.errors import ConfigError
from offload.forced import FORCED
from offload.setup.values import PublicKey, check_user

__all__ = [
    "CLIENT_ALIVE_COUNT_MAX",
    "CLIENT_ALIVE_INTERVAL",
    "DEFAULT_USER",
    "MAX_FREE",
    "MAX_SESSIONS",
    "MIN_FREE",
    "NR_BUILD_USERS",
    "TUNING",
    "BuilderSetup",
    "authorized_keys_line",
    "daemon_limits",
    "sshd_lines",
]

DEFAULT_USER = "nixremote"
MIN_FREE = 1024**3
MAX_FREE = 10 * 1024**3
NR_BUILD_USERS = 64
# sshd asks a silent client every 15 s and drops it after 4 unanswered asks: a minute, far
# beyond any live client's answer (offload's ssh gives up on a silent builder after 12 s).
CLIENT_ALIVE_INTERVAL = 15
CLIENT_ALIVE_COUNT_MAX = 4
# Sessions one connection may carry: offload runs one per build slot and one more over a
# builder's one connection (``transport.links.machine``), and every core is a slot (max-jobs
# auto). sshd's own 10 refused them on a builder of 10 cores or more.
MAX_SESSIONS = 256


@dataclass(frozen=True)
class BuilderSetup:
    user: str
    key: PublicKey
    restricted: bool = True
    scheme: str = "ssh"  # of the machines lines the client will write: ssh or ssh-ng

    def __post_init__(self) -> None:
        check_user(self.user)
        if self.scheme not in FORCED:
            raise ValueError(f"no program for the scheme {self.scheme!r}")
        if self.scheme != "ssh" and not self.restricted:
            raise ConfigError(
                "--ssh-ng restricts the key to `nix-daemon --stdio`, --unrestricted lets it run "
                "any command: give one of them",
                hint="an unrestricted key serves ssh:// and ssh-ng:// lines alike: drop --ssh-ng",
            )
        if self.user == "root":
            # The sshd block would take root's password and tty logins away, and the module
            # would make root a system user: the script refuses uid 0 too, on the builder.
            raise ConfigError(
                "the build user cannot be root: its sshd lines would take root's password and "
                "tty logins away",
                hint=f"give the builds a user of their own: --user {DEFAULT_USER} (the default)",
            )

    @property
    def program(self) -> tuple[str, str]:
        """The restricted key's program (``offload.forced``: the one the scheme's machines
        lines open there): its name and its arguments."""
        name, _, arguments = FORCED[self.scheme].partition(" ")
        return name, arguments


def authorized_keys_line(setup: BuilderSetup, path: str | None = None) -> str:
    """The client key's authorized_keys line: ``restrict`` (no forwarding, no pty, no
    ``~/.ssh/rc``) always, and with it the one command unless ``--unrestricted``; ``path``
    is the program's where it is known (the key's command runs without the user's PATH)."""
    if not setup.restricted:
        return f"restrict {setup.key.line}"
    name, arguments = setup.program
    return f'restrict,command="{path or name} {arguments}" {setup.key.line}'


# The seeds' tuning, each set only where nix.conf does not set it already (as the NixOS
# module's mkDefault: the host's own value wins).
TUNING = (("max-jobs", "auto"), ("cores", "0"), ("min-free", str(MIN_FREE)),
          ("max-free", str(MAX_FREE)))  # fmt: skip


def sshd_lines(setup: BuilderSetup) -> str:
    return (
        f"Match User {setup.user}\n"
        "  AllowAgentForwarding no\n"
        "  AllowTcpForwarding no\n"
        "  PermitTTY no\n"
        "  PermitTunnel no\n"
        "  X11Forwarding no\n"
        "  PasswordAuthentication no\n"
        f"  ClientAliveInterval {CLIENT_ALIVE_INTERVAL}\n"
        f"  ClientAliveCountMax {CLIENT_ALIVE_COUNT_MAX}\n"
        f"  MaxSessions {MAX_SESSIONS}\n"
        "Match all\n"
    )


def daemon_limits() -> str:
    return "[Service]\nMemoryAccounting=yes\nMemoryMax=90%\nOOMScoreAdjust=500\n"
