"""Host keys (column 8 of a machines entry): base64 of an ssh public key line.

Decoding follows Nix's base64Decode (it stops at ``=``, so padding is optional) and then checks
that the line really is an ssh public key, so a wrong column is caught here rather than as a
failed ssh connection later.
"""

from __future__ import annotations

import base64
import binascii
import re

from offload.config.machines.model import BLANKS

__all__ = ["decode_host_key", "encode_host_key"]

_KEY_TYPE_RE = re.compile(r"(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)")


def decode_host_key(text: str) -> str:
    """Decode column 8 to its ``type base64key [comment]`` line; ``ValueError`` says why not."""
    # Nix's base64Decode stops at '=' and skips newlines, so padding is optional.
    data = text.split("=", 1)[0]
    if not re.fullmatch(r"[A-Za-z0-9+/]*", data):
        raise ValueError("is not valid base64")
    try:
        raw = base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
        line = raw.decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("is not valid base64 of a text line") from None
    line = line.strip(BLANKS)
    parts = line.split()
    if len(parts) < 2 or not _KEY_TYPE_RE.fullmatch(parts[0]):
        raise ValueError(
            "does not decode to an ssh public key line 'type key [comment]' "
            "(expected base64 of /etc/ssh/ssh_host_ed25519_key.pub)"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise ValueError(f"holds a {parts[0]} key that is not valid base64") from None
    kind = parts[0].encode()
    if blob[:4] != len(kind).to_bytes(4, "big") or blob[4 : 4 + len(kind)] != kind:
        raise ValueError(f"holds a key blob that is not of type {parts[0]}")
    if any(ord(c) < 32 for c in line):
        raise ValueError("decodes to a line with control characters")
    return line


def encode_host_key(line: str) -> str:
    return base64.b64encode(line.encode()).decode()
