"""Where ssh masters that outlive their process live, and whether one is there to use.

A master started with ``ControlPersist`` stays in the background after the process that started
it ends, until it has been idle ``PERSIST_SECONDS``; every later ssh to that builder, from
``offload-hook`` processes and ``offload build`` runs alike, multiplexes over it instead of
paying the handshake again (on a LAN most of a run's start-up, key exchange being CPU work on
both ends; over a WAN several round trips more).

Each builder's master has one socket in ``<state>/ssh`` (mode 0700), named by a hash of
everything that makes a connection different (destination, port, key, pinned host key,
compression, NIX_SSHOPTS, and the text of the ssh config files ssh reads: ``-F``'s, else the
user's and the system's), so a changed host key or user never reuses a master opened for
another, nor does a ssh config just mended (``Include``d files are not read); its pinned
known_hosts file sits beside it. A socket path longer than a Unix socket
allows moves the directory to ``$TMPDIR/offload-ssh-<uid>-<hash of the state directory>``
(``/tmp`` when that is too long too), made 0700 and checked to be ours. A
``%`` in the path is given to ssh as ``%%`` (``ssh.ssh_path``): ssh reads its tokens there; a
path with a blank or a quote is given in quotes, as ssh reads an option's value in words.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pwd
import socket
import stat
import tempfile
import time
from pathlib import Path

from offload.errors import TransportError
from offload.state_location import private_dir
from offload.transport.ssh import SshTarget, known_hosts_line, split_sshopts
from offload.transport.ssh_options import flag_arguments

__all__ = [
    "PERSIST_SECONDS",
    "SharedPaths",
    "config_stamp",
    "control_dir",
    "kept",
    "kept_dir",
    "listening",
    "location",
    "master_alive",
]

PERSIST_SECONDS = 120
# sun_path is 108 bytes on Linux; ssh appends a random suffix while it binds.
_MAX_SOCKET = 90


def _private(path: Path) -> Path:
    try:
        return Path(private_dir(str(path)))
    except OSError as exc:
        raise TransportError(f"{path}: {exc}", hint="remove it") from exc


def location(state: Path) -> Path:
    """Where ``control_dir`` puts the sockets for ``state`` (nothing is made)."""
    preferred = state / "ssh"
    if len(str(preferred)) + 18 <= _MAX_SOCKET:
        return preferred
    # One per state directory, as ``<state>/ssh`` is: two state directories (two fleets, two
    # setups of one user) never share a master.
    of_state = hashlib.sha256(str(state.absolute()).encode()).hexdigest()[:8]
    name = f"offload-ssh-{os.getuid()}-{of_state}"
    short = Path(tempfile.gettempdir()) / name
    if len(str(short)) + 18 <= _MAX_SOCKET:
        return short
    return Path("/tmp") / name  # noqa: S108 - a TMPDIR too long for sockets


def control_dir(state: Path) -> Path:
    """Where the persistent masters' sockets go: ``<state>/ssh``, or a short fallback; made
    (0700, checked to be ours) if it is not there; its stale pins swept once a process."""
    directory = _private(location(state))
    _sweep_pins(directory)
    return directory


# A pin file whose master is gone and that no master has pinned with for this long: one per
# line and NIX_SSHOPTS ever used, which would otherwise pile up (each new master pins again).
_STALE_PIN = 3600.0


@functools.cache
def _sweep_pins(directory: Path) -> None:
    """Remove ``directory``'s known_hosts files whose master socket is not there and that
    were last pinned with over ``_STALE_PIN`` s ago (``SharedPaths.pin`` touches one it
    finds as it should be): a master being started has pinned its file moments before."""
    cutoff = time.time() - _STALE_PIN
    with contextlib.suppress(OSError):
        for pin in directory.glob("*.known_hosts"):
            with contextlib.suppress(OSError):
                if not pin.with_suffix("").exists() and pin.stat().st_mtime < cutoff:
                    pin.unlink()


def kept_dir(state: Path) -> Path | None:
    """``control_dir``, or None where masters cannot be kept: the directory there is not a
    private one of this user's. A run then keeps a master of its own, as before."""
    try:
        return control_dir(state)
    except TransportError:
        return None


SYSTEM_CONFIG = Path("/etc/ssh/ssh_config")


def config_stamp(sshopts: list[str]) -> str:
    """A digest of the ssh config files an ssh with ``sshopts`` reads: the ``-F`` file alone
    (ssh then skips the system one), else the user's (under the home ssh takes from the
    password database, not $HOME) and the system's. A file that cannot be read counts as
    empty. A master opened before a fix there is then not the one the fixed config asks for."""
    given = list(flag_arguments(sshopts, "F"))
    if given:
        # ssh takes the last -F given; "none" reads no file at all.
        files = [] if given[-1] == "none" else [Path(given[-1])]
    else:
        try:
            home = Path(pwd.getpwuid(os.getuid()).pw_dir)
        except KeyError:  # a uid with no entry: ssh itself refuses to run
            home = Path("/nonexistent")
        files = [home / ".ssh" / "config", SYSTEM_CONFIG]
    digest = hashlib.sha256()
    for path in files:
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


class SharedPaths:
    """One builder's master socket and pinned known_hosts file (None: no key pinned) in a
    control directory."""

    def __init__(self, directory: Path, target: SshTarget, sshopts: str) -> None:
        parts = (target.destination, target.port, target.identity_file, target.public_host_key)
        # NIX_SSHOPTS as ssh gets it: spacing alone makes no other connection.
        words = split_sshopts(sshopts)
        text = repr((*parts, target.compress, words, config_stamp(words)))
        key = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.target = target
        self.control = directory / key
        self.known_hosts = directory / f"{key}.known_hosts" if target.public_host_key else None

    def pin(self) -> None:
        """Write the known_hosts file, unless it says the same already (atomically: a session
        of another process may be reading it). ``TransportError`` when it cannot be written
        (a full disk), nothing left behind."""
        if self.known_hosts is None:
            return
        line = known_hosts_line(self.target)
        with contextlib.suppress(OSError):
            if self.known_hosts.read_text() == line:
                os.utime(self.known_hosts)  # in use again: not a stale one (``sweep_pins``)
                return
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.known_hosts.parent, prefix=".known_hosts-")
            with os.fdopen(fd, "w") as out:
                out.write(line)
            Path(tmp).replace(self.known_hosts)
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise pin_error(self.target.destination, self.known_hosts, exc) from exc


def pin_error(destination: str, path: Path, exc: OSError) -> TransportError:
    """A builder's pinned host key that could not be written to ``path``."""
    return TransportError(
        f"cannot write the pinned host key of {destination} to {path}: {exc.strerror or exc}",
        hint="free space on that disk (or point OFFLOAD_STATE_DIR and TMPDIR where there is room)",
    )


def master_alive(control: Path) -> bool | None:
    """A master listens on ``control``: True when a socket there accepts a connection; False
    when there is none, or it refuses (what a killed master leaves behind: ssh links the
    socket in only once it listens, so a live one never refuses); None when it cannot be
    told (a full backlog, a timeout, no permission): then it is neither used nor removed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(control))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except OSError:
            return None
    return True


def listening() -> list[str] | None:
    """The names of this host's listening Unix sockets, from /proc/net/unix (read once for
    any number of ``kept`` questions); None where /proc cannot tell."""
    try:
        table = Path("/proc/net/unix").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    names = []
    for line in table.splitlines()[1:]:
        fields = line.split(maxsplit=7)
        # Num RefCount Protocol Flags Type St Inode Path; __SO_ACCEPTCON: listening.
        if len(fields) == 8 and int(fields[3], 16) & 0x10000:
            names.append(fields[7])
    return names


def _closed_to_others(directory: Path) -> bool:
    """Whether ``directory`` is a real directory of this user's (or root's, the nix-daemon's
    hook's) that no other user can write to or read: what ``control_dir`` makes."""
    try:
        info = directory.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode) and info.st_uid in {os.getuid(), 0} and not info.st_mode & 0o077
    )


def kept(state: Path, target: SshTarget, sshopts: str, sockets: list[str] | None) -> bool:
    """Whether a master to ``target`` kept for ``state`` listens now, among ``sockets``
    (``listening``), without connecting: a connection to a master counts as use and starts
    its idle time again (``offload status --watch`` would keep every master alive). Where
    /proc cannot tell (``sockets`` None), it connects. Nothing is made, and a directory
    another user could have put a socket in counts for none."""
    directory = location(state)
    if not _closed_to_others(directory):
        return False  # a socket there may be anyone's (the /tmp fallback made by another user)
    control = SharedPaths(directory, target, sshopts).control
    if sockets is None:
        return master_alive(control) is True
    try:
        if not control.exists():
            return False
    except OSError:  # root's directory (the nix-daemon's hook's), read by another user
        return False
    # ssh binds a temporary name beside the socket and links the socket to it: the table
    # names that one, ``<control>.<16 random characters>``.
    exact, temporary = str(control), f"{control}."
    return any(name == exact or name.startswith(temporary) for name in sockets)
