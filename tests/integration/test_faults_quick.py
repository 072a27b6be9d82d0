"""A quick pass of the fault suite (``make faults`` runs it in full): one run of each fault that
tests what offload does about a builder going wrong, on a fleet of the test's own.

Each run must end with correct outputs or a clear error, the fault said, no partial path
registered anywhere, nothing left running and no slot lock held; a frozen builder noticed
within 15 s; a full disk must not fail the build, and its partial outputs must be gone.

The frozen builder's run gives ssh a user's keepalive in NIX_SSHOPTS (``SHORT_KEEPALIVE``: ssh
gives it up after 4 s, not 12 s); ``make faults`` and test_frozen_builder.py's ``[json]`` keep
offload's own.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.faults.scenarios import FAULTS, SPECS, Suite, Trial, clean_work

from offload.fleet import Fleet
from offload.typing_compat import override
from tests.helpers.fleets import private_fleet
from tests.helpers.offload_run import SHORT_KEEPALIVE

NOTICE_TARGET = 15.0


@dataclasses.dataclass(frozen=True)
class _KeptAlive(Fleet):
    """A fleet whose runs give ssh ``SHORT_KEEPALIVE`` first in NIX_SSHOPTS, as a user may."""

    @property
    @override
    def sshopts(self) -> str:
        return " ".join([*SHORT_KEEPALIVE.options(), super().sshopts])


@pytest.fixture(scope="module")
def suite() -> Iterator[Suite]:
    with (
        private_fleet(SPECS, prefix="ofq") as fleet,
        tempfile.TemporaryDirectory(prefix="ofqw", dir="/tmp") as work,
    ):
        yield Suite(fleet, fleet.dir, Path(work), random.Random(14))  # noqa: S311 - not for secrets


def run(suite: Suite, fault: str) -> Trial:
    trial = FAULTS[fault](suite)
    clean_work(suite.work)
    assert trial.ok, trial
    assert trial.left.broken == []
    assert trial.left.processes == []
    assert trial.left.locks == []
    return trial


def test_a_frozen_builder_is_noticed_in_time_and_its_work_done_elsewhere(suite):
    fleet = _KeptAlive(suite.fleet.dir, suite.fleet.members, suite.fleet.system)
    trial = run(dataclasses.replace(suite, fleet=fleet), "frozen")
    assert trial.correct, trial
    assert trial.notice is not None, "no member was building when it was frozen"
    assert trial.notice <= NOTICE_TARGET, trial


def test_a_full_disk_on_a_builder_moves_the_build_and_leaves_nothing_there(suite):
    trial = run(suite, "store full")
    assert trial.correct, trial
    assert trial.left.partial == [], trial


@pytest.mark.parametrize(
    "fault", ["killed", "cut", "SIGTERM", "restricted", "wrong key", "untrusted user"]
)
def test_other_faults_end_cleanly(suite, fault):
    trial = run(suite, fault)
    if fault in {"killed", "cut", "restricted", "wrong key", "untrusted user"}:
        assert trial.correct, trial
