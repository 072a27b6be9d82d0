"""What nix-build does with its roots once they are built, done as it does it: the result links
(``result``, ``result-2``, ``result-dev``: indirect GC roots made by the local ``nix-store``)
and ``--check`` / ``--repair``, which only the local Nix can carry out.

Only argv assembly and the naming rules live here; ``offload.process`` runs the commands.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

from offload.errors import NixError
from offload.nix import Env, first_error_line
from offload.process import Started, run

__all__ = ["add_root_argv", "add_roots", "realise_again", "realise_argv", "result_links"]


def result_links(roots: Sequence[tuple[str, str]], base: str) -> list[str]:
    """The link nix-build makes for each root: result, result-2, result-dev, result-2-bin.

    nix-build numbers derivations, not roots: the Nth distinct .drv gets "-N" (none for the
    first), and an output other than out adds "-OUTPUT"; so ``-A m.dev -A a -A m`` makes
    result-dev, result-2 and result.
    """
    numbers: dict[str, int] = {}
    links = []
    for drv, output in roots:
        number = numbers.setdefault(drv, len(numbers) + 1)
        link = base if number == 1 else f"{base}-{number}"
        links.append(link if output == "out" else f"{link}-{output}")
    return links


def realise_argv(
    roots: Sequence[tuple[str, str]], mode: Literal["check", "repair"], flags: Sequence[str] = ()
) -> list[str]:
    """nix-store building ``roots`` again (``--check``) or repairing their closure, with
    nix-build's ``flags`` (``build_args.realise_flags``).

    ``--no-gc-warning``: nix-build makes no "you did not specify '--add-root'" warning."""
    argv = ["nix-store", "--realise", f"--{mode}", "--no-gc-warning", *flags, "--"]
    return argv + [f"{d}!{o}" for d, o in roots]


def realise_again(
    roots: Sequence[tuple[str, str]],
    mode: Literal["check", "repair"],
    env: Env = None,
    flags: Sequence[str] = (),
) -> None:
    """nix-build's --check and --repair, which only the local Nix can carry out: the serve
    protocol has no build mode. Its stderr is shown as it comes (a check of a long build
    says what it does meanwhile); a failure keeps Nix's exit status."""
    started = Started(realise_argv(roots, mode, flags), env=env, stderr_lines=_said)
    try:
        done = started.finish()
    except BaseException:
        started.stop()  # a Ctrl-C: Nix stops its builds (SIGTERM first)
        raise
    if done.returncode != 0:
        first = first_error_line(done.stderr)  # its stderr was shown whole as it came
        raise NixError(f"--{mode} failed: {first}", text="", status=done.returncode)


def _said(line: str) -> None:
    sys.stderr.write(line + "\n")


def add_root_argv(paths: Sequence[str], link: str) -> list[str]:
    # nix-build's own way of making ./result: an indirect GC root pointing at the output;
    # several paths get LINK, LINK-2, LINK-3...
    return ["nix-store", "--realise", *paths, "--add-root", link, "--indirect"]


def _link_batches(pairs: Sequence[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """The nix-store calls making ``pairs``' links: one for all when their names are those it
    gives a batch (result, result-2, result-3: each root its own derivation's out, as for
    -A a -A b or a set of packages; about 20 ms a call, so a thousand links took 20 s),
    else one per link (result-dev, a derivation named twice)."""
    base = pairs[0][1] if pairs else ""
    numbered = [base, *(f"{base}-{n}" for n in range(2, len(pairs) + 1))]
    if len(pairs) > 1 and [link for _, link in pairs] == numbered:
        return [([path for path, _ in pairs], base)]
    return [([path], link) for path, link in pairs]


def add_roots(pairs: Sequence[tuple[str, str]]) -> None:
    """The result links, in order; the first that cannot be made stops them with Nix's own
    words (``NixError``), as nix-build says it ("cannot create symlink '...'; already
    exists"), not the nix-store command offload ran."""
    for paths, link in _link_batches(pairs):
        done = run(add_root_argv(paths, link), check=False)
        if done.returncode != 0:
            first = first_error_line(done.stderr)
            text = done.stderr or f"error: nix-store exited with {done.returncode}\n"
            raise NixError(f"the result link {link} was not made: {first}", text=text)
