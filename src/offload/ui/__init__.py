"""Everything a run shows: renderers that consume the executor's events (``ui.events``).

``make_renderer`` picks one: the live view (``tty``) when stderr is a terminal, plain lines
(``plain``) otherwise, JSON lines on stdout (``json``, no live view), or Nix's own ``@nix``
lines on stderr (``nixjson``, ``--log-format internal-json``). All of them take the
same events through the ``Renderer`` protocol; the clock and the terminal size are parameters
so that tests drive them with scripted events and read back exactly what was written.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Literal, TextIO

from offload.ui.events import Renderer

__all__ = ["RendererKind", "make_renderer"]

RendererKind = Literal["auto", "tty", "plain", "json", "nixjson"]


def make_renderer(
    kind: RendererKind,
    *,
    stream: TextIO | None = None,
    json_stream: TextIO | None = None,
    print_logs: bool,
    clock: Callable[[], float] = time.time,
    size: tuple[int, int] | None = None,
    summary: bool = False,
    progress: bool = True,
    verbosity: int = 3,
) -> Renderer:
    """A renderer writing to ``stream`` (default stderr), or JSON to ``json_stream`` (stdout).

    ``size`` is the terminal's (columns, lines), detected when None. With ``summary`` the tty and
    plain renderers also write the run's summary table at ``RunFinished`` (off by default: the
    CLI calls ``ui.summary.render_summary`` itself after ``close``). Without ``progress``
    (nix-build's --quiet) the plain renderer writes build logs only, not offload's own lines.
    ``verbosity`` is Nix's (3, info, by default): the ``nixjson`` renderer's messages above it
    are not written.
    """
    stream = sys.stderr if stream is None else stream
    if kind == "auto":
        kind = "tty" if _isatty(stream) and _utf8(stream) else "plain"
    match kind:
        case "json":
            from offload.ui.jsonl import JsonRenderer

            out = sys.stdout if json_stream is None else json_stream
            return JsonRenderer(out, print_logs=print_logs)
        case "nixjson":
            from offload.ui.nixjson import NixJsonRenderer

            return NixJsonRenderer(stream, verbosity=verbosity, print_logs=print_logs)
        case "plain":
            from offload.ui.plain import PlainRenderer

            return PlainRenderer(
                stream, print_logs=print_logs, clock=clock, summary=summary, progress=progress
            )
        case "tty":
            from rich.console import Console

            from offload.ui.tty import TtyRenderer

            width, height = size if size is not None else (None, None)
            console = Console(
                file=stream, width=width, height=height, force_terminal=True, highlight=False
            )
            return TtyRenderer(
                console,
                print_logs=print_logs,
                clock=clock,
                summary=summary,
                redirect_stderr=stream is sys.stderr,
            )
    raise AssertionError(kind)  # pragma: no cover - kind is exhausted above


def _utf8(stream: TextIO) -> bool:
    """Whether ``stream`` writes UTF-8: the live view draws with "…" and "·", which another
    encoding writes escaped (\\u2026), wider than counted: its redraws then piled up."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return encoding.lower().replace("-", "").replace("_", "") == "utf8"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or file-like objects without isatty
        return False
