"""A local fleet of loopback Nix builders for tests and demos (Linux, root).

Each member is an sshd on 127.0.0.1 in its own mount namespace with its own ``/nix`` and
``/etc/nix``; stock Nix reaches it through the fleet's machines file and
``NIX_SSHOPTS="-F <dir>/ssh_config"``.
"""

from __future__ import annotations

from offload.fleet.manager import (
    Fleet,
    Member,
    MemberStatus,
    fleet_down,
    fleet_status,
    fleet_up,
    open_fleet,
)
from offload.fleet.spec import DEFAULT_SPECS, MemberSpec, client_argv, default_fleet_dir

__all__ = [
    "DEFAULT_SPECS",
    "Fleet",
    "Member",
    "MemberSpec",
    "MemberStatus",
    "client_argv",
    "default_fleet_dir",
    "fleet_down",
    "fleet_status",
    "fleet_up",
    "open_fleet",
]
