"""The copy section of docs/BENCHMARKS.md: offload's closure copy against nix-copy-closure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.report_format import bytes_text, failures, ok_text
from bench.report_summaries import TARGETS, summarize_copy
from bench.stats import text


def copy_targets(results: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    copy = summarize_copy(results["copy"]) if results.get("copy") else None
    if copy:
        measured = "; ".join(
            f"{'compressed' if v.compress else 'plain'} {text(v.ratio)}" for v in copy.variants
        )
        # nix-copy-closure is timed as a process, offload's copy inside a running offload
        # (its interpreter's start-up, paid once a run, is in "Fixed costs of a run").
        lines.append(
            f"| copying a {bytes_text(copy.total_bytes)} closure in at most "
            f"{TARGETS.copy_ratio:g}x nix-copy-closure's time (offload's copy alone: its "
            f"process's start-up is a run's, measured apart) | "
            f"offload/nix-copy-closure {measured or '-'} | {copy.verdict} |"
        )
    return lines


def copy_body(results: Mapping[str, Any], _plots: Mapping[str, str]) -> list[str]:
    copy = summarize_copy(results["copy"]) if results.get("copy") else None
    lines: list[str] = []
    if copy:
        section = results["copy"]
        lines += [
            "",
            "## Copying a closure",
            "",
            (
                f"{section.get('paths', '?')} store paths of {bytes_text(copy.total_bytes)} in all "
                "(half random bytes, half compressible text) copied from this machine to the "
                f"member `{section.get('member', '?')}`, which lacks them each time. Wire bytes "
                "are what ssh reports it sent (`Transferred:`, `LogLevel=VERBOSE`); compression is "
                "ssh's `-C`."
            ),
            "",
            (
                "| | nix-copy-closure (s) | offload (s) | offload / nix-copy-closure | wire bytes "
                "nix-copy-closure | wire bytes offload |"
            ),
            "|---|---|---|---|---|---|",
        ]
        for v in copy.variants:
            lines.append(
                f"| {'compressed' if v.compress else 'uncompressed'} "
                f"(ok {ok_text(v.counts['nix'])}, {ok_text(v.counts['offload'])}) | "
                f"{text(v.nix)} | {text(v.offload)} | {text(v.ratio)} | "
                f"{bytes_text(v.nix_wire.median if v.nix_wire else None)} | "
                f"{bytes_text(v.offload_wire.median if v.offload_wire else None)} |"
            )
        lines += ["", f"Status: {copy.verdict}."]
        for tool, label in (("nix", "nix-copy-closure"), ("offload", "offload")):
            for failure in failures(section["runs"], tool):
                lines.append(f"- {label} failed, {failure}")
        if section.get("offload_copy"):
            lines += ["", f"offload's copy: {section['offload_copy']}."]
    return lines
