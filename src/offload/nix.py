"""argv builders for the local Nix commands offload runs (evaluation and GC roots).

Only argv assembly and output parsing live here; ``offload.process`` runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from offload.errors import OffloadError, StoreError
from offload.process import run
from offload.store.path import StorePath

__all__ = ["Installables", "add_root_argv", "instantiate", "instantiate_argv"]


@dataclass(frozen=True)
class Installables:
    """What to build, as nix-build takes it."""

    files: tuple[str, ...] = ()
    attrs: tuple[str, ...] = ()
    expr: str | None = None
    args: tuple[tuple[str, str], ...] = ()  # --arg NAME EXPR
    argstrs: tuple[tuple[str, str], ...] = ()  # --argstr NAME VALUE


def instantiate_argv(what: Installables, file: str) -> list[str]:
    argv = ["nix-instantiate", "--option", "substituters", ""]
    for name, value in what.args:
        argv += ["--arg", name, value]
    for name, value in what.argstrs:
        argv += ["--argstr", name, value]
    for attr in what.attrs:
        argv += ["-A", attr]
    if what.expr is not None:
        argv += ["-E", what.expr]
    else:
        argv += ["--", file]
    return argv


def instantiate(what: Installables) -> list[tuple[str, str]]:
    """Evaluate to (.drv path, output) pairs; `.drv` paths given directly are taken as they are."""
    drvs: list[tuple[str, str]] = []
    sources = list(what.files) if what.expr is None else ["-E"]
    for source in sources or ["./default.nix"]:
        if source.endswith(".drv") and source.startswith("/"):
            drvs += [(str(StorePath.parse(source)), out) for out in _drv_outputs(source)]
            continue
        done = run(instantiate_argv(what, source), check=False)
        if done.returncode != 0:
            errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
            detail = errors[0].removeprefix("error:").strip() if errors else done.stderr.strip()
            raise OffloadError(
                f"evaluating {source if source != '-E' else 'the expression'} failed: {detail}",
                hint="run nix-instantiate with the same arguments to see the whole trace",
            )
        for line in done.stdout.split():
            # One .drv per derivation; Nix appends "!name" when the selected output is not out.
            drv, _, output = line.partition("!")
            drvs.append((str(StorePath.parse(drv)), output or "out"))
    if not drvs:
        raise StoreError("the expression produced no derivations")
    return drvs


def _drv_outputs(drv_path: str) -> list[str]:
    # nix-build DRV builds every output of the derivation.
    from offload.store.drv import read_derivation

    return sorted(read_derivation(drv_path).outputs)


def add_root_argv(path: str, link: str) -> list[str]:
    # nix-build's own way of making ./result: an indirect GC root pointing at the output.
    return ["nix-store", "--realise", path, "--add-root", link, "--indirect"]


def add_roots(pairs: Sequence[tuple[str, str]]) -> None:
    for path, link in pairs:
        run(add_root_argv(path, link))
