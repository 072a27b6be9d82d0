"""Run reports: one self-contained HTML page per run, made from history.

``model`` reads what a report shows from history; ``html`` renders it; ``write_page`` puts it
where it is asked: a file whole or not at all (a temporary file beside it, renamed over it), a link,
a pipe or a device as it is (a link opened as a shell's ``>`` opens it), ``-`` on standard
output.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from pathlib import Path

from offload.config.machines import shown
from offload.errors import OffloadError
from offload.file_modes import readable_mode
from offload.history.db import History
from offload.report.html import render_html
from offload.report.model import ReportModel, load_hook_model, load_model, make_model

__all__ = [
    "ReportModel",
    "check_target",
    "load_hook_model",
    "load_model",
    "make_model",
    "render_html",
    "report_target",
    "write_page",
    "write_report",
    "written",
]


def check_target(path: Path | None) -> None:
    """Fail now, before a run, if ``path`` (None: standard output) cannot be written later."""
    if path is None:
        return
    if path.is_dir():
        raise OffloadError(f"{path}: is a directory", hint="name a file for the report")
    if _in_place(path) is not None:
        if path.exists() and not os.access(path, os.W_OK):
            raise OffloadError(f"{path}: cannot write to it", hint="name a writable file")
        return
    parent = path.parent
    if not parent.is_dir():
        raise OffloadError(
            f"{path}: no directory {parent} to write the report in",
            hint="create it, or name a file in an existing directory",
        )
    if not os.access(parent, os.W_OK):
        raise OffloadError(f"{path}: cannot write in {parent}", hint="name a writable place")


def not_history(path: Path | None, history: Path) -> None:
    """``path`` is not the history the page is made from, nor one of SQLite's files beside it
    (its write-ahead log, shared memory, rollback journal): the page replaced it, and every
    run kept in it was lost (or, for the shared memory, SQLite removed the page on closing)."""
    if path is None:
        return
    beside = [history.with_name(history.name + suffix) for suffix in ("-wal", "-shm", "-journal")]
    for kept in (history, *beside):
        with contextlib.suppress(OSError):
            if path.resolve() == kept.resolve() or path.samefile(kept):
                raise OffloadError(
                    f"{path}: is the history database the report is made from",
                    hint="name another file for the report",
                )


def _planted(path: Path, owner: int) -> bool:
    """Whether a name owned by ``owner`` may have been put there by another user to catch
    ours: the kernel's own rule for links (fs.protected_symlinks), applied to every kind of
    file and whatever the setting: in a sticky directory others may write to (/tmp), a name
    of neither this user's nor the directory owner's."""
    try:
        parent = path.parent.stat()
    except OSError:
        return False
    shared = parent.st_mode & stat.S_ISVTX and parent.st_mode & stat.S_IWOTH
    return bool(shared) and owner not in {os.geteuid(), parent.st_uid}


def _in_place(path: Path) -> int | None:
    """How ``path`` is written as it is rather than replaced (None: replaced): the flags to
    open it with. A link is written through (as a shell's ``>`` writes it, /dev/stdout); a
    pipe or a device is opened without following a link, one swapped in since this look.
    One planted by another user (``_planted``) is refused: in a shared /tmp, a link would make
    root write where it points (fs.protected_symlinks is 0 on many machines), a pipe would
    hand its reader the page."""
    if path.is_symlink():
        if _planted(path, path.lstat().st_uid):
            raise OffloadError(
                f"{path}: a link of another user's, not written through",
                hint="remove it, or name another file",
            )
        return os.O_CREAT | os.O_TRUNC
    if not path.exists() or path.is_file():
        return None
    if _planted(path, path.stat().st_uid):
        raise OffloadError(
            f"{path}: a pipe or device of another user's, not written to",
            hint="remove it, or name another file",
        )
    return os.O_NOFOLLOW


def write_report(history: History, run_id: str | None, path: Path | None) -> ReportModel:
    """The report of run ``run_id`` (a prefix; None: the latest) into ``path``."""
    check_target(path)
    not_history(path, history.path)
    model = load_model(history, run_id)
    write_page(model, path)
    return model


def written(model: ReportModel, what: str, path: Path | None) -> str:
    """The line that says where a page went (``offload report``, ``offload build --report``)."""
    copies = sum(len(lane.bars) for lane in model.lanes)
    lanes = len(model.lanes)
    return (
        f"{what} ({copies} {'copy' if copies == 1 else 'copies'} on {lanes}"
        f" {'machine' if lanes == 1 else 'machines'}) written to"
        # shown: the name as typed may hold a line break or a terminal escape.
        f" {shown(str(path), 4096) if path else 'standard output'}"
    )


def write_page(model: ReportModel, path: Path | None) -> None:
    """``model``'s page into ``path`` (None: standard output). A file is replaced whole or not
    at all (a temporary file beside it, renamed over it); a link, a pipe or a device is
    written as it is (``_in_place``), never replaced by a file."""
    page = render_html(model)
    if path is None:
        # As UTF-8 whatever the locale's encoding: the page says it is (meta charset).
        try:
            sys.stdout.flush()
            out = getattr(sys.stdout, "buffer", None)
            if out is None:  # a text stream only (a test's capture)
                sys.stdout.write(page)
            else:
                out.write(page.encode("utf-8", "surrogateescape"))
                out.flush()
        except BrokenPipeError:
            raise  # `| head`: the reader is gone, as for any command
        except OSError as exc:  # /dev/full
            raise OffloadError(
                f"cannot write the report to standard output: {exc.strerror or exc}",
                hint="free space where it goes, or name a file with -o",
            ) from exc
        return
    try:
        flags = _in_place(path)
        if flags is not None:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | flags, 0o666)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(page)
            return
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    try:
        # Its directory may have gone since check_target (a long build), or be one the kernel
        # makes no file in (/proc): the same one-line error as a failed write.
        # A short name: beside a page named with 250 characters, ".NAME.XXXXXXXX" was over
        # the file system's 255.
        fd, tmp = tempfile.mkstemp(prefix=".offload-report-", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(page)
            out.flush()
            # On disk before its name is: a crash after the rename leaves the whole page, or
            # the one it replaced, never an empty file under the page's name.
            os.fsync(out.fileno())
        # A page to open and share, as the umask allows; one replaced keeps its mode, as a
        # shell's `>` keeps it (a 0600 page stays private).
        Path(tmp).chmod(_kept_mode(path))
        Path(tmp).replace(path)
    except BaseException as exc:
        # Ctrl-C (or SIGTERM) while it is written too: no stray temporary beside the page.
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from exc
        raise


def _kept_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:  # none there yet
        return readable_mode()


def _cannot_write(path: Path, exc: OSError) -> OffloadError:
    return OffloadError(
        f"{path}: cannot write the report: {exc.strerror or exc}",
        hint="name a file in a directory you may write, with room for it",
    )


def report_target(text: str) -> Path | None:
    """``-o``'s value: ``-`` is standard output (None); ``./-`` is a file named ``-``."""
    return None if text == "-" else Path(text)
