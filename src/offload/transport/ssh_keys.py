"""A key file ssh could not use, as ssh said it, and what to fix where the user names the key.

ssh reads the private keys it is given (``-i``: column 3 of a machines line, else its URI's
``ssh-key=``; ``IdentityFile`` in an ssh config) as it authenticates, and one it cannot use is
no error to it: it says so on stderr and goes on with the keys it has. A login that then fails
ends with the builder's "Permission denied (publickey)", which reads as a key the builder
refused, while the true cause is in ssh's earlier lines (OpenSSH 9)::

    Warning: Identity file /k not accessible: No such file or directory.   (-i, missing)
    Load key "/k": Permission denied              (there, but this user may not read it)
    Load key "/k": error in libcrypto             (not a private key: a .pub, say)
    Load key "/k": bad permissions                (others may read it: ssh ignores it)

``key_trouble`` finds those words in ssh's stderr (whole, or lines joined with `` | `` as a
link's error keeps them); ``key_fix`` says what is wrong and the fix, naming the place the
key comes from (``key_place``: the machines file and line). Pure: nothing is read here.

"Permission denied" alone is no refusal of the key: the program the builder runs for it may
say it too (its Nix that cannot reach the daemon's socket: ``transport.daemon_socket``). ssh's
own refusal names the methods it tried, ``user@host: Permission denied (publickey).``, and
``refused_by_ssh`` looks for that.

A key with a passphrase is no error to ssh either: without a terminal (the nix-daemon's ssh,
``BatchMode``) it skips the key without a word, and the builder's refusal is all it says.
``has_passphrase`` reads the key file to tell (a private key file, 64 KiB at most): OpenSSH's
own format names its cipher (``none`` without a passphrase), PEM says ``ENCRYPTED``. A key file
others may read is skipped by ssh as quietly when another key gets in
(``config.machines.check.key_too_open`` looks at its mode, as ``offload machines`` says it).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from offload.config.machines.check import (
    expanded,
    key_missing,
    key_too_open,
    names_public_key,
)

if TYPE_CHECKING:
    from offload.config.machines import Machine

__all__ = [
    "KeyTrouble",
    "encrypted_key",
    "has_passphrase",
    "key_fix",
    "key_note",
    "key_place",
    "key_trouble",
    "missing_key_note",
    "open_key_note",
    "passphrase_fix",
    "refused_by_ssh",
]

# Each ends at its line's end, or at the " | " a link's error joins ssh's lines with.
_NOT_ACCESSIBLE = re.compile(
    r"Identity file (.+?) not accessible: ([^|\r\n]+?)\.?\s*(?:\||$)", re.MULTILINE
)
_LOAD_KEY = re.compile(r'Load key "([^"]+)": ([^|\r\n]+?)\s*(?:\||$)', re.MULTILINE)
# ssh's own words when the builder took none of its keys: the methods tried, in parentheses.
_REFUSED = re.compile(r"Permission denied \([a-z-]+(?:,[a-z-]+)*\)")
_OPENSSH = re.compile(r"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END", re.DOTALL)
_OPENSSH_MAGIC = b"openssh-key-v1\0"
_KEY_FILE_LIMIT = 64 << 10
_CONFIG_PLACE = "the IdentityFile of your ssh config (~/.ssh/config, or NIX_SSHOPTS' -F file)"


@dataclass(frozen=True)
class KeyTrouble:
    """ssh could not use the key file ``path``, for ``reason`` (ssh's words)."""

    path: str
    reason: str

    @property
    def missing(self) -> bool:
        return self.reason == "No such file or directory"

    def said(self) -> str:
        """What is wrong with the file, after its name."""
        if self.missing:
            return "does not exist"
        if self.reason == "Permission denied":
            return "cannot be read by this user (Permission denied)"
        if names_public_key(self.path):  # too open, or not loadable: the wrong file named
            return "is a public key (a .pub), not the private key ssh needs"
        if self.reason == "bad permissions":
            return "is readable by others, so ssh ignores it"
        return f"is not a private key ssh can load ({self.reason})"


def key_trouble(stderr: str) -> KeyTrouble | None:
    """The first key file ssh said it could not use, if any."""
    found = [
        (match.start(), KeyTrouble(match[1], match[2].strip()))
        for pattern in (_NOT_ACCESSIBLE, _LOAD_KEY)
        for match in pattern.finditer(stderr)
    ]
    return min(found, key=lambda item: item[0])[1] if found else None


def refused_by_ssh(text: str) -> bool:
    """Did ssh itself say the builder refused every key (not a remote program's words)?"""
    return _REFUSED.search(text) is not None


def key_place(machine: Machine) -> str:
    """Where the user names ``machine``'s key: its line's column 3 (its URI's ``ssh-key=``
    gives it too when the column is ``-``), or ``ssh-key`` in the offload.toml table that
    defined the machine or set its key over its line."""
    table = machine.toml_table("ssh_key")
    place = f"column 3 of {machine.source}" if table is None else f"ssh-key of {table}"
    if machine.ssh_key is not None and machine.params.get("ssh-key") == machine.ssh_key:
        return f"{place} (or its URI's ssh-key= parameter)"
    return place


def key_fix(trouble: KeyTrouble, key: str | None, place: str) -> tuple[str, str]:
    """(what is wrong, the fix) for ``trouble``; ``key`` is the machines line's key (None: the
    ssh config's), which the user names at ``place``."""
    ours = key is not None and trouble.path in {key, expanded(key)}
    where = place if ours else _CONFIG_PLACE
    what = f"ssh key file {trouble.path} {trouble.said()}"
    if trouble.missing:
        return what, f"name an existing private key file in {where}"
    if trouble.reason == "Permission denied":
        return what, f"let the user that runs ssh read it, or name another key in {where}"
    if trouble.reason == "bad permissions" and not names_public_key(trouble.path):
        return what, f"chmod 600 {trouble.path}"
    return what, f"name the private key (not its .pub) in {where}"


def key_note(machine: Machine) -> str | None:
    """What is said of ``machine`` once ssh logged in there: the key file its line names
    does not exist, or ssh ignored it as too open (either way ssh went on with another key,
    without a word); None when the file is as ssh wants it, or none is named."""
    key = machine.ssh_key
    if not key:
        return None
    if key_missing(machine):
        return missing_key_note(key, key_place(machine))
    if machine.is_ssh and key_too_open(key):
        return open_key_note(key, key_place(machine))
    return None


def missing_key_note(key: str, place: str) -> str:
    """What is said of the key file ``key``, named at ``place``, that does not exist when ssh
    logged in all the same: with another key, which may not be the one meant."""
    what, fix = key_fix(KeyTrouble(key, "No such file or directory"), key, place)
    return (
        f"{what}, so ssh logged in with another key (your ssh config's IdentityFile, an ssh"
        f" agent's or its default); {fix}"
    )


def open_key_note(key: str, place: str) -> str:
    """What is said of the key file ``key``, named at ``place``, that ssh ignored as too open
    (``config.machines.check.key_too_open``) when ssh logged in all the same, with another key."""
    what, fix = key_fix(KeyTrouble(key, "bad permissions"), key, place)
    return (
        f"{what}: ssh logged in with another key (your ssh config's IdentityFile, an ssh"
        f" agent's or its default); {fix}"
    )


def encrypted_key(text: bytes) -> bool:
    """Is ``text``, a private key file's, encrypted (the key has a passphrase)?"""
    found = _OPENSSH.search(text.decode("ascii", errors="replace"))
    if found is None:
        return b"-----BEGIN " in text and b"ENCRYPTED" in text  # PEM: Proc-Type or PKCS#8
    try:
        raw = base64.b64decode("".join(found[1].split()))
    except (binascii.Error, ValueError):
        return False
    if not raw.startswith(_OPENSSH_MAGIC):
        return False
    at = len(_OPENSSH_MAGIC)
    size = int.from_bytes(raw[at : at + 4], "big")
    cipher = raw[at + 4 : at + 4 + size]
    return len(cipher) == size > 0 and cipher != b"none"


def has_passphrase(path: str | None) -> bool:
    """Does the private key file at ``path`` have a passphrase? False when it is no regular
    file or cannot be read (``key_trouble`` says why ssh could not use it then)."""
    if not path:
        return False
    try:
        # Opened without blocking and checked on the descriptor: a FIFO (even one swapped in
        # after a check of the name) would block the read, and the event loop with it.
        fd = os.open(expanded(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and encrypted_key(os.read(fd, _KEY_FILE_LIMIT))
    except OSError:
        return False
    finally:
        os.close(fd)


def passphrase_fix(key: str, place: str | None) -> tuple[str, str]:
    """(what is wrong, the fix) for the key file ``key`` with a passphrase, named at ``place``
    (``key_place``; None: the ssh config's IdentityFile)."""
    place = place or _CONFIG_PLACE
    what = (
        f"ssh key {key} has a passphrase: the nix-daemon cannot type it (ssh runs without a "
        "terminal for builds)"
    )
    fix = (
        f"use a key without one: `offload setup key` makes one (authorize its .pub on the "
        f"builder and name it in {place}); or remove this one's: `ssh-keygen -p -f {key}`"
    )
    return what, fix
