"""What `offload build` is asked to build, evaluated with the local Nix the way nix-build does it.

nix-build's positional arguments are Nix files (a directory means DIR/default.nix; ``<name>``
lookup paths, URLs and ``channel:NAME`` are Nix's to resolve), `.drv` store paths
(``DRV!OUTPUT`` picks one output), or, with ``-E`` (a switch, anywhere on the line),
expressions: every one of them. A ``-`` among them, with or without ``-E``, is the expression
on standard input, and then the only thing evaluated: nix-build 2.8 ignores every other
argument then (nix-instantiate reads it, so Nix's errors name «stdin»). offload adds
``FLAKEREF#ATTR`` (an argument with a ``#`` that is not an existing file), evaluated with
``nix eval`` and resolved as ``nix build`` resolves it (packages.SYSTEM.ATTR,
legacyPackages.SYSTEM.ATTR, then ATTR).

Each source yields *roots*: (.drv path, output name) pairs, in nix-build's order: `.drv`
arguments first (nix-build collects them while it parses its arguments), then each file or
expression with each ``-A`` attribute in turn. Lists and attribute sets of derivations are
nix-instantiate's to expand (top-level attributes, and deeper ones only under
``recurseForDerivations = true``), which is exactly what nix-build does with them.

Every user value reaches Nix as one argv element, never through a shell and never spliced into
Nix code. ``--`` ends the options, but Nix 2.8's legacy parser still refuses a positional
argument that starts with ``-`` after it, so such files get a ``./`` and such expressions a
leading space.

nix-build's evaluation flags (``-I``, ``--show-trace``, ``--impure``, ``-v``) go to the evaluators
as they are, the run's ``--option``s through their environment (NIX_CONFIG). A failed evaluation
is ``NixError`` with Nix's whole stderr (position, code frame, suggestion), which the CLI prints
as nix-build would; a successful one's stderr (``trace:``, warnings) is passed on line by line.

Only argv assembly, the classification of arguments and output parsing live here;
``offload.process`` runs the commands.
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from offload.errors import ConfigError, NixError, OffloadError
from offload.process import Completed, Started
from offload.protocol.serve import strip_ansi
from offload.store.drv import read_derivation
from offload.store.path import StorePath, is_store_path

__all__ = [
    "FLAKE_APPLY",
    "Evaluation",
    "Installables",
    "Source",
    "error_position",
    "first_error_line",
    "flake_eval_argv",
    "instantiate",
    "instantiate_argv",
    "sources",
]

NIX_FEATURES = ["--extra-experimental-features", "nix-command flakes"]

# Applied by `nix eval` to the flake output: what nix build 2.8 builds of it is its drvPath and
# its outputName (`.#pkg.dev` selects the dev output, a plain derivation its first output).
FLAKE_APPLY = (
    'd: if builtins.isAttrs d && (d.type or null) == "derivation" '
    'then { drvPath = d.drvPath; outputName = d.outputName or "out"; } '
    'else throw "the flake output is not a derivation"'
)


AutoArg = Literal["--arg", "--argstr"]


@dataclass(frozen=True)
class Installables:
    """What to build, as nix-build takes it.

    ``files`` are the positional arguments (FILE, DIR, DRV[!OUTPUT], FLAKEREF#ATTR); with
    ``expr`` (nix-build's ``-E``, a switch) every one of them is an expression instead.
    """

    files: tuple[str, ...] = ()
    attrs: tuple[str, ...] = ()  # -A, each applied to each file or expression
    expr: bool = False  # -E: ``files`` are expressions
    # ("--arg", NAME, EXPR) and ("--argstr", NAME, VALUE) in command-line order: Nix's last
    # one for a name wins, whichever of the two it is.
    args: tuple[tuple[AutoArg, str, str], ...] = ()
    # nix-build's evaluation flags, given to Nix as they are: -I, --show-trace, --impure, -v.
    flags: tuple[str, ...] = ()


SourceKind = Literal["file", "expr", "stdin", "drv", "flake"]
Env = Mapping[str, str] | None
Say = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    """One thing to evaluate; ``text`` is what Nix is given (a file, expression, .drv, flake)."""

    kind: SourceKind
    text: str
    output: str | None = None  # for DRV!OUTPUT

    def describe(self) -> str:
        if self.kind == "stdin":
            return "the expression on standard input"
        if self.kind != "expr":
            return self.text
        one_line = " ".join(self.text.split())
        return f"-E {shlex.quote(one_line)}" if len(one_line) <= 40 else "the -E expression"


def _nix_resolves(arg: str) -> bool:
    """A ``<name>`` lookup in the search path, a URL or a ``channel:NAME``: no local file,
    Nix finds or downloads it (its lookupFileArg)."""
    return arg.startswith(("<", "channel:")) or "://" in arg


def _as_drv(arg: str, cwd: Path) -> Source | None:
    # nix-build canonicalises the argument (symlinks resolved) and takes it as a derivation when
    # that is a store path ending in .drv; "DRV!OUTPUT" names one output of it.
    path, bang, output = arg.partition("!")
    if _nix_resolves(path):
        return None
    # Resolved first: a link named anything (nix-instantiate --add-root ./mydrv) counts.
    try:
        real = (cwd / path).resolve()
    except (RuntimeError, OSError) as exc:  # RuntimeError: a loop of links (Python 3.11)
        raise ConfigError(
            f"{arg}: too many symbolic links encountered while resolving it",
            hint="a link points back to itself: fix or remove it",
        ) from exc
    if not (is_store_path(str(real)) and real.name.endswith(".drv")):
        return None
    if not real.exists():
        raise ConfigError(f"{arg}: no such file", hint="instantiate it first (nix-instantiate)")
    return Source("drv", str(real), output if bang else None)


def _as_file(arg: str, cwd: Path) -> Source:
    if _nix_resolves(arg):
        return Source("file", arg)
    path = cwd / arg
    if path.is_dir():
        path /= "default.nix"
        shown = arg.rstrip("/") + "/default.nix"
    else:
        shown = arg
    if not path.exists():
        hint = "give a Nix file, a directory with default.nix, a .drv path, -E or FLAKEREF#ATTR"
        raise ConfigError(f"{shown}: no such file", hint=hint)
    return Source("file", f"./{arg}" if arg.startswith("-") else arg)


def sources(what: Installables, cwd: Path | None = None) -> list[Source]:
    """The sources in nix-build's order, with missing files reported now (ConfigError)."""
    here = cwd if cwd is not None else Path.cwd()
    if "-" in what.files:
        # nix-build 2.8 reads standard input then and evaluates nothing else (.drv paths,
        # files, expressions): with -A, --arg and the rest applied to it, as to a file.
        return [Source("stdin", "-")]
    if what.expr:
        if not what.files:
            # nix-build builds nothing and exits 0; offload says why nothing would be built.
            raise ConfigError(
                "-E/--expr makes the arguments expressions, and none was given",
                hint="give one: offload build -E 'with import <nixpkgs> {}; hello'",
            )
        found = [Source("expr", e) for e in what.files]
    else:
        found = []
        for arg in what.files or ("./default.nix",):
            drv = _as_drv(arg, here)
            if drv is not None:
                found.append(drv)
            elif "#" in arg and not ((here / arg).is_symlink() or (here / arg).exists()):
                found.append(Source("flake", arg))
            else:
                found.append(_as_file(arg, here))
    if what.attrs and any(s.kind == "flake" for s in found):
        raise ConfigError(
            "-A does not apply to FLAKEREF#ATTR",
            hint="put the attribute after the '#', e.g. .#hello.dev",
        )
    # nix-build reads .drv arguments while parsing its command line, before evaluating anything.
    return sorted(found, key=lambda s: s.kind != "drv")


def instantiate_argv(what: Installables, source: Source, *, show_trace: bool = False) -> list[str]:
    """nix-instantiate for one file or expression, with every -A, --arg and --argstr."""
    # --no-gc-warning: nix-build makes no such warning about the .drv files it instantiates.
    # The user's substituters hold, as in nix-build: an import-from-derivation's derivation is
    # fetched from a binary cache that has it rather than built here.
    argv = ["nix-instantiate", "--no-gc-warning"]
    for flag, name, value in what.args:
        argv += [flag, name, value]
    for attr in what.attrs:
        argv += ["-A", attr]
    argv += what.flags
    if show_trace:
        argv.append("--show-trace")
    match source.kind:
        case "expr":
            text = f" {source.text}" if source.text.startswith("-") else source.text
            argv += ["--expr", "--", text]
        case "file":
            argv += ["--", source.text]
        case "stdin":  # not after "--": Nix would take it for a file named "-"
            argv.append("-")
        case "drv" | "flake":
            msg = f"{source.text}: a {source.kind} is not evaluated by nix-instantiate"
            raise ValueError(msg)
    return argv


def flake_eval_argv(
    installable: str, *, show_trace: bool = False, flags: Sequence[str] = ()
) -> list[str]:
    """`nix eval` printing {"drvPath": ..., "outputName": ...} for FLAKEREF#ATTR."""
    argv = ["nix", "eval", *NIX_FEATURES, "--json", "--apply", FLAKE_APPLY]
    argv += flags
    if show_trace:
        argv.append("--show-trace")
    return [*argv, "--", installable]


def first_error_line(stderr: str) -> str:
    """Nix's message without its trace: the first ``error:`` line, else the last line.

    Newer Nix prints a bare ``error:`` above its trace, and the message on a later ``error:``.
    With ``--log-format internal-json`` its lines are ``@nix`` ones: their messages are read."""
    lines = [strip_ansi(_said_text(line)).strip() for line in stderr.splitlines()]
    errors = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    if any(errors):
        return next(error for error in errors if error)
    rest = [line for line in lines if line]
    return rest[-1] if rest else "(no message)"


def _said_text(line: str) -> str:
    """A line of Nix's stderr as text: a ``@nix`` message's own (its first line), else the
    line itself."""
    if not line.startswith("@nix {"):
        return line
    try:
        message = json.loads(line.removeprefix("@nix "))
    except ValueError:
        return line
    said = message.get("msg") if isinstance(message, dict) else None
    return said.split("\n", 1)[0] if isinstance(said, str) else ""


def error_position(stderr: str) -> str | None:
    """Where Nix says its error is: the ``FILE:LINE:COL`` of its first ``at FILE:LINE:COL:``
    line (above the code frame), or None."""
    for raw in stderr.splitlines():
        line = strip_ansi(raw).strip()
        if line.startswith("at "):
            return line[3:].rstrip(":")
    return None


class _Relay:
    """An evaluator's stderr, line by line as Nix prints it (the builds of an import from a
    derivation, their logs, ``trace:``, warnings), to ``say``, as nix-build shows them while
    it evaluates; from its first ``error:`` line on, held: that is Nix's error, printed
    whole if the evaluator fails (position, code frame), and said after all if it does not."""

    def __init__(self, say: Say) -> None:
        self._say = say
        self.held: list[str] = []

    def __call__(self, line: str) -> None:
        if self.held or strip_ansi(line).startswith("error:"):
            self.held.append(line)
        else:
            self._say(line)

    def release(self) -> None:
        """Say what was held: the evaluator succeeded, so it was no error of its."""
        for line in self.held:
            self._say(line)


def _evaluated(done: Completed, source: Source, relay: _Relay) -> str:
    """An evaluator's stdout; its failure as ``NixError`` (with what ``relay`` held)."""
    if done.returncode != 0:
        # Nix's words whole: the position names the right file (a bad --arg is «string»);
        # and its status: 1, or nix-build's 100-103 for a derivation imported from that
        # failed to build (its bits as for any build).
        said = "".join(f"{line}\n" for line in relay.held)
        raise NixError(
            f"evaluating {source.describe()} failed: {first_error_line(done.stderr)}",
            text=said or f"error: {done.argv[0]} exited with {done.returncode}\n",
            status=done.returncode if done.returncode > 0 else 1,
        )
    relay.release()
    return done.stdout


def _evaluator_argv(what: Installables, source: Source) -> list[str] | None:
    """The command that evaluates ``source``; None for a .drv, which is read, not evaluated."""
    match source.kind:
        case "flake":
            return flake_eval_argv(source.text, flags=what.flags)
        case "file" | "expr" | "stdin":
            return instantiate_argv(what, source)
    return None


def _parse_instantiated(stdout: str) -> list[tuple[str, str]]:
    roots = []
    for line in stdout.split():
        # One .drv per derivation; Nix appends "!name" when the selected output is not out.
        drv, _, output = line.partition("!")
        roots.append((str(StorePath.parse(drv)), output or "out"))
    return roots


def _parse_flake(stdout: str, source: Source) -> tuple[str, str]:
    try:
        value = json.loads(stdout)
        drv, output = value["drvPath"], value["outputName"]
    except (ValueError, TypeError, KeyError) as exc:
        msg = f"evaluating {source.text}: nix eval printed {stdout.strip()!r}"
        raise OffloadError(msg) from exc
    if not isinstance(drv, str) or not isinstance(output, str):
        msg = f"evaluating {source.text}: nix eval printed {stdout.strip()!r}"
        raise OffloadError(msg)
    return str(StorePath.parse(drv)), output


def _drv_root(source: Source) -> tuple[str, str]:
    # nix-build DRV builds one output: the one named after "!", else env.outputName or "out".
    drv = read_derivation(source.text)
    if source.output is not None and "," in source.output:
        msg = f"building more than one derivation output is not supported, in '{source.text}'"
        raise ConfigError(msg, hint="give the .drv once per output: DRV!out DRV!dev")
    output = source.output or drv.env.get("outputName", "out")
    if output not in drv.outputs:
        choices = " ".join(f"{source.text}!{name}" for name in drv.outputs)
        msg = f"derivation '{source.text}' does not have output '{output}'"
        raise ConfigError(msg, hint=f"name one of its outputs: {choices}")
    return source.text, output


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")


class Evaluation:
    """``instantiate`` begun at once: the first evaluator starts as this is made, so that Nix
    evaluates while the caller does its own work (``offload build`` imports the scheduler and
    connects to the builders meanwhile). ``roots`` waits for it and evaluates the rest in
    turn. A context manager: an evaluation given up on (an error, Ctrl-C) is stopped; one
    ``roots`` waits for in another thread is stopped by ``give_up``."""

    def __init__(
        self, what: Installables, cwd: Path | None = None, *, env: Env = None, say: Say = _say
    ) -> None:
        self._cwd, self._env, self._say = cwd, env, say
        # Each source with the command that evaluates it (None: a .drv, read).
        self._steps = [(source, _evaluator_argv(what, source)) for source in sources(what, cwd)]
        # The evaluator running, with its source: the first, started now, then each in turn.
        self._running: tuple[Source, Started, _Relay] | None = None
        self._lock = threading.Lock()  # ``give_up`` may come from another thread
        self._given_up = False
        for source, argv in self._steps:
            if argv is not None:
                self._running = (source, *self._started(source, argv))
                break

    def _started(self, source: Source, argv: list[str]) -> tuple[Started, _Relay]:
        relay = _Relay(self._say)
        # Only the first source can be standard input: it is the only one then.
        stdin = source.kind == "stdin"
        started = Started(
            argv, env=self._env, cwd=self._cwd, inherit_stdin=stdin, stderr_lines=relay
        )
        return started, relay

    def roots(self) -> list[tuple[str, str]]:
        """(.drv path, output) pairs in nix-build's order; ``NixError`` if Nix fails."""
        roots: list[tuple[str, str]] = []
        for source, argv in self._steps:
            if argv is None:
                roots.append(_drv_root(source))
                continue
            started, relay = self._evaluator(source, argv)
            done = started.finish()
            with self._lock:
                self._running = None
            stdout = _evaluated(done, source, relay)
            if source.kind == "flake":
                roots.append(_parse_flake(stdout, source))
            else:
                roots += _parse_instantiated(stdout)
        # None at all (`[]`, `{}`, a set of no derivations): nix-build builds nothing and
        # exits 0, as a per-platform job set that is empty on this one relies on.
        return roots

    def _evaluator(self, source: Source, argv: list[str]) -> tuple[Started, _Relay]:
        """The evaluator of ``source``: the one started early, or one started now."""
        with self._lock:
            if self._given_up:
                raise OffloadError("the evaluation was given up")
            if self._running is None or self._running[0] is not source:
                self._running = (source, *self._started(source, argv))
            return self._running[1], self._running[2]

    def give_up(self) -> None:
        """Stop the evaluator running, from any thread (``roots`` waiting for it in another
        then fails), and start no other."""
        with self._lock:
            self._given_up = True
            if self._running is not None:
                self._running[1].terminate()

    def close(self) -> None:
        with self._lock:
            running, self._running = self._running, None
        if running is not None:
            running[1].stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def instantiate(
    what: Installables,
    cwd: Path | None = None,
    *,
    env: Env = None,
    say: Say = _say,
) -> list[tuple[str, str]]:
    """Evaluate to (.drv path, output) pairs in nix-build's order.

    ``env`` is the evaluators' (the run's --options in NIX_CONFIG); what they print besides an
    error (``trace:``, warnings) goes to ``say`` line by line. A failed evaluation raises
    ``NixError`` with Nix's whole message.
    """
    with Evaluation(what, cwd, env=env, say=say) as evaluation:
        return evaluation.roots()
