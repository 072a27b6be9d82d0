"""What reading the tails costs the hook's coordinator (``offload.hook.keep.Keep.tails``).

``python -m bench.tails_read`` writes a history under a temporary state directory as a busy
user's would hold it: ``--names`` derivation names built ``--runs`` times by ``offload-hook``,
each build on up to 7 earlier names, durations spread over the bench fleet's machines (so the
read keeps its newest 20,000 edges, ``History.recent_deps``). It then times the first read (done
at once, in the caller) and a read again (done in a thread while the last tails serve), the
latter as the longest the event loop went without running a 1 ms ticker meanwhile: what every
hook the coordinator serves waits at most. Medians of ``--repeat`` rounds; the name cache is
emptied before each, as a coordinator's first read finds it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from offload.history.db import History
from offload.history.records import BuildRecord
from offload.history.tails import name_of
from offload.hook import keep as keep_module
from offload.hook.keep import Keep

__all__ = ["main"]

_SPEEDS = {"fast": 4.0, "medium": 2.0, "slow": 1.0}
_INPUTS = 7


def _drv(name: str, run: int) -> str:
    digest = hashlib.sha256(f"{name}/{run}".encode()).hexdigest()[:32]
    # Store path hashes use Nix's base-32 alphabet, which has no e, o, t or u.
    return f"/nix/store/{digest.translate(str.maketrans('eotu', 'abcd'))}-{name}.drv"


def write_history(state: Path, names: int, runs: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    named = [f"pkg{i}-{rng.randint(1, 9)}.{rng.randint(0, 20)}" for i in range(names)]
    with History(state / "history.sqlite") as history:
        for run in range(runs):
            records, deps = [], {}
            for i, name in enumerate(named):
                drv = _drv(name, run)
                pname = name.rsplit("-", 1)[0]
                machine = rng.choice(list(_SPEEDS))
                seconds = rng.uniform(1, 60)
                records.append(
                    BuildRecord(f"hook-{run}-{i}", drv, pname, machine, 0.0, seconds, "built")
                )
                below = rng.sample(range(i), min(i, _INPUTS))
                deps[drv] = [_drv(named[j], run) for j in below]
            history.record(records, deps)


async def _read_again(keep: Keep) -> float:
    """The longest gap of a 1 ms ticker while the tails are read again in a thread."""
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    gaps.clear()
    keep.tails(_SPEEDS)
    reading = keep.tails_reading
    assert reading is not None
    await reading
    ticker.cancel()
    await keep.aclose()
    return max(gaps, default=0.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="oftails") as directory:
        state = Path(directory)
        write_history(state, args.names, args.runs)
        firsts, gaps = [], []
        kept_for = keep_module.TAILS_SECONDS
        keep_module.TAILS_SECONDS = -1.0  # every call after the first reads again
        try:
            for _ in range(args.repeat):
                keep = Keep(state)
                name_of.cache_clear()
                began = time.perf_counter()
                found = keep.tails(_SPEEDS)
                firsts.append(time.perf_counter() - began)
                name_of.cache_clear()
                gaps.append(asyncio.run(_read_again(keep)))
                keep.history().close()
        finally:
            keep_module.TAILS_SECONDS = kept_for
    print(
        f"{len(found)} names, {args.names * args.runs} builds: first read (at once)"
        f" {statistics.median(firsts) * 1000:.0f} ms; read again in a thread: the event loop's"
        f" longest gap {statistics.median(gaps) * 1000:.1f} ms (medians of {args.repeat})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
