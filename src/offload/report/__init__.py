"""Run reports: one self-contained HTML page per run, made from history.

``model`` reads what a report shows from history; ``html`` renders it; ``write_page`` puts it
where it is asked: a file whole or not at all (a temporary file beside it, renamed over it), a link,
a pipe or a device as it is (a link opened as a shell's ``>`` opens it), ``-`` on standard
output.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

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
]


def check_target(path: Path | None) -> None:
    """Fail now, before a run, if ``path`` (None: standard output) cannot be written later."""
    if path is None:
        return
    if path.is_dir():
        raise OffloadError(f"{path}: is a directory", hint="name a file for the report")
    if _in_place(path):
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


def _in_place(path: Path) -> bool:
    """Whether ``path`` is written as it is rather than replaced: a link of this user's
    (written through, as a shell's ``>`` writes it), a pipe, a device. Another user's link is
    refused: planted in a shared /tmp, it would make root write where it points (the kernel
    may not protect it: fs.protected_symlinks is 0 on many machines)."""
    if path.is_symlink():
        if path.lstat().st_uid != os.geteuid():
            raise OffloadError(
                f"{path}: a link of another user's, not written through",
                hint="remove it, or name another file",
            )
        return True
    return path.exists() and not path.is_file()


def write_report(history: History, run_id: str | None, path: Path | None) -> ReportModel:
    """The report of run ``run_id`` (a prefix; None: the latest) into ``path``."""
    check_target(path)
    model = load_model(history, run_id)
    write_page(model, path)
    return model


def write_page(model: ReportModel, path: Path | None) -> None:
    """``model``'s page into ``path`` (None: standard output). A file is replaced whole or not
    at all (a temporary file beside it, renamed over it); a link, a pipe or a device is
    written as it is (``_in_place``), never replaced by a file."""
    page = render_html(model)
    if path is None:
        # As UTF-8 whatever the locale's encoding: the page says it is (meta charset).
        sys.stdout.flush()
        out = getattr(sys.stdout, "buffer", None)
        if out is None:  # a text stream only (a test's capture)
            sys.stdout.write(page)
        else:
            out.write(page.encode("utf-8", "surrogateescape"))
            out.flush()
        return
    try:
        if _in_place(path):
            with path.open("w", encoding="utf-8") as out:
                out.write(page)
            return
    except OSError as exc:
        raise OffloadError(f"{path}: cannot write the report: {exc.strerror}") from exc
    try:
        # Its directory may have gone since check_target (a long build), or be one the kernel
        # makes no file in (/proc): the same one-line error as a failed write.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise OffloadError(f"{path}: cannot write the report: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(page)
        Path(tmp).chmod(readable_mode())  # a page to open and share, as the umask allows
        Path(tmp).replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise OffloadError(f"{path}: cannot write the report: {exc.strerror}") from exc


def report_target(text: str) -> Path | None:
    """``-o``'s value: ``-`` is standard output (None); ``./-`` is a file named ``-``."""
    return None if text == "-" else Path(text)
