"""Where ssh masters that outlive their process live, and whether one is there to use.

A master started with ``ControlPersist`` stays in the background after the process that started
it ends, until it has been idle ``PERSIST_SECONDS``; every later ssh to that builder, from
``offload-hook`` processes and ``offload build`` runs alike, multiplexes over it instead of
paying the handshake again (on a LAN most of a run's start-up, key exchange being CPU work on
both ends; over a WAN several round trips more).

Each builder's master has one socket in ``<state>/ssh`` (mode 0700), named by a hash of
everything that makes a connection different (destination, port, key, pinned host key,
compression, NIX_SSHOPTS), so a changed host key or user never reuses a master opened for
another; its pinned known_hosts file sits beside it. A socket path longer than a Unix socket
allows moves the directory to ``/tmp/offload-ssh-<uid>``, made 0700 and checked to be ours.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
from pathlib import Path

from offload.errors import TransportError
from offload.state_location import private_dir
from offload.transport.ssh import SshTarget, known_hosts_line, split_sshopts

__all__ = ["PERSIST_SECONDS", "SharedPaths", "control_dir", "kept", "master_alive"]

PERSIST_SECONDS = 120
# sun_path is 108 bytes on Linux; ssh appends a random suffix while it binds.
_MAX_SOCKET = 90


def _private(path: Path) -> Path:
    try:
        return Path(private_dir(str(path)))
    except OSError as exc:
        raise TransportError(f"{path}: {exc}", hint="remove it") from exc


def _location(state: Path) -> Path:
    preferred = state / "ssh"
    if len(str(preferred)) + 18 <= _MAX_SOCKET:
        return preferred
    return Path(tempfile.gettempdir()) / f"offload-ssh-{os.getuid()}"


def control_dir(state: Path) -> Path:
    """Where the persistent masters' sockets go: ``<state>/ssh``, or a short fallback; made
    (0700, checked to be ours) if it is not there."""
    return _private(_location(state))


class SharedPaths:
    """One builder's master socket and pinned known_hosts file (None: no key pinned) in a
    control directory."""

    def __init__(self, directory: Path, target: SshTarget, sshopts: str) -> None:
        parts = (target.destination, target.port, target.identity_file, target.public_host_key)
        # NIX_SSHOPTS as ssh gets it: spacing alone makes no other connection.
        text = repr((*parts, target.compress, split_sshopts(sshopts)))
        key = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.target = target
        self.control = directory / key
        self.known_hosts = directory / f"{key}.known_hosts" if target.public_host_key else None

    def pin(self) -> None:
        """Write the known_hosts file, unless it says the same already (atomically: a session
        of another process may be reading it)."""
        if self.known_hosts is None:
            return
        line = known_hosts_line(self.target)
        with contextlib.suppress(OSError):
            if self.known_hosts.read_text() == line:
                return
        fd, tmp = tempfile.mkstemp(dir=self.known_hosts.parent, prefix=".known_hosts-")
        with os.fdopen(fd, "w") as out:
            out.write(line)
        Path(tmp).replace(self.known_hosts)


def master_alive(control: Path) -> bool:
    """A master listens on ``control``: a socket there that accepts a connection. One that
    refuses is what a killed master leaves behind (ssh links the socket in only once it
    listens, so a live one never refuses)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(control))
        except OSError:
            return False
    return True


def kept(state: Path, target: SshTarget, sshopts: str) -> bool:
    """Whether a master to ``target`` kept for ``state`` answers now (nothing is made)."""
    return master_alive(SharedPaths(_location(state), target, sshopts).control)
