"""Machines-file text for tests of the parser and printer (config/machines.py): an OpenSSH host
key line and the base64 column that pins it, and parsing that keeps only the machines."""

from __future__ import annotations

import base64

from offload.config.machines import Machine, parse_machines

__all__ = ["KEY_B64", "KEY_LINE", "SYSTEM", "key_line", "one", "parse"]

SYSTEM = "x86_64-linux"


def key_line(kind: str = "ssh-ed25519", body: bytes = b"\x01" * 32, comment: str = "") -> str:
    blob = len(kind).to_bytes(4, "big") + kind.encode() + len(body).to_bytes(4, "big") + body
    line = f"{kind} {base64.b64encode(blob).decode()}"
    return f"{line} {comment}" if comment else line


KEY_LINE = key_line(comment="root@builder")
KEY_B64 = base64.b64encode((KEY_LINE + "\n").encode()).decode()


def parse(text: str, **kwargs: object) -> list[Machine]:
    machines, _ = parse_machines(text, source="machines", system=SYSTEM, **kwargs)  # type: ignore[arg-type]
    return machines


def one(text: str) -> Machine:
    machines = parse(text)
    assert len(machines) == 1
    return machines[0]
