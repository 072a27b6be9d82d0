"""The sections that build nothing: the scheduler's planning cost on 1,000-50,000 simulated nodes
(``planning``; also with input moves, as ``offload build`` plans: ``plan_moves``; and that again
under offload built compiled, as the Nix package is: ``setup.py``), and ``offload simulate``'s
cost under both policies (``simulate``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.helpers.compiled import ROOT, install_compiled

from bench.context import Options, Save, log
from bench.plan_moves import moves_cost
from bench.report_model import simulate_section
from offload.errors import OffloadError

PLAN_SIZES = (1_000, 10_000, 50_000)
QUICK_PLAN_SIZES = (1_000,)


def planning_section(opts: Options, save: Save) -> dict[str, Any]:
    section: dict[str, Any] = {
        "machines": 100,
        "function": "offload.scheduler.generated.plan_cost",
        "runs": [],
    }
    sizes = QUICK_PLAN_SIZES if opts.quick else PLAN_SIZES
    with tempfile.TemporaryDirectory(prefix="offload-compiled-") as scratch:
        site = _compiled(Path(scratch), section)
        for nodes in sizes:
            _plan(nodes, site, section)
            save("planning", section)
    return section


def _compiled(scratch: Path, section: dict[str, Any]) -> Path | None:
    """offload built compiled into ``scratch``; None, with the error in ``section``, if the
    build failed (the interpreted figures still stand)."""
    log("building offload compiled (setup.py, OFFLOAD_USE_MYPYC=1)")
    try:
        return install_compiled(scratch)
    except (AssertionError, OSError, subprocess.SubprocessError) as exc:
        section["compiled_error"] = str(exc)[-500:]
        log(f"  -> the compiled build failed: {section['compiled_error']}")
        return None


def _compiled_moves(site: Path, nodes: int) -> float:
    """``moves_cost`` of ``nodes`` timed in a process whose ``offload`` is the compiled build."""
    code = f"from bench.plan_moves import moves_cost; print(moves_cost({nodes}, 100, seed=0))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}"),
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    return float(done.stdout.split()[-1])


def _plan(nodes: int, site: Path | None, section: dict[str, Any]) -> None:
    """Times planning ``nodes``: interpreted, with input moves, and those compiled. A failed
    compiled run is recorded beside the interpreted figures, which still stand."""
    log(f"planning {nodes} nodes on 100 simulated machines")
    try:
        from offload.scheduler.generated import plan_cost

        cost = plan_cost(nodes, 100, seed=0)
        moves = moves_cost(nodes, 100, seed=0)
    except (ImportError, OffloadError, ValueError) as exc:
        section["runs"].append({"nodes": nodes, "status": "failed", "error": str(exc)})
        return
    run: dict[str, Any] = {
        "nodes": nodes,
        "status": "ok",
        "seconds": round(cost.seconds, 4),
        "peak_bytes": cost.peak_bytes,
        "input_moves_seconds": round(moves, 4),
        "compiled_moves_seconds": None,
    }
    if site is not None:
        try:
            run["compiled_moves_seconds"] = round(_compiled_moves(site, nodes), 4)
        except (OSError, ValueError, IndexError, subprocess.SubprocessError) as exc:
            run["compiled_error"] = _why(exc)
    section["runs"].append(run)
    compiled = run["compiled_moves_seconds"]
    shown = run.get("compiled_error") or ("-" if compiled is None else f"{compiled:.2f} s")
    log(
        f"  -> {cost.seconds:.2f} s, {cost.peak_bytes / (1 << 20):.1f} MiB;"
        f" with input moves (as offload build plans) {moves:.2f} s, compiled {shown}"
    )


def _why(exc: Exception) -> str:
    """One line on why a compiled run failed: its last line on stderr, if it said one."""
    said = getattr(exc, "stderr", None)
    lines = said.strip().splitlines() if isinstance(said, str) else []
    return (lines[-1] if lines else str(exc))[-300:]


def simulate_run(opts: Options, save: Save) -> dict[str, Any]:
    log("simulating 50,000 nodes on 200 machines under both policies")
    section = simulate_section(1_000 if opts.quick else 50_000)
    save("simulate", section)
    return section
