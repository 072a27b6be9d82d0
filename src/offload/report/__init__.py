"""Run reports: one self-contained HTML page per run, made from history.

``model`` reads what a report shows from history; ``html`` renders it; ``write_report`` puts
it in a file whole or not at all (``write_page``) (a temporary file beside it, renamed over it).
"""

from __future__ import annotations

import contextlib
import os
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
    "write_page",
    "write_report",
]


def check_target(path: Path) -> None:
    """Fail now, before a run, if ``path`` cannot be written later."""
    parent = path.parent if str(path.parent) else Path()
    if path.is_dir():
        raise OffloadError(f"{path}: is a directory", hint="name a file for the report")
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
    """``model``'s page into ``path``, whole or not at all."""
    page = render_html(model)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(page)
        Path(tmp).chmod(readable_mode())  # a page to open and share, as the umask allows
        Path(tmp).replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise OffloadError(f"{path}: cannot write the report: {exc.strerror}") from exc
