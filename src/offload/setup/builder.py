"""``offload setup builder``: the builder's side, as a NixOS module and as a script for the rest.

Both say the same things, the way the seeds set a builder up by hand (nix.dev's "Setting up
distributed builds", the NixOS & Flakes book, Nix's manual), in one place:

- a system user and group of their own, with a shell (sshd runs a key's ``command=`` through
  it) and the client's key authorized; on a host without NixOS, the user also joins the group
  that may enter the nix-daemon's socket directory (Debian's nix-bin makes it 0770
  root:nix-users: outside that group, every session fails with "Permission denied");
- the key restricted to one program by default, the careful way (``restrict`` turns off
  forwarding, the pty and ``~/.ssh/rc``; ``command=`` makes whatever the client asks for run
  that program): ``nix-store --serve --write``, which Nix's build-remote and offload open on an
  ``ssh://`` builder, as NixOS's ``nix.sshServe`` and careful admins do; with ``--ssh-ng``,
  ``nix-daemon --stdio``, which Nix's ssh-ng store and offload open on an ``ssh-ng://`` one, as
  srvos' remote-builder role does. ``unrestricted`` gives a plain key line instead: the key may
  then run any command as that user, which lets offload read the builder's load (and
  ``offload doctor``/``setup client`` ask its settings);
- the user trusted (``trusted-users``: building derivations sent over the wire and importing
  unsigned paths need it), root kept trusted;
- the seeds' tuning: Nix's build users (``nrBuildUsers``), garbage collection when the disk is
  nearly full (``min-free``/``max-free``: at 1 GiB free, up to 10 GiB; the seeds' 10 MiB and
  200 MiB leave builds failing on a full disk before the collector helps), every core
  (``max-jobs = auto``, ``cores = 0``), and the nix-daemon kept from taking the machine's
  memory (``MemoryMax``) and killed first when memory runs out (``OOMScoreAdjust``);
- sshd lines that take the rest away from that user (no forwarding, tty or tunnel), let one
  connection carry a session per build slot (``MaxSessions``: sshd's 10 refused the sessions
  past it that offload runs over one connection to a builder of 10 jobs or more), and drop
  its connections once the client has not answered for a minute (``ClientAliveInterval``: off
  by default, so a client host that goes away without closing them, suspended or cut off,
  would keep its builds running there and their slots held until they end; a client that
  closes them, even by dying, stops them at once: ``offload.transport.wrapper``).

The model and the lines both forms write are ``offload.setup.build_user``; the script is
``offload.setup.builder_script``.
"""

from __future__ import annotations

from offload.setup.build_user import (
    CLIENT_ALIVE_COUNT_MAX,
    CLIENT_ALIVE_INTERVAL,
    DEFAULT_USER,
    MAX_FREE,
    MIN_FREE,
    NR_BUILD_USERS,
    TUNING,
    BuilderSetup,
    authorized_keys_line,
    sshd_lines,
)
from offload.setup.builder_script import shell_script
from offload.setup.nix_text import attr_name, indented, nix_list, nix_string

__all__ = [
    "CLIENT_ALIVE_COUNT_MAX",
    "CLIENT_ALIVE_INTERVAL",
    "DEFAULT_USER",
    "MAX_FREE",
    "MIN_FREE",
    "TUNING",
    "BuilderSetup",
    "authorized_keys_line",
    "builder_files",
    "nixos_module",
    "shell_script",
    "sshd_lines",
]

MODULE_FILE = "offload-builder.nix"
SCRIPT_FILE = "offload-builder.sh"


def nixos_module(setup: BuilderSetup) -> str:
    user = setup.user
    if setup.restricted:
        # The store path of this system's own Nix: no PATH lookup in the forced command.
        name, arguments = setup.program
        forced = f'"restrict,command=\\"${{config.nix.package}}/bin/{name} {arguments}\\" "'
        key = f"({forced} + {nix_string(setup.key.line)})"
        kind = f"restricted to `{name} {arguments}`"
    else:
        key = nix_string(authorized_keys_line(setup))
        kind = "unrestricted: it may run any command as this user"
    return f"""# offload setup builder: this host builds for others over ssh, as user {user}.
# Import it from configuration.nix (imports = [ ./{MODULE_FILE} ];), then nixos-rebuild switch.
# The client's key ({setup.key.fingerprint}) is {kind}.
# The tuning is lib.mkDefault: a value of your own configuration wins over it.
{{ config, lib, ... }}:
{{
  users.users.{attr_name(user)} = {{
    isSystemUser = true;
    group = {nix_string(user)};
    # A home it may write: the builder-side slot counts live there when /nix/var/nix is
    # root's (an unrestricted key's sessions; /var/empty, a system user's default, is not).
    home = {nix_string(f"/var/lib/{user}")};
    createHome = true;
    # sshd runs the key's command through the user's shell.
    useDefaultShell = true;
    openssh.authorizedKeys.keys = [
      {key}
    ];
  }};
  users.groups.{attr_name(user)} = {{ }};

  nix.nrBuildUsers = lib.mkDefault {NR_BUILD_USERS};
  nix.settings = {{
    # Building derivations sent over ssh and importing unsigned paths need a trusted user.
    trusted-users = {nix_list(["root", user])};
    # max-jobs and cores are NixOS's own defaults ("auto", 0): set here too, they conflicted
    # with an older hardware-configuration.nix's nix.maxJobs = lib.mkDefault 8.
    # Collect garbage when less than 1 GiB is free, until 10 GiB are.
    min-free = lib.mkDefault (1024 * 1024 * 1024);
    max-free = lib.mkDefault (10 * 1024 * 1024 * 1024);
  }};
  systemd.services.nix-daemon.serviceConfig = {{
    MemoryAccounting = lib.mkDefault true;
    MemoryMax = lib.mkDefault "90%";
    OOMScoreAdjust = lib.mkDefault 500;
  }};

  services.openssh.enable = true;
  services.openssh.extraConfig = {indented(sshd_lines(setup), "    ")};
}}
"""


def builder_files(setup: BuilderSetup) -> list[tuple[str, str]]:
    """(file name, text) of what ``setup builder`` prints or writes, in that order."""
    return [(MODULE_FILE, nixos_module(setup)), (SCRIPT_FILE, shell_script(setup))]
