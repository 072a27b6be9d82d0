"""How long reading a ``.drv`` takes: ``parse_derivation`` against the cursor parser alone.

``python -m bench.drv_parse --nodes 5000`` instantiates a generated layered graph of ``--nodes``
derivations (``bench.graphs``; each has the bench's shell script, about 50 escapes, and about
ten variables) into the local store, reads every file once, then parses them all with each
reader in turn, ``--reps`` times, and prints the microseconds per derivation of each pass. Both
readers must give equal derivations, or it says so and exits 1.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.graphs import generate
from offload.dagfile import to_nix_expression
from offload.store.drv import Derivation, cursor_parse, parse_derivation

__all__ = ["main"]


def instantiate(nodes: int) -> list[bytes]:
    """The bytes of ``nodes`` fresh derivations, written to the store by nix-instantiate."""
    dag = generate("layered", nodes, 7, scale=0.01, prefix="drv-parse")
    with tempfile.TemporaryDirectory(prefix="drv-parse-") as scratch:
        graph = Path(scratch) / "graph.nix"
        graph.write_text(to_nix_expression(dag, salt=secrets.token_hex(4)), encoding="utf-8")
        listed = Path(scratch) / "all.nix"
        # A set, or a list where a name is not one a set can give (``to_nix_expression``).
        every = f"let g = import {graph}; in if builtins.isList g then g else builtins.attrValues g"
        listed.write_text(every + "\n", encoding="utf-8")
        done = subprocess.run(
            ["nix-instantiate", str(listed)],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    return [Path(line).read_bytes() for line in done.stdout.split()]


def _pass(reader: Callable[[bytes], Derivation], datas: Sequence[bytes]) -> float:
    began = time.perf_counter()
    for data in datas:
        reader(data)
    return (time.perf_counter() - began) / len(datas) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    datas = instantiate(args.nodes)
    if [parse_derivation(d) for d in datas] != [cursor_parse(d) for d in datas]:
        print("the readers disagree")
        return 1
    size = sum(map(len, datas)) / len(datas)
    print(f"{len(datas)} derivations, {size:.0f} bytes each on average")
    for rep in range(args.reps):
        cursor, scanned = _pass(cursor_parse, datas), _pass(parse_derivation, datas)
        print(f"pass {rep + 1}: cursor parser {cursor:.1f} us, parse_derivation {scanned:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
