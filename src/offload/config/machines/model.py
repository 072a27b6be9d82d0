"""One builder as Nix's machines format describes it (``Machine``), and the format's columns.

An entry is up to eight whitespace-separated columns; ``-`` or a missing column means the
default::

    URI  systems  ssh-key  maxJobs  speedFactor  supportedFeatures  mandatoryFeatures  hostKey
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "BLANKS",
    "COLUMNS",
    "SSH_SCHEMES",
    "UINT_RE",
    "Machine",
    "Origin",
    "nix_words",
    "shell_char",
    "shown",
    "ssh_name_problem",
]

# What defined a machine: a line of Nix's machines spec (a file, the builders setting,
# --builders; NixOS's nix.buildMachines, which are such lines), or an offload.toml
# ``[[machine]]`` whose uri matched no line. A table that adds to a line leaves it "machines".
Origin = Literal["machines", "toml"]

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
_BLANK_RUNS = re.compile(f"[{BLANKS}]+")
SSH_SCHEMES = ("ssh", "ssh-ng")
_CACHES = ("http", "https", "s3", "file")
_IN_PROCESS = ("local", "daemon", "auto", "path", "unix")
# boost::lexical_cast<unsigned int>, which Nix uses, takes a leading '+' (and Nix refuses '-').
UINT_RE = re.compile(r"\+?[0-9]+")


def nix_words(text: str) -> list[str]:
    """``text``'s words as Nix's ``tokenizeString`` splits them: on its blanks alone."""
    return [word for word in _BLANK_RUNS.split(text) if word]


# What OpenSSH (9.6 on, and Debian's 9.2 since) refuses in a host or user name on its command
# line: a shell's metacharacters, since they reach a shell through a ProxyCommand's %h and %r.
_SHELL_CHARS = frozenset("'`\"$\\;&<>|(){}")


def shell_char(name: str) -> str | None:
    """The first character of host or user ``name`` that a shell would act on, shown."""
    for char in name:
        if char in _SHELL_CHARS:
            return shown(char)
    return None


def ssh_name_problem(name: str) -> str | None:
    """What makes host or user ``name`` one ssh must not be given (None: nothing), said to
    follow "its host name": ssh reads a leading '-' as an option, and a shell acts on the
    characters of ``shell_char``."""
    if not name:
        return "is empty"
    if name.startswith("-"):
        return "starts with '-', which ssh reads as an option"
    if any(char.isspace() for char in name):
        return "holds white space"
    if (char := shell_char(name)) is not None:
        return f"holds '{char}', which a shell acts on"
    return None


def shown(text: str, limit: int = 60) -> str:
    """``text`` safe to print on a terminal: control characters and bytes that were not UTF-8
    (surrogate escapes) written as ``\\xNN``, and cut to ``limit`` characters."""
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif not char.isprintable() or 0xD800 <= code <= 0xDFFF:
            out.append(ascii(char)[1:-1])
        else:
            out.append(char)
    result = "".join(out)
    return result if len(result) <= limit else result[: limit - 3] + "..."


@dataclass(frozen=True)
class Machine:
    """One builder as Nix sees it, plus the names offload gives it.

    ``uri`` is the store URI Nix would open (``ssh://`` prepended to a bare host), query and all:
    build-remote names its slot lock files after it. ``ssh_key`` and ``public_host_key`` are the
    effective values: the machines-file column when set, else the URI's ``ssh-key`` /
    ``base64-ssh-public-host-key`` parameter, as Nix gives the column precedence.
    ``host_key_base64`` is the effective base64 as written; ``public_host_key`` is the ssh key
    line it decodes to, ``None`` when it decodes to none (then nothing connects: see
    ``pins_junk``).
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
    host_key_base64: str | None = None
    origin: Origin = "machines"
    # The Nix columns (as fields: ``max_jobs``) an offload.toml table set over the line's own
    # value, and where that table is: what the user edits to change it is there, not the line.
    set_in: Mapping[str, str] = field(default_factory=dict, hash=False)
    # Why its store URI reaches no host ('ssh://fast/path'): Nix before 2.23 takes the line and
    # fails to connect when it builds; offload leaves the machine out (``not_connected``).
    uri_problem: str | None = None

    def toml_table(self, column: str) -> str | None:
        """The offload.toml ``[[machine]]`` table where ``column`` (a field: ``max_jobs``,
        ``ssh_key``) is set for this machine, or None when its machines line sets it."""
        # A later table over this machine (one an earlier table defined, too) is the last word.
        return self.set_in.get(column) or (self.source if self.origin == "toml" else None)

    @property
    def connection_id(self) -> str:
        """What reaching it depends on in its line, as one short digest: the store URI (host,
        port, user, parameters), the ssh key and the pinned host key. A backoff remembers it
        (``offload.backoff``): one for a line mended since is no longer in force."""
        text = "\0".join((self.uri, self.ssh_key or "", self.host_key_base64 or ""))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def pins_junk(self) -> bool:
        """Column 8 is base64 Nix takes but not of an ssh key: Nix pins it, ssh refuses the host,
        and offload never connects to it (it would not fall back to looser checking)."""
        return self.host_key_base64 is not None and self.public_host_key is None

    @property
    def not_connected(self) -> str | None:
        """Why offload never connects to this machine though Nix takes its line (None: it
        does): a pinned "key" ssh cannot use, a NUL byte, or a host or user name ssh must not
        be given (``ssh_name_problem``: one ssh would read as an option, or a shell act on;
        ssh 9.6 refuses the latter, an older one hands it to a ProxyCommand's shell)."""
        if self.uri_problem is not None:
            return f"its store URI is unusable: {self.uri_problem}"
        if self.scheme_problem is not None:
            return self.scheme_problem
        if self.pins_junk:
            return "its host key is base64 of no ssh key"
        decoded = "".join(self.params.values())  # %00 in remote-store, remote-program...
        if "\0" in self.uri + (self.ssh_key or "") + decoded:
            # No program can be given it, nor a file be named by it (slot locks are named
            # after the URI): every process start or open() with it fails.
            return (
                "its URI, a parameter of it or its ssh key holds a NUL byte, which no program "
                "or file name can hold"
            )
        for what, name in (("host", self.host), ("user", self.user)):
            if name is not None and (problem := ssh_name_problem(name)) is not None:
                return f"its {what} name {problem}"
        return None

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

    @property
    def is_store_here(self) -> bool:
        """A store on this host named as a builder (``local``, ``daemon``): Nix builds there, as
        a user may have it do to keep building here beside builders (nix-protocols 5.3)."""
        return self.scheme in _IN_PROCESS

    @property
    def scheme_problem(self) -> str | None:
        """Why this is no builder offload can use (not ssh:// or ssh-ng://); None if it is. Nix
        builds in a store on this host named as a builder (``local``, ``daemon``): offload's
        local machine is that, without a line; a cache fails every build sent to it."""
        if self.is_ssh:
            return None
        uri = shown(self.uri)
        if self.scheme in _CACHES:
            return f"'{uri}' is a binary cache, not a builder: no build can run there"
        if self.is_store_here:
            return (
                f"'{uri}' is a store on this host: offload builds here as the local machine"
                " (-j), and over ssh:// and ssh-ng:// only as a builder"
            )
        lower = " (store types are lower-case)" if self.scheme.lower() in SSH_SCHEMES else ""
        return f"'{uri}': Nix knows no store type '{shown(self.scheme)}'{lower}"
