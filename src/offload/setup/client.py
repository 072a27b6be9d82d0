"""``offload setup client``: the client's side for builders already set up, as text.

Nix 2.8 reads no port in a machines line, so each builder gets an ssh ``Host`` alias (its
name) that says where it really is: ``HostName``, ``Port``, ``User``, the dedicated key
(``IdentityFile``, ``IdentitiesOnly`` so an agent's keys are not tried first) and
``HostKeyAlias``. The alias is what Nix and offload pin the host key under: both write the
machines line's key (column 8, ``publicHostKey``) into a known_hosts file under the URI's host,
and without ``HostKeyAlias`` ssh would look it up under ``HostName`` and port instead and refuse
the builder. The same key is also given as a known_hosts line, for ``ssh NAME`` by hand.

The machines lines are ``ssh://``, or ``ssh-ng://`` for builders whose key runs only the
daemon (``setup builder --ssh-ng``; NixOS: ``protocol``). offload's own printer writes them
from entries offload's parser read back, so they say exactly what the parser takes.
``builders-use-substitutes`` lets builders fetch what caches have themselves rather than
receive it from the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from offload.config.machines import encode_host_key, format_machines, machine_from_columns
from offload.forced import FORCED
from offload.setup.nix_text import attr_name, indented, nix_list, nix_string
from offload.setup.values import PublicKey, Target, check_path, check_user

__all__ = [
    "MACHINES_FILE",
    "Builder",
    "ClientSetup",
    "Overrides",
    "client_files",
    "known_hosts_text",
    "machines_text",
    "nixos_module",
    "ssh_config_text",
]

MACHINES_FILE = "machines"
SSH_CONFIG_FILE = "ssh_config"
KNOWN_HOSTS_FILE = "known_hosts"
NIX_CONF_FILE = "nix.conf"
MODULE_FILE = "offload-client.nix"


@dataclass(frozen=True)
class Overrides:
    """What the user says instead of what the builder reports."""

    systems: tuple[str, ...] = ()
    features: tuple[str, ...] | None = None
    jobs: int | None = None
    speed: int = 1


@dataclass(frozen=True)
class Builder:
    target: Target
    host_key: PublicKey
    systems: tuple[str, ...]
    features: tuple[str, ...]
    max_jobs: int
    speed: int


@dataclass(frozen=True)
class ClientSetup:
    user: str
    identity: str
    builders: tuple[Builder, ...]
    scheme: str = "ssh"  # ssh-ng: the builders' keys run `nix-daemon --stdio`

    def __post_init__(self) -> None:
        check_user(self.user)
        check_path(self.identity, "identity file")
        if self.scheme not in FORCED:
            raise ValueError(f"no machines lines of the scheme {self.scheme!r}")


def machines_text(setup: ClientSetup) -> str:
    machines = []
    for builder in setup.builders:
        columns = [
            f"{setup.scheme}://{setup.user}@{builder.target.name}",
            ",".join(builder.systems),
            setup.identity,
            str(builder.max_jobs),
            str(builder.speed),
            ",".join(builder.features) or None,
            None,
            encode_host_key(builder.host_key.bare),
        ]
        machines.append(machine_from_columns(columns, source=builder.target.name, system="-"))
    return format_machines(machines)


def ssh_config_text(setup: ClientSetup) -> str:
    return "".join(
        f"Host {b.target.name}\n"
        f"  HostName {b.target.host}\n"
        f"  Port {b.target.port}\n"
        f"  User {setup.user}\n"
        f"  IdentityFile {setup.identity}\n"
        "  IdentitiesOnly yes\n"
        f"  HostKeyAlias {b.target.name}\n"
        for b in setup.builders
    )


def known_hosts_text(setup: ClientSetup) -> str:
    return "".join(f"{b.target.name} {b.host_key.bare}\n" for b in setup.builders)


def nix_conf_text(machines_path: str = "/etc/nix/machines") -> str:
    return f"builders = @{machines_path}\nbuilders-use-substitutes = true\n"


def _build_machine(setup: ClientSetup, builder: Builder) -> str:
    # NixOS 22.11 on; without it, the machines line is ssh://.
    protocol = f"      protocol = {nix_string(setup.scheme)};\n" if setup.scheme != "ssh" else ""
    return f"""    {{
      hostName = {nix_string(builder.target.name)};
{protocol}      sshUser = {nix_string(setup.user)};
      sshKey = {nix_string(setup.identity)};
      systems = {nix_list(builder.systems)};
      maxJobs = {builder.max_jobs};
      speedFactor = {builder.speed};
      supportedFeatures = {nix_list(builder.features)};
      mandatoryFeatures = [ ];
      publicHostKey = {nix_string(encode_host_key(builder.host_key.bare))};
    }}
"""


def nixos_module(setup: ClientSetup) -> str:
    machines = "".join(_build_machine(setup, b) for b in setup.builders)
    known = "".join(
        f"  programs.ssh.knownHosts.{attr_name(b.target.name)}.publicKey = "
        f"{nix_string(b.host_key.bare)};\n"
        for b in setup.builders
    )
    return f"""# offload setup client: this host sends builds to its builders over ssh.
# Import it from configuration.nix (imports = [ ./{MODULE_FILE} ];), then nixos-rebuild switch.
# The nix-daemon (root) logs in with {setup.identity}, which must exist on this host.
{{ ... }}:
{{
  nix.distributedBuilds = true;
  # Builders fetch what caches have themselves instead of receiving it from here.
  nix.settings.builders-use-substitutes = true;
  nix.buildMachines = [
{machines}  ];
  # Nix 2.8 takes no port in a machines line: each builder is an ssh alias.
  programs.ssh.extraConfig = {indented(ssh_config_text(setup), "    ")};
{known}}}
"""


def client_files(setup: ClientSetup) -> list[tuple[str, str]]:
    """(file name, text) of what ``setup client`` prints or writes, in that order."""
    return [
        (MACHINES_FILE, machines_text(setup)),
        (SSH_CONFIG_FILE, ssh_config_text(setup)),
        (KNOWN_HOSTS_FILE, known_hosts_text(setup)),
        (NIX_CONF_FILE, nix_conf_text()),
        (MODULE_FILE, nixos_module(setup)),
    ]


def where_they_go(names: Sequence[str]) -> dict[str, str]:
    """One line per file: where it goes on a host without NixOS (NixOS: the module)."""
    places = {
        MACHINES_FILE: "/etc/nix/machines (or give it to offload/nix-build as --builders @FILE)",
        SSH_CONFIG_FILE: "append to /root/.ssh/config (the nix-daemon runs ssh as root, and"
        " reads no NIX_SSHOPTS of a user's shell) or ~/.ssh/config (offload build as you)",
        KNOWN_HOSTS_FILE: "append to /etc/ssh/ssh_known_hosts, for `ssh NAME` by hand",
        NIX_CONF_FILE: "append to /etc/nix/nix.conf, then restart nix-daemon",
        MODULE_FILE: "NixOS: instead of all the above",
    }
    return {name: places[name] for name in names if name in places}
