"""The graph plots of docs/BENCHMARKS.md: wall time per repetition for each tool against the lower
bound and its target, as small hand-written SVGs (no plotting dependency for a handful of points).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.report_summaries import TARGETS

_W, _H = 640, 360
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 150, 40, 50
_COLOURS = {"nix": "#d95f02", "offload": "#1b9e77"}
_LABELS = {"nix": "Nix hook", "offload": "offload", "local": "local only"}


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * exp >= value:
            return float(step * exp)
    return float(10 * exp)


@dataclass(frozen=True)
class _Axes:
    """Repetitions along x, seconds up to ``top`` along y, inside the margins."""

    reps: int
    top: float
    plot_w: float = _W - _LEFT - _RIGHT
    plot_h: float = _H - _TOP - _BOTTOM

    def x(self, rep: int) -> float:
        return _LEFT + (self.plot_w * (rep + 0.5) / self.reps if self.reps else self.plot_w / 2)

    def y(self, value: float) -> float:
        return _TOP + self.plot_h * (1 - value / self.top)


def svg_plot(title: str, lower_bound: float, series: Mapping[str, Sequence[float | None]]) -> str:
    """Wall time per repetition for each tool against the lower bound and the 1.25x target.

    ``series`` maps a tool to its walls by repetition; None marks a failed run (an x on the
    axis). Pure: returns the SVG text.
    """
    reps = max((len(v) for v in series.values()), default=0)
    values = [v for vs in series.values() for v in vs if v is not None]
    top = _nice_max(max([*values, lower_bound * TARGETS.graph_lb_ratio]) * 1.1)
    axes = _Axes(reps, top)
    out = [*_frame(title, axes), *_bound_lines(lower_bound, axes), *_series_marks(series, axes)]
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _frame(title: str, axes: _Axes) -> list[str]:
    x, y, plot_w, plot_h, top = axes.x, axes.y, axes.plot_w, axes.plot_h, axes.top
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
            f'viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="12">'
        ),
        f'<rect width="{_W}" height="{_H}" fill="white"/>',
        (
            f'<text x="{_W / 2:.0f}" y="22" text-anchor="middle" font-size="14">'
            f"{html.escape(title)}</text>"
        ),
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + plot_h}" stroke="black"/>',
        (
            f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_LEFT + plot_w}" y2="{_TOP + plot_h}" '
            'stroke="black"/>'
        ),
        (
            f'<text x="16" y="{_TOP + plot_h / 2:.0f}" text-anchor="middle" '
            f'transform="rotate(-90 16 {_TOP + plot_h / 2:.0f})">wall time (s)</text>'
        ),
        f'<text x="{_LEFT + plot_w / 2:.0f}" y="{_H - 12}" text-anchor="middle">repetition</text>',
    ]
    for i in range(6):
        value = top * i / 5
        out.append(
            f'<line x1="{_LEFT - 4}" y1="{y(value):.1f}" x2="{_LEFT + plot_w}" y2="{y(value):.1f}" '
            f'stroke="#ddd"/><text x="{_LEFT - 8}" y="{y(value) + 4:.1f}" '
            f'text-anchor="end">{value:g}</text>'
        )
    out.extend(
        f'<text x="{x(rep):.1f}" y="{_TOP + plot_h + 18}" text-anchor="middle">{rep + 1}</text>'
        for rep in range(axes.reps)
    )
    return out


def _bound_lines(lower_bound: float, axes: _Axes) -> list[str]:
    y, plot_w = axes.y, axes.plot_w
    out = []
    for value, label, dash in (
        (lower_bound, "lower bound", "6 4"),
        (lower_bound * TARGETS.graph_lb_ratio, f"{TARGETS.graph_lb_ratio:g}x bound", "2 3"),
    ):
        out.append(
            f'<line x1="{_LEFT}" y1="{y(value):.1f}" x2="{_LEFT + plot_w}" y2="{y(value):.1f}" '
            f'stroke="black" stroke-dasharray="{dash}"/>'
            f'<text x="{_LEFT + plot_w + 6}" y="{y(value) + 4:.1f}">{label} {value:.1f} s</text>'
        )
    return out


def _series_marks(series: Mapping[str, Sequence[float | None]], axes: _Axes) -> list[str]:
    x, y, plot_h = axes.x, axes.y, axes.plot_h
    out = []
    # The legend sits at the top of the right margin; the bound lines are labelled lower down
    # (every tool is slower than the bound, so the axis top is well above them).
    legend_y = _TOP - 50
    for tool, walls_by_rep in series.items():
        colour = _COLOURS.get(tool, "#7570b3")
        points = [(x(i), y(v)) for i, v in enumerate(walls_by_rep) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}"/>')
        out.extend(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{colour}"/>' for px, py in points
        )
        for i, v in enumerate(walls_by_rep):
            if v is None:  # a failed or timed-out run, drawn on the axis
                cx, cy = x(i), _TOP + plot_h
                out.append(
                    f'<path d="M{cx - 5:.1f},{cy - 5:.1f} l10,10 m0,-10 l-10,10" '
                    f'stroke="{colour}" stroke-width="2"/>'
                )
        out.append(
            f'<rect x="{_W - _RIGHT + 10}" y="{legend_y + 50}" width="10" height="10" '
            f'fill="{colour}"/><text x="{_W - _RIGHT + 26}" y="{legend_y + 59}">'
            f"{html.escape(_LABELS.get(tool, tool))}</text>"
        )
        legend_y += 18
    out.append(
        f'<text x="{_W - _RIGHT + 10}" y="{legend_y + 59}" font-size="10">x = failed run</text>'
    )
    return out


def graph_series(graph: Mapping[str, Any]) -> dict[str, list[float | None]]:
    """Each tool's walls by repetition (None for a failed run), for ``svg_plot``."""
    out: dict[str, list[float | None]] = {}
    for tool in ("nix", "offload"):
        runs = sorted((r for r in graph["runs"] if r["tool"] == tool), key=lambda r: int(r["rep"]))
        out[tool] = [float(r["wall_s"]) if r["status"] == "ok" else None for r in runs]
    return out
