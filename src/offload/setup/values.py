"""What a user gives ``offload setup``, checked before any of it is written into a file.

User names, host names, ssh aliases and paths end up in Nix files, ssh_config, authorized_keys,
machines lines and shell commands, each with its own quoting. Rather than trust every renderer to
quote right, values that can only be names are held to what names are: a user name as
``useradd`` takes it, a host name (RFC 1123 labels), an IPv4 or IPv6 address, a path without
blanks or shell and ssh_config metacharacters. Public keys are parsed: ``type base64 [comment]``
with the blob's own type matching the named one, and the SHA-256 fingerprint is computed the way
``ssh-keygen -l`` prints it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from offload.errors import ConfigError
from offload.names import LOCAL
from offload.numerals import is_decimal

__all__ = [
    "PublicKey",
    "Target",
    "check_alias",
    "check_host",
    "check_path",
    "check_user",
    "parse_public_key",
    "parse_target",
    "parse_targets",
]

_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PATH = re.compile(r"/[A-Za-z0-9._/+@:-]*")
_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
_COMMENT = re.compile(r"[^\x00-\x1f\x7f]*")


def check_user(name: str) -> str:
    if not _USER.fullmatch(name):
        raise ConfigError(
            f"invalid user name {name!r}",
            hint="a user name is a lowercase letter or '_', then up to 31 of a-z, 0-9, '_', '-'",
        )
    return name


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_host(host: str) -> str:
    """A host name of RFC 1123 labels, or an IP address (IPv6 without brackets)."""
    if "%" in host:
        # Python takes any scope after an IPv6 address's '%' (newlines too), and ssh_config
        # reads '%' as the start of one of its own tokens (%h, %p): no such builder works.
        raise ConfigError(
            f"invalid host {host!r}: an IPv6 scope (%eth0) cannot be written in ssh_config",
            hint="give the builder a host name or an address without a scope",
        )
    labels = host.rstrip(".").split(".")
    if _is_address(host) or (len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)):
        return host
    raise ConfigError(
        f"invalid host {host!r}",
        hint="give a host name (letters, digits, '-' and '.') or an IP address",
    )


def check_alias(name: str) -> str:
    """An ssh ``Host`` alias: a host name that is not an address (ssh would connect to it),
    nor the local machine's name (``--on``, tables and backoff would take the two for one)."""
    if name == LOCAL:
        raise ConfigError(
            "invalid builder name 'local': it is the local machine's",
            hint="give the builder another name, e.g. builder1=HOST",
        )
    if _is_address(name) or ":" in name:
        raise ConfigError(
            f"invalid builder name {name!r}: it is an address",
            hint="a builder name is the ssh alias it gets, e.g. builder1=192.0.2.7",
        )
    try:
        return check_host(name)
    except ConfigError:
        raise ConfigError(
            f"invalid builder name {name!r}",
            hint="a builder name is the ssh alias it gets: letters, digits, '-' and '.', "
            "e.g. builder1=192.0.2.7",
        ) from None


def check_path(path: str, what: str) -> str:
    if not _PATH.fullmatch(path) or "/../" in f"{path}/":
        raise ConfigError(
            f"invalid {what} {path!r}",
            hint="give an absolute path of letters, digits and . _ / + @ : - only",
        )
    return path


@dataclass(frozen=True)
class Target:
    """A builder to set a client up for: its ssh alias, the host and port ssh connects to."""

    name: str
    host: str
    port: int


def parse_target(text: str) -> Target:
    """``[NAME=]HOST[:PORT]``; IPv6 as ``[ADDR]`` or ``[ADDR]:PORT``."""
    name, eq, rest = text.rpartition("=")
    where = rest
    port = 22
    if where.startswith("["):
        address, bracket, tail = where[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ConfigError(f"invalid builder {text!r}", hint="write [ADDR] or [ADDR]:PORT")
        host, port_text = address, tail[1:] if tail else ""
    elif where.count(":") == 1:
        host, _, port_text = where.partition(":")
    else:
        host, port_text = where, ""
    if port_text:
        if not is_decimal(port_text) or not 0 < int(port_text) < 65536:
            raise ConfigError(f"invalid port in {text!r}", hint="a port is 1 to 65535")
        port = int(port_text)
    check_host(host)
    if eq:
        return Target(check_alias(name), host, port)
    # Without a name, the alias is the host itself; an address on another port needs one
    # that says the port, since two builders may share an address (containers, tunnels). An
    # IPv6 address cannot be a machines-line host in Nix 2.8: it must be named.
    if ":" in host:
        raise ConfigError(
            f"an IPv6 builder needs a name: {text!r}", hint="write NAME=[ADDR] or NAME=[ADDR]:PORT"
        )
    if port != 22 and _is_address(host):
        return Target(f"{host}-{port}", host, port)
    return Target(host, host, port)


def parse_targets(texts: Sequence[str]) -> list[Target]:
    """Each ``[NAME=]HOST[:PORT]`` with an ssh alias of its own: a host name given unnamed on
    two ports (two containers or VMs on one server) is ``HOST-PORT`` on each port other than
    22, as an address is; two that would still share an alias are refused, both named."""
    targets = [parse_target(text) for text in texts]
    count = Counter(t.name for t in targets)
    targets = [
        Target(f"{t.host}-{t.port}", t.host, t.port)
        if count[t.name] > 1 and t.name == t.host and t.port != 22
        else t
        for t in targets
    ]
    first: dict[str, str] = {}
    for text, target in zip(texts, targets, strict=True):
        if target.name in first:
            raise ConfigError(
                f"builders {first[target.name]!r} and {text!r} both get the ssh alias "
                f"{target.name!r}",
                hint="name one: NAME=HOST:PORT (NAME is the alias)",
            )
        first[target.name] = text
    return targets


@dataclass(frozen=True)
class PublicKey:
    kind: str
    data: str
    comment: str

    @property
    def line(self) -> str:
        """``type base64 [comment]``."""
        return f"{self.kind} {self.data} {self.comment}".rstrip()

    @property
    def bare(self) -> str:
        """``type base64``, what known_hosts and host key columns hold."""
        return f"{self.kind} {self.data}"

    @property
    def fingerprint(self) -> str:
        """As ``ssh-keygen -l`` prints it: ``SHA256:`` and unpadded base64 of the blob's hash."""
        digest = hashlib.sha256(base64.b64decode(self.data)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_public_key(text: str, origin: str) -> PublicKey:
    """One OpenSSH public key line; ``origin`` names where it came from in errors."""
    lines = [line for line in text.splitlines() if line.strip()]
    hint = "give the .pub file that `offload setup key` (or ssh-keygen) wrote"
    if "PRIVATE KEY-----" in text:  # the key itself, which goes on no other host
        raise ConfigError(
            f"{origin}: a private key, not the public key line",
            hint=f"give its .pub file{f' ({origin}.pub?)' if origin.startswith('/') else ''};"
            " `ssh-keygen -y -f KEY` prints it",
        )
    if len(lines) != 1:
        raise ConfigError(f"{origin}: expected one public key line, found {len(lines)}", hint=hint)
    parts = lines[0].strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in _KEY_TYPES:
        raise ConfigError(f"{origin}: not an ssh public key line 'type key [comment]'", hint=hint)
    kind, data = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) > 2 else ""
    try:
        blob = base64.b64decode(data, validate=True)
    except binascii.Error:
        raise ConfigError(f"{origin}: the {kind} key is not valid base64", hint=hint) from None
    name = kind.encode()
    if blob[:4] != len(name).to_bytes(4, "big") or blob[4 : 4 + len(name)] != name:
        raise ConfigError(f"{origin}: the key blob is not of type {kind}", hint=hint)
    if not _COMMENT.fullmatch(comment):
        raise ConfigError(f"{origin}: the key comment holds control characters", hint=hint)
    return PublicKey(kind, data, comment)
