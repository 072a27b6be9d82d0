"""Reading a machines file named by ``@path``, bounded in size and in time.

Nix reads an ``@`` file whatever it is, until its end. offload reads the same files (regular
files, and pipes such as ``--builders @<(generate)`` or ``@/dev/stdin``) but never without
bound: at most ``MAX_BYTES`` (a machines file of 4 MiB is some 30,000 builders, so more is a
mistake such as ``@/dev/zero``), and from anything that is not a regular file only what arrives
within ``timeout`` seconds (a FIFO nobody writes to would otherwise hang the command forever, as
it hangs Nix). Bytes are decoded with ``surrogateescape``: what is not UTF-8 reaches ssh as the
bytes Nix would pass, and every message shows it escaped (``model.shown``).

Every other file a user names (offload.toml, a DAG file, a public key) is read by the same
rule (``read_user_file``), each error naming the kind of file: none of them may hang a command
or fill its memory, whatever the name given turns out to be. One named on the command line
(``--key @<(ssh host cat key.pub)``, ``--config <(nix eval ...)``) may come from a producer that
takes its time, an ssh login or an evaluation, with the user watching: a pipe there is waited
for ``_NAMED_TIMEOUT`` (``named``), long enough for those, still not forever.
"""

from __future__ import annotations

import os
import select
import stat
import time

from offload.config.machines.model import shown
from offload.errors import ConfigError

__all__ = ["MAX_BYTES", "read_text_file", "read_user_file"]

MAX_BYTES = 4 << 20
_TIMEOUT = 10.0
_NAMED_TIMEOUT = 120.0
_CHUNK = 1 << 16


_MACHINES_HINT = "an @ include names a machines file (one builder a line), not a device or data"


def _a(what: str) -> str:
    """``what`` with its article: "a DAG file", "an offload.toml"."""
    return f"{'an' if what[:1].lower() in 'aeiou' else 'a'} {what}"


def _too_big(path: str, what: str, hint: str, limit: int) -> ConfigError:
    return ConfigError(
        f"{what} {shown(path, 400)} is larger than {limit >> 20} MiB; not read", hint=hint
    )


def _read_stream(fd: int, label: str, timeout: float, limit: int) -> bytes:
    """What ``fd`` (no regular file) gives until its end, or past ``limit`` bytes (the caller
    refuses it then), within ``timeout`` seconds; ``label`` names it in the error."""
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + timeout
    while size <= limit:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        if not ready:
            raise ConfigError(
                f"{label} gave no end of file within {timeout:g} s; not read",
                hint="a FIFO or terminal needs a writer that finishes; write a regular file",
            )
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            continue
        if not chunk:
            break
        size += len(chunk)
        chunks.append(chunk)
    return b"".join(chunks)


def read_text_file(path: str, timeout: float | None = None, *, named: bool = False) -> str | None:
    """The text of machines file ``path``; ``None`` when it does not exist (Nix skips it).
    ``named``: on the command line (``read_user_file``'s longer wait for a pipe)."""
    data = read_user_file(
        path,
        "machines file",
        timeout=timeout,
        named=named,
        hint_big=_MACHINES_HINT,
        hint_unreadable="a missing include is skipped, but one that exists must be readable",
    )
    return None if data is None else data.decode(errors="surrogateescape")


def read_user_file(
    path: str,
    what: str,
    *,
    hint_big: str,
    hint_unreadable: str | None = None,
    timeout: float | None = None,
    limit: int = MAX_BYTES,
    named: bool = False,
) -> bytes | None:
    """The bytes of ``path``, a ``what`` (``"DAG file"``) a user named; ``None`` when it does
    not exist. At most ``limit`` bytes (a file of a kind that is legitimately bigger than
    ``MAX_BYTES`` passes its own), and from what is no regular file (a FIFO, a device) only
    until ``timeout`` (10 s, 120 s for one ``named`` on the command line): else a one-line
    ``ConfigError`` naming it (``hint_big``: what such a file should be), as it is for a
    directory or a file that cannot be read."""
    if timeout is None:
        timeout = _NAMED_TIMEOUT if named else _TIMEOUT
    if hint_unreadable is None:
        hint_unreadable = f"check the path, and that it is {_a(what)} this user may read"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {what} {shown(path, 400)}: {exc.strerror}", hint=hint_unreadable
        ) from exc
    except ValueError as exc:  # a NUL byte: no file is named so
        raise ConfigError(
            f"cannot read {what} {shown(path, 400)}: its name holds a NUL byte",
            hint=f"name {_a(what)} whose path has no NUL byte",
        ) from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(
                f"cannot read {what} {shown(path, 400)}: Is a directory",
                hint=f"name {_a(what)}, not a directory",
            )
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            data = os.read(fd, limit + 1)
            while len(data) <= limit and (more := os.read(fd, limit + 1 - len(data))):
                data += more
        else:
            data = _read_stream(fd, f"{what} {shown(path, 400)}", timeout, limit)
        if len(data) > limit:
            raise _too_big(path, what, hint_big, limit)
    except OSError as exc:
        raise ConfigError(
            f"cannot read {what} {shown(path, 400)}: {exc.strerror}", hint=hint_unreadable
        ) from exc
    finally:
        os.close(fd)
    return data
