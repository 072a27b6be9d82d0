"""A builder's failures as hook processes meet them (``HookContext.machine_failed``): one
outage is one failure, whichever process found it first, and each nix-build is told of it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from offload.backoff import Health, load_backoff, save_backoff
from tests.helpers.hook_contexts import SYSTEM, hook_context

BUILDERS = f"ssh://nx-b.invalid {SYSTEM} - 2\n"
REFUSED = "ssh: connect to host nx-b.invalid: Connection refused"


def test_an_outage_another_process_wrote_a_moment_after_this_ones_clock_is_one_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two hook processes fail at once: B read its clock after A's and took the backoff file's
    # lock first; A found a start a few ms "in the future" and counted a second failure.
    now = time.time()
    context = hook_context(tmp_path, BUILDERS)
    connection = context.machine("nx-b.invalid").connection_id
    other = Health(1, now + 0.005 + 60, "refused", connection, now + 0.005)
    save_backoff(tmp_path / "backoff.json", {"nx-b.invalid": other}, now)
    monkeypatch.setattr(time, "time", lambda: now)
    context.machine_failed("nx-b.invalid", REFUSED)
    [health] = load_backoff(tmp_path / "backoff.json", now).values()
    assert health.failures == 1


def test_a_later_outage_is_told_to_a_nix_build_told_of_an_earlier_one(tmp_path: Path) -> None:
    # "told" was kept per builder for the whole nix-build: a new backoff another process
    # found went unsaid to a client told of the builder's earlier one.
    said: list[bytes] = []
    context = hook_context(tmp_path, BUILDERS, said)
    context.verbosity = 1
    context.machine_failed("nx-b.invalid", REFUSED)
    now = time.time()
    connection = context.machine("nx-b.invalid").connection_id
    later = Health(2, now + 180, "refused again", connection, now)  # another process's, now
    save_backoff(tmp_path / "backoff.json", {"nx-b.invalid": later}, now)
    context.machine_failed("nx-b.invalid", REFUSED)
    told = [line for line in b"".join(said).decode().splitlines() if "failed:" in line]
    assert len(told) == 2, told
    [health] = load_backoff(tmp_path / "backoff.json", now).values()
    assert health.failures == 2  # merged with the other process's


def test_a_failure_just_after_a_short_backoff_ended_is_a_new_one(tmp_path: Path) -> None:
    # A run saved a backoff with seconds left (its ``since`` is when it saved): an outage
    # found after it ended was merged into it as "the same one", and the builder was not
    # backed off at all ("backed off until <a time past>").
    now = time.time()
    context = hook_context(tmp_path, BUILDERS)
    connection = context.machine("nx-b.invalid").connection_id
    ended = Health(1, now - 5, "refused", connection, now - 20)
    save_backoff(tmp_path / "backoff.json", {"nx-b.invalid": ended}, now - 20)
    context.machine_failed("nx-b.invalid", REFUSED)
    [health] = load_backoff(tmp_path / "backoff.json", time.time()).values()
    assert health.failures == 2  # counted on from the ended one
    assert health.until > now + 170  # 60 s x 3
