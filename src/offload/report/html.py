"""A run report as one self-contained HTML page: inline CSS, SVG and script, nothing fetched.

Every text from outside (derivation names and paths, machine names, errors, what was asked)
goes through ``html.escape`` whether it lands in an element or an attribute; the script
reads hover details from ``data-tip`` attributes and sets them as text. The timeline is SVG
drawn here: one lane per machine, one row per concurrent copy, each copy a bar of its phases
(coloured as ``assets.COLOURS``), critical-path builds outlined, a dashed line where the lower
bound would have ended the run. Each bar also has an SVG ``<title>``, for readers without
script. Nothing makes the page wider than the window: the timeline shrinks to a narrower one
(its viewBox), and names in the tables wrap.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Sequence

from offload.history.records import PHASES, BuildRecord
from offload.history.views import MachineStats
from offload.report.assets import COLOURS, SCRIPT, STYLE, WATCH
from offload.report.model import Bar, Lane, ReportModel, slot_let_go
from offload.ui.term import format_bytes, format_duration, sanitize

__all__ = ["render_html"]

LABEL = 170  # px left of the chart for lane names
LABEL_CHARS = 22  # of a lane's name, in bold 12px: what fits in LABEL
WIDTH = 1000  # px of chart
ROW = 16
FETCH = 4  # px of a row's foot, where its fetches home are drawn (the other phases above)
GAP = 3
LANE_PAD = 8
AXIS = 26
ASKED = 4  # requested derivations named at the top; the rest are counted
ERROR_CHARS = 300  # of a failed build's error in its table


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def render_html(model: ReportModel) -> str:
    title = model.title
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{esc(title)}</title>",
            f"<style>{STYLE}</style>",
            f"<script>{WATCH}</script>",
            "</head><body>",
            f"<h1>{esc(title)}</h1>",
            '<ul id="script-errors"></ul>',
            _facts(model),
            _failed(model),
            _said(model),
            "<h2>Timeline</h2>",
            _legend(bound=model.run.comparable_bound is not None),
            _timeline(model),
            _machines(model),
            _critical(model),
            _slowest(model),
            _biggest(model),
            _unplaced(model),
            '<div id="tip" hidden></div>',
            f"<script>{SCRIPT}</script>",
            "</body></html>",
        ]
    )


def _facts(model: ReportModel) -> str:
    run = model.run
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started))
    # As `offload history` says it: none for a run stopped early, no ratio to one under 1 s.
    bound, ratio = run.comparable_bound, run.bound_ratio
    facts = [
        ("started", when),
        ("asked", _asked(run.asked)),
        ("outcome", run.outcome),
        ("wall time", format_duration(run.wall)),
        ("lower bound", "-" if bound is None else format_duration(bound)),
    ]
    far = ""
    if ratio is not None:
        distance = model.distance or 0.0
        facts.append(("from the bound", f"+{format_duration(distance)} ({ratio:.2f}x)"))
        far = ' class="far"' if ratio > 1.5 else ""
    if run.estimate is not None:
        facts.append(("scheduler expected", format_duration(run.estimate)))
    cells = "".join(
        f'<div{far if name == "from the bound" else ""} data-fact="{esc(name)}">'
        f"{esc(name)}<b>{esc(value)}</b></div>"
        for name, value in facts
    )
    return f'<div class="facts">{cells}</div>'


def _asked(names: Sequence[str]) -> str:
    shown = " ".join(names[:ASKED])
    more = len(names) - ASKED
    return (shown + (f" and {more} more" if more > 0 else "")) or "-"


def _legend(*, bound: bool) -> str:
    """The timeline's key; the lower bound's line only when it is drawn (offload-hook's
    builds have none)."""
    items = [f'<span><i style="background:{COLOURS[p]}"></i>{p}</span>' for p in PHASES]
    items.append('<span><i class="crit"></i>critical path</span>')
    items.append('<span><i class="failed"></i>failed</span>')
    items.append('<span><i class="stopped"></i>stopped or lost (why, on hover)</span>')
    if bound:
        items.append('<span><i class="bound"></i>the lower bound, from the first build</span>')
    return f'<div class="legend">{"".join(items)}</div>'


def _timeline(model: ReportModel) -> str:
    scale = WIDTH / model.length
    height = AXIS + sum(_lane_height(lane) for lane in model.lanes)
    # Its own size on a wide window; the viewBox lets the style shrink it to a narrower one's
    # width (text and all), so the page never scrolls sideways.
    size = f'width="{LABEL + WIDTH + 20}" height="{height + 4}"'
    parts = [
        (
            f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" {size}'
            f' viewBox="0 0 {LABEL + WIDTH + 20} {height + 4}"'
            ' role="img" aria-label="timeline per machine">'
        )
    ]
    parts += _axis(model.length, scale, height)
    y = AXIS
    for lane in model.lanes:
        parts.append(_lane(lane, model.origin, scale, y))
        y += _lane_height(lane)
    bound = model.run.comparable_bound
    if bound is not None:
        # Where the run would have ended at its lower bound, counted from its first copy.
        first = min((bar.build.span[0] for lane in model.lanes for bar in lane.bars), default=0)
        x = LABEL + (max(first - model.origin, 0.0) + bound) * scale
        parts.append(
            f'<line class="bound" x1="{x:.1f}" x2="{x:.1f}" y1="{AXIS - 6}" y2="{height}">'
            f"<title>lower bound: {esc(format_duration(bound))}</title></line>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _lane_height(lane: Lane) -> int:
    return lane.rows * (ROW + GAP) + 2 * LANE_PAD


def _axis(length: float, scale: float, height: int) -> list[str]:
    step = _tick(length)
    parts = []
    ticks = int(length / step) + 1
    for n in range(ticks):
        x = LABEL + n * step * scale
        parts.append(
            f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{AXIS - 6}" y2="{height}"/>'
        )
        parts.append(f'<text x="{x:.1f}" y="{AXIS - 10}" text-anchor="middle">{n * step:g}s</text>')
    end = LABEL + length * scale
    parts.append(f'<line class="end" x1="{end:.1f}" x2="{end:.1f}" y1="{AXIS - 6}" y2="{height}"/>')
    return parts


def _tick(length: float) -> float:
    raw = length / 10
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next((m * power for m in (1, 2, 5, 10) if m * power >= raw), 10 * power)


def _lane(lane: Lane, origin: float, scale: float, y: int) -> str:
    slots = f"{lane.slots} slot{'' if lane.slots == 1 else 's'}"
    speed = "" if lane.speed is None else f"speed {lane.speed:g}, {slots}"
    name = f"{esc(_fitted(lane.machine))}<title>{esc(lane.machine)}</title>"
    parts = [
        f'<g class="lane" data-machine="{esc(lane.machine)}">',
        f'<line class="grid" x1="0" x2="{LABEL + WIDTH}" y1="{y}" y2="{y}"/>',
        f'<text class="lane-name" x="4" y="{y + LANE_PAD + 12}">{name}</text>',
        f'<text x="4" y="{y + LANE_PAD + 27}">{esc(speed)}</text>',
    ]
    parts += [_bar(bar, origin, scale, y + LANE_PAD + bar.row * (ROW + GAP)) for bar in lane.bars]
    parts.append("</g>")
    return "\n".join(parts)


def _fitted(name: str) -> str:
    """``name`` cut to what the label column shows: a longer one ran on under the bars
    (``builder-eu-west-1.example.org:2222``); the whole name is the label's tooltip."""
    return name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "\u2026"


def _bar(bar: Bar, origin: float, scale: float, y: int) -> str:
    b = bar.build
    start, end = b.span
    x0 = LABEL + (start - origin) * scale
    classes = ["bar", b.status]
    if bar.critical:
        classes.append("critical")
    if b.status in {"cancelled", "lost"}:
        classes.append("stopped")
    tip = _tip(b, origin)
    rects = []
    phases = b.phases or ()
    for p in phases:
        px = LABEL + (p.started - origin) * scale
        pw = max(p.duration * scale, 0.5)
        # Outputs come home after the slot is let go, beside the next build on it: along the
        # row's foot, which the other phases leave free, so that neither hides the other.
        py, ph = (y + ROW - FETCH, FETCH) if p.phase == "fetching" else (y, ROW - FETCH)
        rects.append(
            f'<rect class="phase" data-phase="{esc(p.phase)}" x="{px:.1f}" y="{py}"'
            f' width="{pw:.1f}" height="{ph}" fill="{COLOURS.get(p.phase, "#999")}"/>'
        )
    if not phases:
        rects.append(
            f'<rect class="phase" data-phase="building" x="{x0:.1f}" y="{y}"'
            f' width="{max((end - start) * scale, 0.5):.1f}" height="{ROW}"'
            f' fill="{COLOURS["building"]}"/>'
        )
    width = max((slot_let_go(b) - start) * scale, 1.0)
    return (
        f'<g class="{esc(" ".join(classes))}" data-drv="{esc(b.drv_path)}" data-tip="{esc(tip)}">'
        f"<title>{esc(tip)}</title>{''.join(rects)}"
        f'<rect class="outline" x="{x0:.1f}" y="{y}" width="{width:.1f}" height="{ROW}" rx="2"/>'
        "</g>"
    )


def _tip(b: BuildRecord, origin: float) -> str:
    start, end = b.span
    status = b.status + (" (speculative copy)" if b.speculative else "")
    lines = [
        b.name or b.pname,
        b.drv_path,
        f"on {b.machine}: {status}",
        f"from +{start - origin:.2f}s to +{end - origin:.2f}s ({format_duration(end - start)})",
    ]
    lines += [f"{p.phase}: {format_duration(p.duration)}" for p in b.phases]
    lines.append(f"sent {format_bytes(b.bytes_sent)}, received {format_bytes(b.bytes_received)}")
    if b.error and b.error.strip():
        lines.append(f"error: {b.error.strip().splitlines()[0]}")
    return "\n".join(lines)


# Columns of names and words, which wrap (anywhere, when a name is longer than the page is
# wide); numbers and the other short cells stay on one line.
_TEXT = {"machine", "why", "error", "its log", "said"}


def _cell(n: int, text: str, heading: str) -> str:
    if n == 0:
        return f'<td class="name">{esc(text)}</td>'
    return f'<td class="text">{esc(text)}</td>' if heading in _TEXT else f"<td>{esc(text)}</td>"


def _table(heading: str, ident: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    body = "".join(
        "<tr>" + "".join(_cell(n, c, header[n]) for n, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    if not body:
        return f'<h2>{esc(heading)}</h2><p id="{ident}">none</p>'
    return f'<h2>{esc(heading)}</h2><table id="{ident}"><tr>{head}</tr>{body}</table>'


def _machines(model: ReportModel) -> str:
    rows = [m.cells() for m in model.machines]
    return _table("Machines", "machines", MachineStats.COLUMNS, rows)


def _critical(model: ReportModel) -> str:
    rows = [(b.name or b.pname, b.machine, format_duration(b.duration)) for b in model.critical]
    total = sum(b.duration for b in model.critical)
    builds = f"{len(rows)} build{'' if len(rows) == 1 else 's'}"
    heading = f"Critical path ({builds}, {format_duration(total)} of building)"
    return _table(heading, "critical", ("derivation", "machine", "building"), rows)


def _slowest(model: ReportModel) -> str:
    rows = [
        (b.name or b.pname, b.machine, b.status, format_duration(b.duration)) for b in model.slowest
    ]
    return _table("Slowest builds", "slowest", ("derivation", "machine", "outcome", "took"), rows)


def _biggest(model: ReportModel) -> str:
    rows = [
        (
            b.name or b.pname,
            b.machine,
            format_bytes(b.bytes_sent),
            format_bytes(b.bytes_received),
            format_duration(b.phase_seconds("sending") + b.phase_seconds("fetching")),
        )
        for b in model.biggest
    ]
    header = ("derivation", "machine", "sent", "received", "copying")
    return _table("Biggest transfers", "biggest", header, rows)


def _failed(model: ReportModel) -> str:
    """Each failed build with its error and the command that prints its log, at the top: a
    failed bar alone, among the slowest ten or not, was its only mark (a tester)."""
    if not model.failed:
        return ""
    rows = [
        (
            b.name or b.pname,
            b.machine,
            _error_line(b.error),
            f"offload log {b.drv_path}",
        )
        for b in model.failed
    ]
    header = ("derivation", "machine", "error", "its log")
    return _table(f"Failed ({len(rows)})", "failed", header, rows)


def _said(model: ReportModel) -> str:
    """What the run said of its machines (down, slow to answer, up again...), at the top: the
    lanes alone showed a builder down all run as nothing, one lost mid-run as faded bars."""
    rows = [(m.name, sanitize(said)) for m in model.run.machines for said in m.told]
    if not rows:
        return ""
    return _table(
        "Machine events (seconds from the run's start)", "said", ("machine", "said"), rows
    )


def _error_line(error: str | None) -> str:
    """A build's error as one line of at most ``ERROR_CHARS``: Nix's first line says it."""
    first = next((line for line in (error or "").splitlines() if line.strip()), "failed")
    said = sanitize(first).strip()
    return said if len(said) <= ERROR_CHARS else said[: ERROR_CHARS - 1] + "…"


def _unplaced(model: ReportModel) -> str:
    if not model.unplaced:
        return ""
    rows = [(b.name or b.pname, b.error or "") for b in model.unplaced]
    return _table("Not built", "unplaced", ("derivation", "why"), rows)
