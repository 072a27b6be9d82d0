"""How long a history's pruning pass takes, what it frees, and how long it holds the lock.

``python -m bench.history_prune --builds 100000``: a history of ``--builds`` hook builds spread
evenly over the last 180 days (``--names`` derivation names on four machines, each build with
``--inputs`` input derivations, as ``History.record`` writes them), then one pass
(``History.prune_if_due``). Prints the file's size before and after, what was forgotten, the
pass's wall time and the longest transaction of it (the longest a hook recording a build
meanwhile could wait), that the estimates of every name are unchanged, and the next day's
pass (what a history pruned daily pays).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from offload.history.db import History
from offload.history.records import BuildRecord

__all__ = ["main"]

_DAY = 86_400.0
_MACHINES = ("fast", "medium", "slow", "local")


def _drv(n: int, name: str) -> str:
    return f"/nix/store/{n:032d}-{name}-1.0.drv"


def fill(history: History, builds: int, names: int, inputs: int, now: float) -> None:
    rng = random.Random(1)
    batch: list[BuildRecord] = []
    deps: dict[str, tuple[str, ...]] = {}
    for i in range(builds):
        name = f"p{rng.randrange(names)}"
        end = now - 180 * _DAY * (builds - i) / builds
        drv = _drv(i, name)
        status = "built" if rng.random() < 0.9 else "failed"
        machine = rng.choice(_MACHINES)
        batch.append(BuildRecord(f"hook-{i}", drv, name, machine, end - 30, end, status))
        deps[drv] = tuple(_drv(rng.randrange(builds), "in") for _ in range(inputs))
        if len(batch) == 50_000:
            history.record(batch, deps)
            batch, deps = [], {}
    history.record(batch, deps)


def _timed_transactions(history: History, longest: list[float]) -> None:
    """Wrap ``history``'s transactions to keep the longest one's seconds."""
    opened = history._transaction  # noqa: SLF001 - measuring it is this bench's point

    @contextlib.contextmanager
    def timed() -> Iterator[object]:
        began = time.perf_counter()
        with opened() as db:
            yield db
        longest[0] = max(longest[0], time.perf_counter() - began)

    history._transaction = timed  # type: ignore[assignment,method-assign]  # noqa: SLF001


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--builds", type=int, default=100_000)
    parser.add_argument("--names", type=int, default=20_000)
    parser.add_argument("--inputs", type=int, default=40)
    args = parser.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.sqlite"
        with History(path) as history:
            fill(history, args.builds, args.names, args.inputs, now)
            names = [f"p{i}" for i in range(args.names)]
            before = history.durations(names)
        size = path.stat().st_size
        with History(path) as history:
            longest = [0.0]
            _timed_transactions(history, longest)
            began = time.perf_counter()
            pruned = history.prune_if_due(now, budget=600)
            took = time.perf_counter() - began
            same = history.durations(names) == before
            began = time.perf_counter()
            next_day = history.prune_if_due(now + _DAY, budget=600)
            daily = time.perf_counter() - began
        print(
            f"{args.builds} builds ({args.inputs} inputs each, 180 days): {size / 2**20:.0f} MiB"
            f" -> {path.stat().st_size / 2**20:.0f} MiB; forgot {pruned}; pass {took:.2f} s,"
            f" longest transaction {longest[0]:.2f} s; estimates unchanged: {same}; the next"
            f" day's pass {daily:.2f} s, forgot {next_day}"
        )


if __name__ == "__main__":
    main()
