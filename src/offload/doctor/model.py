"""What `offload doctor` finds: a verdict per check, one row of checks per machine.

A ``Check`` is one question asked of one machine (does its name resolve, does ssh get in, ...),
answered with a ``Verdict``, a detail in the user's words and, when something is wrong, the fix.
``CHECKS`` is the closed list of checks in the order they run: the first five are
prerequisites, each needing the one before it (no port without an address, no serve session
without ssh), so the first of them that fails makes the rest ``skipped``. The others only need
a session and are all asked. A ``MachineReport`` is one machine's row and how long it took.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict

__all__ = [
    "CHECKS",
    "PREREQUISITES",
    "Check",
    "CheckJson",
    "MachineJson",
    "MachineReport",
    "Verdict",
    "skipped",
]


class Verdict(enum.StrEnum):
    OK = "ok"
    WARN = "warn"  # usable, but something is wasted or will bite later
    FAIL = "fail"  # builds sent there fail, or never get there
    SKIPPED = "skipped"  # not asked: a prerequisite failed
    UNKNOWN = "unknown"  # cannot be asked there (the builder's key runs only the serve program)


PREREQUISITES = ("resolve", "port", "ssh", "nix", "serve")
CHECKS = (
    *PREREQUISITES,
    "systems",
    "features",
    "trusted",
    "disk",
    "load",
    "slots",
    "rtt",
    "throughput",
    "cipher",
)


class CheckJson(TypedDict):
    name: str
    verdict: str
    detail: str
    fix: str | None


class MachineJson(TypedDict):
    name: str
    uri: str
    ok: bool
    seconds: float
    checks: list[CheckJson]


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    fix: str | None = None

    def as_json(self) -> CheckJson:
        return {
            "name": self.name,
            "verdict": self.verdict.value,
            "detail": self.detail,
            "fix": self.fix,
        }


def skipped(names: Iterable[str], after: str, why: str = "failed") -> list[Check]:
    """The checks ``names`` left unasked because ``after`` failed (or ``why``)."""
    return [Check(name, Verdict.SKIPPED, f"not checked: {after} {why}") for name in names]


@dataclass(frozen=True)
class MachineReport:
    name: str
    uri: str
    checks: tuple[Check, ...]
    seconds: float

    @property
    def failed(self) -> bool:
        return any(check.verdict == Verdict.FAIL for check in self.checks)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def as_json(self) -> MachineJson:
        return {
            "name": self.name,
            "uri": self.uri,
            "ok": not self.failed,
            "seconds": round(self.seconds, 3),
            "checks": [check.as_json() for check in self.checks],
        }
