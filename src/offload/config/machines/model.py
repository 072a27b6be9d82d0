"""One builder as Nix's machines format describes it (``Machine``), and the format's columns.

An entry is up to eight whitespace-separated columns; ``-`` or a missing column means the
default::

    URI  systems  ssh-key  maxJobs  speedFactor  supportedFeatures  mandatoryFeatures  hostKey
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

__all__ = ["BLANKS", "COLUMNS", "SSH_SCHEMES", "UINT_RE", "Machine"]

COLUMNS = (
    "storeUri",
    "systems",
    "sshKey",
    "maxJobs",
    "speedFactor",
    "supportedFeatures",
    "mandatoryFeatures",
    "publicHostKey",
)

# Nix's trim() and tokenizeString() default separators: exactly these, not Python's isspace().
BLANKS = " \t\n\r"
SSH_SCHEMES = ("ssh", "ssh-ng")
UINT_RE = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Machine:
    """One builder as Nix sees it, plus the names offload gives it.

    ``uri`` is the store URI Nix would open (``ssh://`` prepended to a bare host), query and all:
    build-remote names its slot lock files after it. ``ssh_key`` and ``public_host_key`` are the
    effective values: the machines-file column when set, else the URI's ``ssh-key`` /
    ``base64-ssh-public-host-key`` parameter, as Nix gives the column precedence.
    """

    uri: str
    scheme: str
    host: str | None
    user: str | None
    port: int | None
    systems: tuple[str, ...]
    ssh_key: str | None
    max_jobs: int
    speed_factor: float
    supported_features: frozenset[str]
    mandatory_features: frozenset[str]
    public_host_key: str | None
    params: Mapping[str, str] = field(hash=False)
    source: str
    name: str
    tags: frozenset[str] = frozenset()
    enabled: bool = True

    def ssh_destination(self) -> str:
        host = self.host or self.uri
        return f"{self.user}@{host}" if self.user else host

    def supports(self, system: str, required_features: Collection[str]) -> bool:
        """Nix's rule (build-remote.cc): system, all features offered, mandatory ones asked."""
        if system != "builtin" and system not in self.systems:
            return False
        offered = self.supported_features | self.mandatory_features
        required = set(required_features)
        return required <= offered and self.mandatory_features <= required

    @property
    def is_ssh(self) -> bool:
        return self.scheme in SSH_SCHEMES
