"""``offload setup key``: a dedicated ed25519 key pair for reaching builders.

The default place depends on who will use the key. Builds Nix starts go through the nix-daemon,
which runs as root and reads the key named in the machines line, so as root the key is
``/etc/nix/offload_ed25519``: next to the machines file and nix.conf it serves, the same for
every root (``/root``, ``/var/root``), and the place nix-darwin's linux-builder uses for its own
key (``/etc/nix/builder_ed25519``). For anyone else (a single-user Nix, ``offload build`` as
yourself) it is ``~/.ssh/offload_ed25519``.

ssh-keygen makes the pair in a private temporary directory next to the destination; the two
files are then hard-linked into place, which fails rather than replaces when a name is taken, so
an existing key is never overwritten and a half-made pair is never left behind.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path

from offload.errors import ConfigError
from offload.process import run

__all__ = ["DAEMON_KEY", "create_key", "default_key_path"]

DAEMON_KEY = Path("/etc/nix/offload_ed25519")
USER_KEY_NAME = "offload_ed25519"


def default_key_path(euid: int, env: Mapping[str, str]) -> Path:
    if euid == 0:
        return DAEMON_KEY
    return Path(env.get("HOME") or Path.home()) / ".ssh" / USER_KEY_NAME


def _exists_error(taken: Path, path: Path) -> ConfigError:
    """``taken`` is the private key ``path`` or its public half, which is already there."""
    public = path.with_name(path.name + ".pub")
    if taken.is_dir():
        return ConfigError(
            f"{taken} is a directory",
            hint=f"name the key file to make in it: offload setup key {taken / USER_KEY_NAME}",
        )
    if taken == public and not path.exists():
        there = f"it is the public half of a key whose private half {path} is not there: move it"
        there += " away"
    elif public.exists():
        there = f"use the key that is there (its public half is {public})"
    else:
        there = f"use the key that is there (ssh-keygen -y -f {shlex.quote(str(path))} prints "
        there += "its public half)"
    return ConfigError(
        f"{taken} already exists: not overwriting it",
        hint=f"{there}, or give another path: offload setup key PATH",
    )


# A key pair is made in a scratch directory beside its place, then linked there: one left by a
# run killed outright (SIGKILL) holds a private key nobody uses, removed by the next run.
_SCRATCH = ".offload-key-"


def _sweep_scratch(parent: Path) -> None:
    """Remove the scratch directories in ``parent`` that are this user's and whose run (the
    pid in their name, on this host: ``/proc``) is gone. Each is opened without following a
    link and emptied through that descriptor: one swapped for a link meanwhile (a directory
    others may write) is never followed. Nothing is swept where /proc cannot tell."""
    if not Path("/proc/self").is_dir():
        return
    with contextlib.suppress(OSError):
        for scratch in parent.glob(f"{_SCRATCH}*-*"):
            pid = scratch.name.removeprefix(_SCRATCH).partition("-")[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                with contextlib.suppress(OSError):
                    _remove_own(parent, scratch.name)


def _remove_own(parent: Path, name: str) -> None:
    """``parent/name`` removed with the files in it, if it is a directory of this user's."""
    above = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=above)
        try:
            if os.fstat(fd).st_uid != os.geteuid():
                return
            for entry in os.listdir(fd):  # noqa: PTH208 - by the descriptor: no link followed
                os.unlink(entry, dir_fd=fd)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=above)
    finally:
        os.close(above)


def create_key(path: Path, comment: str | None = None) -> Path:
    """Make the pair ``path`` (0600) and ``path.pub`` (0644); returns the public key's path."""
    public = path.with_name(path.name + ".pub")
    for taken in (path, public):
        if taken.exists() or taken.is_symlink():
            raise _exists_error(taken, path)
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create {parent}: {exc.strerror}",
                hint="give a path in a directory you may write (offload setup key PATH)",
            ) from None
    comment = comment or f"offload@{socket.gethostname()}"
    _sweep_scratch(parent)
    try:
        scratch = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH}{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise ConfigError(
            f"cannot write in {parent}: {exc.strerror}",
            hint="run as a user who may write there (root for /etc/nix), or give another PATH",
        ) from None
    try:
        made = scratch / "key"
        argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(made)]
        run(argv, timeout=60)
        made.chmod(0o600)
        made.with_name("key.pub").chmod(0o644)
        _link_pair(made, path, public)
    finally:
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()
    return public


def _link_pair(made: Path, path: Path, public: Path) -> None:
    try:
        os.link(made, path)
    except FileExistsError:
        raise _exists_error(path, path) from None
    try:
        os.link(made.with_name("key.pub"), public)
    except FileExistsError:
        with contextlib.suppress(OSError):
            path.unlink()
        raise _exists_error(public, path) from None
