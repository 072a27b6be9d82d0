"""What ``offload setup`` prints, or writes into a directory, without ever overwriting.

Printed, each file comes under a header line naming it and where it goes. Written, every file
is first made whole under a temporary name in the directory and then hard-linked to its name,
which fails instead of replacing a file that exists; if any name is taken, the files already
linked are removed again, so a directory gets all of the files or none.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from offload.errors import ConfigError
from offload.file_modes import readable_mode

__all__ = ["render", "write_files"]

_EXECUTABLE = (".sh",)


def render(files: Sequence[tuple[str, str]], places: Mapping[str, str]) -> str:
    parts = []
    for name, text in files:
        where = f": {places[name]}" if name in places else ""
        parts.append(f"# ==> {name}{where} <==\n{text}")
    return "\n".join(parts)


def _taken(path: Path) -> ConfigError:
    return ConfigError(
        f"{path} already exists: not overwriting it (nothing was written)",
        hint="give --write a new or empty directory, or move the old files away",
    )


def write_files(directory: Path, files: Sequence[tuple[str, str]]) -> list[Path]:
    """Write every file into ``directory`` (made if missing), or none of them."""
    for name, _ in files:
        if (directory / name).exists() or (directory / name).is_symlink():
            raise _taken(directory / name)
    made = _missing(directory)
    try:
        # Each 0755 at most, whatever the umask: they hold a script root runs on the builder.
        for new in reversed(made):
            new.mkdir(mode=0o755, exist_ok=True)
    except OSError as exc:
        _remove(made)
        raise ConfigError(
            f"cannot create {directory}: {exc.strerror}",
            hint="give --write a directory this user may create files in",
        ) from None
    written: list[Path] = []
    try:
        for name, text in files:
            written.append(_write_one(directory, name, text))
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        _remove(made)  # nothing of ours is left in them: the directories made go too
        raise
    return written


def _missing(directory: Path) -> list[Path]:
    """``directory`` and those above it that are not there yet, deepest first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


def _remove(made: list[Path]) -> None:
    for directory in made:  # deepest first
        with contextlib.suppress(OSError):
            directory.rmdir()


def _write_one(directory: Path, name: str, text: str) -> Path:
    final = directory / name
    try:
        fd, scratch = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    except OSError as exc:
        raise ConfigError(
            f"cannot write in {directory}: {exc.strerror}",
            hint="give --write a directory this user may create files in",
        ) from None
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())  # whole on disk before its name is: a config is never empty
        Path(scratch).chmod(readable_mode(executable=name.endswith(_EXECUTABLE)))
        try:
            os.link(scratch, final)
        except FileExistsError:
            raise _taken(final) from None
    except OSError as exc:  # a full disk: said as the file's, not as an internal error
        raise ConfigError(
            f"cannot write {final}: {exc.strerror or exc} (nothing was written)",
            hint="give --write a directory on a disk with room",
        ) from None
    finally:
        Path(scratch).unlink()
    return final
