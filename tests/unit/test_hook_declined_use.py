"""A derivation declined for backoff says so when `offload use` left out builders that could
build it (an exploratory tester read "only 'slow' could build it" with fast and medium up), and
one moved by a choice made while it waited says so."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from offload.config.machines import parse_machines
from offload.config.pool import Pool
from offload.config.settings import LocalMachine
from offload.hook.backed_off import _left_out_by_use, _local, declined_line
from offload.hook.context import HookContext
from offload.hook.keep import Keep
from offload.hook.run import _why_moved
from offload.hook.wire import TryRequest

SYSTEM = "x86_64-linux"
REQUEST = TryRequest(False, SYSTEM, "/nix/store/" + "a" * 32 + "-x.drv", frozenset())


def _context(lines: str, chosen: set[str] | None, local: LocalMachine | None = None) -> HookContext:
    machines, _ = parse_machines(lines, source="m", system=SYSTEM)
    whole = Pool(local, tuple(machines), (), local)
    if chosen is None:  # no choice in force
        return cast("HookContext", SimpleNamespace(pool=whole, whole=None))
    # As the hook's context selects it (``context._chosen``).
    pool = whole.select(on=sorted(chosen), max_jobs=None)
    return cast("HookContext", SimpleNamespace(pool=pool, whole=whole))


def test_the_decline_says_offload_use_left_the_others_out():
    lines = "slow x86_64-linux - 1 1\nfast x86_64-linux - 1 1\nkvm aarch64-linux - 1 1\n"
    assert _left_out_by_use(_context(lines, {"slow"}), REQUEST)
    assert not _left_out_by_use(_context(lines, {"slow", "fast"}), REQUEST)  # kvm cannot
    assert not _left_out_by_use(_context(lines, None), REQUEST)
    line = declined_line(REQUEST.drv_path, ("slow",), 0.0, "local cannot", chosen=True)
    assert "only 'slow' could build it of the builders `offload use` chooses" in line
    assert "`offload use` chooses" not in declined_line(REQUEST.drv_path, ("slow",), 0.0, "x")


def test_a_local_machine_offload_use_leaves_out_is_not_said_to_build_nothing() -> None:
    # `offload use slow` with the local machine able to build: "the local machine builds
    # nothing here: max-jobs is 0", and Nix then built it here (hook tester).
    lines = "slow x86_64-linux - 1 1\n"
    local = LocalMachine(1.0, 1, (SYSTEM,), frozenset())
    said = _local(_context(lines, {"slow"}, local=local), REQUEST)
    assert said.startswith("`offload use` leaves the local machine out")
    assert "max-jobs is 0" not in said.split("unless")[0]
    assert _local(_context(lines, {"slow"}, local=None), REQUEST).endswith("max-jobs is 0")
    # Nor said to build it where it lacks the system (a review): Nix then cannot either;
    # what it lacks is named (a tester read "its system or features").
    unfit = LocalMachine(1.0, 1, ("aarch64-linux",), frozenset({"kvm"}))
    said = _local(_context(lines, {"slow"}, local=unfit), REQUEST)
    assert said == f"the local machine lacks system {SYSTEM}"
    wants = TryRequest(False, "aarch64-linux", REQUEST.drv_path, frozenset({"kvm", "cuda", "gpu"}))
    said = _local(_context(lines, {"slow"}, local=unfit), wants)
    assert said == "the local machine lacks features cuda, gpu"


def test_a_build_moved_by_offload_use_says_so_not_that_a_slot_freed() -> None:
    # A choice made while it waited for fast moved it to slow: "a slot on 'slow' freed first".
    lines = "slow x86_64-linux - 1 1\nfast x86_64-linux - 1 1\n"
    chosen = _context(lines, {"slow"})
    chosen.keep = cast("Keep", SimpleNamespace(full=SimpleNamespace(since=dict)))
    assert _why_moved(chosen, "fast", "slow", set()) == "`offload use` leaves 'fast' out now"
    free = _context(lines, None)
    free.keep = cast("Keep", SimpleNamespace(full=SimpleNamespace(since=dict)))
    assert _why_moved(free, "fast", "slow", set()) == "a slot on 'slow' freed first"
