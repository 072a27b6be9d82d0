"""A pinned host key ssh never looks at: the ssh config gives the builder another name.

Nix and offload pin a machines line's host key (column 8) under the line's host (``b1``; with
a port, offload as ``[b1]:2222``, ``ssh.known_hosts_line``, where Nix 2.31 on, the first to take
a port, writes ``b1`` and passes ``-p``, so that ssh finds no pin for it), in a known_hosts
file of their own. ssh
looks a key up under the name it connects to, which is the ssh config's ``HostName`` and
``Port`` for that host unless its ``HostKeyAlias`` says otherwise. An alias such as ``Host b1``
/ ``HostName 10.0.0.5`` without ``HostKeyAlias b1`` makes ssh look for ``10.0.0.5`` in the pin
file, find nothing, and refuse the host: "No ED25519 host key is known for 10.0.0.5 and you
have requested strict checking. Host key verification failed." Whatever key the line pins,
even the right one. That is no changed host key (no man-in-the-middle to suspect, no new key
to pin), and the fix is in the ssh config: ``HostKeyAlias b1``, as ``offload setup client``
writes its aliases. Pure: read from ssh's words.
"""

from __future__ import annotations

import re

__all__ = ["alias_fix", "looked_up_elsewhere", "pinned_name"]

# ssh's words when none of the known_hosts files holds a key for the name it looked up.
_NOT_KNOWN = re.compile(r"No \S+ host key is known for (\S+) and you have requested strict")


def pinned_name(host: str, port: int | None) -> str:
    """The name a pin for ``host`` (and ``port``) is written under, as ssh spells names."""
    return f"[{host}]:{port}" if port and port != 22 else host


def looked_up_elsewhere(error: str, host: str | None, port: int | None) -> str | None:
    """The name ssh looked a pinned key up under, from its ``error``, when it is not the one
    the pin for ``host`` is written under; None when it is (or ssh said no such thing)."""
    found = _NOT_KNOWN.search(error)
    if found is None or host is None or found[1] == pinned_name(host, port):
        return None
    return found[1]


def alias_fix(host: str, looked_up: str) -> tuple[str, str]:
    """(what is wrong, the fix) for a pin of ``host``'s that ssh looked up as ``looked_up``."""
    what = (
        f"ssh never looks at the host key the machines line pins: your ssh config gives {host} "
        f"another HostName or Port, so ssh looks its key up as {looked_up}, while Nix and "
        f"offload pin it as {host}"
    )
    fix = (
        f"add `HostKeyAlias {host}` to the `Host {host}` entry of your ssh config (as "
        "`offload setup client` writes it)"
    )
    return what, fix
