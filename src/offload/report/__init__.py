"""Run reports: one self-contained HTML page per run, made from history.

``model`` reads what a report shows from history; ``html`` renders it; ``write_page`` puts it
where it is asked: a file whole or not at all (a temporary file beside it, renamed over it; a
link to one is written through), a pipe or a device as it is, ``-`` on standard output.
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

# ``-o -``: the page goes to standard output.
STDOUT = Path("-")

__all__ = [
    "STDOUT",
    "ReportModel",
    "check_target",
    "load_hook_model",
    "load_model",
    "make_model",
    "render_html",
    "write_page",
    "write_report",
]


def check_target(path: Path) -> None:
    """Fail now, before a run, if ``path`` cannot be written later."""
    if path == STDOUT:
        return
    target = path.resolve()  # a link is written through, as a shell's redirection writes it
    if target.is_dir():
        raise OffloadError(f"{path}: is a directory", hint="name a file for the report")
    if target.exists() and not target.is_file():  # a pipe, a device: written in place
        if not os.access(target, os.W_OK):
            raise OffloadError(f"{path}: cannot write to it", hint="name a writable file")
        return
    parent = target.parent
    if not parent.is_dir():
        raise OffloadError(
            f"{path}: no directory {parent} to write the report in",
            hint="create it, or name a file in an existing directory",
        )
    if not os.access(parent, os.W_OK):
        raise OffloadError(f"{path}: cannot write in {parent}", hint="name a writable place")


def write_report(history: History, run_id: str | None, path: Path) -> ReportModel:
    """The report of run ``run_id`` (a prefix; None: the latest) into ``path``."""
    check_target(path)
    model = load_model(history, run_id)
    write_page(model, path)
    return model


def write_page(model: ReportModel, path: Path) -> None:
    """``model``'s page into ``path`` (``-``: standard output). A file is replaced whole or not
    at all (a temporary file beside it, renamed over it), through a link to it; a pipe or a
    device is written as it is, never replaced by a file."""
    page = render_html(model)
    if path == STDOUT:
        sys.stdout.write(page)
        sys.stdout.flush()
        return
    target = path.resolve()
    try:
        if target.exists() and not target.is_file():
            with target.open("w", encoding="utf-8") as out:
                out.write(page)
            return
    except OSError as exc:
        raise OffloadError(f"{path}: cannot write the report: {exc.strerror}") from exc
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(page)
        Path(tmp).chmod(readable_mode())  # a page to open and share, as the umask allows
        Path(tmp).replace(target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise OffloadError(f"{path}: cannot write the report: {exc.strerror}") from exc
