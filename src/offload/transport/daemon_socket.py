"""The builder's Nix could not reach its nix-daemon, as Nix said it, and the fix.

A builder user who is not root stores through the nix-daemon, over its socket. When that user
may not reach the socket (Debian's nix-bin keeps ``/nix/var/nix/daemon-socket`` 0770 root,
group ``nix-users``: a user outside that group), every Nix program there stops before a word
of its protocol, and ssh passes its last words on (Nix 2.8, then later releases)::

    error: getting status of /nix/var/nix/daemon-socket/socket: Permission denied
    error: getting status of '/nix/var/nix/daemon-socket/socket': Permission denied
    error: cannot connect to socket at '/nix/var/nix/daemon-socket/socket': Permission denied

(the first when Nix chooses its store itself, the last when ``NIX_REMOTE=daemon``). Those are
the remote program's "Permission denied", not ssh's refusal of the key
(``ssh_keys.refused_by_ssh``): sshd accepted the key. A daemon that is not running says
"Connection refused" or "No such file or directory" on the same line.

``daemon_trouble`` finds those words in an error (whole, or lines joined with `` | `` as a
link's error keeps them); ``DaemonTrouble.fix`` says what to do for the builder's user.
Pure: nothing is read here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from offload.transport.ssh_keys import refused_by_ssh

__all__ = ["DaemonTrouble", "daemon_trouble"]

# The socket Nix stats while choosing its store (only the daemon's socket ends so), then the
# one it connects to; the reason is strerror's words.
_STAT = re.compile(r"getting status of '?(/[^'\s|]*/socket)'?: ([^.;|\r\n]+)")
_CONNECT = re.compile(r"cannot connect to socket at '([^']+)': ([^.;|\r\n]+)")
_NOT_RUNNING = ("Connection refused", "No such file or directory")


@dataclass(frozen=True)
class DaemonTrouble:
    """The builder's Nix could not use the daemon's socket ``path``, for ``reason``; ``said``
    is Nix's line."""

    path: str
    reason: str
    said: str

    @property
    def detail(self) -> str:
        return f"the builder's Nix cannot reach its daemon: {self.said}"

    def fix(self, user: str | None) -> str:
        """What to do on the builder; ``user`` is the one ssh logs in as (None: not known)."""
        who = user or "the ssh user"
        if self.reason == "Permission denied":
            folder = PurePosixPath(self.path).parent
            return (
                f"let {who} reach the builder's nix-daemon: add it to the group that owns "
                f"{folder} (`ls -ld {folder}` there; Debian's nix-bin: "
                f"`adduser {user or 'USER'} nix-users`)"
            )
        if self.reason in _NOT_RUNNING:
            return "start the builder's nix-daemon (systemd: `systemctl enable --now nix-daemon`)"
        return f"check that the builder's nix-daemon runs and that {who} may use {self.path}"


def daemon_trouble(text: str) -> DaemonTrouble | None:
    """Nix's words in ``text`` for a daemon socket it could not use, if any; none where ssh
    itself refused the key (``ssh_keys.refused_by_ssh``): then no remote program ran."""
    if refused_by_ssh(text):
        return None
    for pattern in (_STAT, _CONNECT):
        match = pattern.search(text)
        if match is not None:
            reason = match[2].strip()
            said = text[match.start() : match.start(2)] + reason
            return DaemonTrouble(match[1], reason, f"error: {said}")
    return None
