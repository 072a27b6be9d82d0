"""Host keys (column 8 of a machines entry): base64, and the ssh public key line it may hold.

Nix checks only that the column is base64 by its own rule (``base64::decode``: characters up to
the first ``=`` must be of the base64 alphabet; what follows ``=`` and leftover bits are
ignored), so ``nix_base64_decode`` is that rule exactly and a column failing it is an error, as in
Nix. What the bytes are is a second question: Nix writes them into a ``known_hosts`` file
whatever they are, and ssh then refuses a host whose pinned "key" is not one. ``decode_host_key``
asks it: the ``type key [comment]`` line, or ``ValueError`` saying why not.
"""

from __future__ import annotations

import base64
import binascii
import re
import string

from offload.config.machines.model import BLANKS

__all__ = ["decode_host_key", "encode_host_key", "nix_base64_decode"]

_KEY_TYPE_RE = re.compile(r"(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)")
_ALPHABET = {
    c: i for i, c in enumerate(string.ascii_uppercase + string.ascii_lowercase + "0123456789+/")
}


def nix_base64_decode(text: str) -> bytes:
    """Nix's base64 decoding; ``ValueError`` names the first character it refuses."""
    out = bytearray()
    bits = value = 0
    for char in text:
        if char == "=":
            break
        if char == "\n":
            continue
        digit = _ALPHABET.get(char)
        if digit is None:
            raise ValueError(f"invalid character in Base64 string: {char!a}")
        value = (value << 6 | digit) & 0xFFFFFF
        bits += 6
        if bits >= 8:
            bits -= 8
            out.append(value >> bits & 0xFF)
    return bytes(out)


def decode_host_key(text: str) -> str:
    """Column 8 as its ``type base64key [comment]`` line; ``ValueError`` says why not. Of
    several keys (``cat *.pub | base64``), the first: Nix writes the decoded text after the host
    name as its known_hosts file, where the first line alone names the host."""
    raw = nix_base64_decode(text)
    try:
        lines = [line.strip(BLANKS) for line in raw.decode().strip(BLANKS).splitlines()]
    except UnicodeDecodeError:
        raise ValueError("decodes to bytes that are not text, not an ssh public key") from None
    line = lines[0] if lines else ""
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
    if any(ord(c) < 32 or ord(c) == 127 for c in line):
        raise ValueError("decodes to a line with control characters")
    return line


def encode_host_key(line: str) -> str:
    return base64.b64encode(line.encode()).decode()
