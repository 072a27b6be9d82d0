"""What ``offload setup`` prints, or writes into a directory, without ever overwriting.

Printed, each file comes under a header line naming it and where it goes. Written, every file
is first made whole under a temporary name in the directory and then hard-linked to its name,
which fails instead of replacing a file that exists; if any name is taken, the files already
linked are removed again, so a directory gets all of the files or none. A file already there
with exactly the text it would get is left as it is: the same command run again (after
installing the files, say) finds its own files and goes on.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from offload.errors import ConfigError
from offload.file_modes import readable_mode

__all__ = ["Written", "render", "write_files"]

_EXECUTABLE = (".sh",)


def render(files: Sequence[tuple[str, str]], places: Mapping[str, str]) -> str:
    parts = []
    for name, text in files:
        where = f": {places[name]}" if name in places else ""
        parts.append(f"# ==> {name}{where} <==\n{text}")
    return "\n".join(parts)


@dataclass(frozen=True)
class Written:
    path: Path
    new: bool  # False: it was there already, with this text


def _taken(path: Path) -> ConfigError:
    return ConfigError(
        f"{path} already exists with other contents: not overwriting it (nothing was written)",
        hint="give --write a new or empty directory, or move the old files away",
    )


def _already_there(path: Path, text: str) -> bool:
    """Whether ``path`` holds ``text`` already; raises if something else has the name."""
    if not path.exists() and not path.is_symlink():
        return False
    try:
        same = not path.is_symlink() and path.is_file() and path.read_text() == text
    except (OSError, UnicodeDecodeError):
        same = False
    if not same:
        raise _taken(path)
    return True


def write_files(directory: Path, files: Sequence[tuple[str, str]]) -> list[Written]:
    """Write every file into ``directory`` (made if missing), or none of them."""
    names = [name for name, _ in files]
    there = {name for name, text in files if _already_there(directory / name, text)}
    files = [(name, text) for name, text in files if name not in there]
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
    return [Written(directory / name, name not in there) for name in names]


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
