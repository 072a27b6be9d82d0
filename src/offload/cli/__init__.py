"""Command-line entry point: argparse, dispatch, and the single error handler.

Each subcommand lives in its own module with ``register(subparsers)``; the function it sets as
``func`` takes the parsed namespace and returns an exit status. Errors are caught here only:
``error: <message>`` and a hint on stderr, a traceback only with ``--traceback`` (given before
the command). Usage errors exit 1 as Nix's own commands do (argparse's 2 is nobody's convention
here); an error offload did not foresee is still one line, with the way to see its traceback; a
closed stdout (``| head``) ends the command quietly, as it ends Nix's.

SIGTERM and SIGHUP are handled as Ctrl-C is (``interrupts``): the first of them stops the
command by the one path that stops a run cleanly (asyncio cancels the run, remote builds are
stopped, temporary directories removed, the terminal restored), and later ones are ignored
while that clean-up runs, wherever the command was; the exit status is 128 + the first
signal's number (nix-build says "interrupted by the user" and exits 1 for any of them).
Ctrl-C while the subcommands are still being imported is caught as well: no traceback,
whenever it comes.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import importlib
import io
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from offload import __version__
from offload.cli import interrupts
from offload.streams import ForgivingStderr, SaidStdout, StdoutError, reader_gone
from offload.threads import INTERRUPTS

if TYPE_CHECKING:
    from offload.errors import OffloadError

__all__ = ["exit_status", "main", "root_parser"]

Handler = Callable[[argparse.Namespace], int]


def _parser_class() -> type[argparse.ArgumentParser]:
    """offload's ArgumentParser, made when a parser is."""
    # Imported here, not at the top: main() must be running (and catching Ctrl-C) first.
    from offload.typing_compat import override

    class _Parser(argparse.ArgumentParser):
        """argparse with offload's error lines; subcommand parsers are of the same class.

        Each parser puts itself in the namespace (``_parser``); a subcommand's parser overrides
        its parent's there, so after parsing it names the command whose options were given,
        whose ``error`` and ``--help`` an unrecognized argument is told with (``_parse``).
        An option is known by its whole name only, as Nix knows its flags: argparse's own
        prefix matching took `--max-j 2` for `--max-jobs` and `--builder` for `--builders`,
        which nix-build refuses ("unrecognised flag"), and would take a script's typo for
        whichever option a later version makes it the prefix of.
        """

        # kwargs: argparse's, passed on.
        def __init__(self, *, nix_values: bool = False, **kwargs: Any) -> None:  # noqa: ANN401
            super().__init__(**{"allow_abbrev": False, **kwargs})
            # A stand-in for a Nix command binds option values as Nix does (cli.nix_values).
            self._nix_values = nix_values
            self.set_defaults(_parser=self)

        @override
        def parse_known_args(
            self,
            args: Iterable[str] | None = None,
            namespace: Any = None,  # noqa: ANN401 - argparse's overloads: any namespace
        ) -> tuple[Any, list[str]]:
            if self._nix_values and args is not None:
                from offload.cli.nix_values import bind

                args = bind(self._actions, args)
            return super().parse_known_args(args, namespace)

        @override
        def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:  # noqa: ANN401 - what argparse makes of a value: anything
            # Python 3.11's argparse takes a "--" out of an option's values as if it ended the
            # options, but only `--since=--` puts one there: it is the value itself, and
            # without it the value became [] (an internal error, or `offload use --for=--`
            # silently "until cleared"). A "--" put first is the one it takes out.
            if (
                action.option_strings
                and action.nargs not in (argparse.PARSER, argparse.REMAINDER)
                and "--" in arg_strings
                and _strips_option_dashes()
            ):
                arg_strings = ["--", *arg_strings]
            return super()._get_values(action, arg_strings)

        @override
        def error(self, message: str) -> NoReturn:
            sys.stderr.write(_error_lines(self.prog, message))
            sys.exit(1)

    return _Parser


def _error_lines(prog: str, message: str) -> str:
    """An argparse error as offload says one: the error and its hint, a line each."""
    # argparse quotes the bad value whole, and it may be anything a user pasted. It is said on
    # one line: line breaks and other control characters escaped.
    hint = _did_you_mean(message) + f"see {prog} --help"
    message = _one_line(message)
    message = re.sub(r"\S{80,}", lambda long: long[0][:60] + "...", message)
    return f"error: {prog}: {message}\nhint: {hint}\n"


def _one_line(text: str) -> str:
    """``text`` on one line: a value quoted in an error (a path, a name, a file's line) may
    hold anything a user typed or a file held, and its line breaks and other control
    characters (escape sequences, bytes that were not UTF-8) are written escaped, as
    ``\\n`` or ``\\xNN``: an error is one line, whatever it quotes."""
    from offload.config.machines.model import shown

    return shown(text, sys.maxsize)


@functools.cache
def _strips_option_dashes() -> bool:
    """Whether this Python's argparse drops a ``--`` given as an option's value (3.11 does)."""
    probe = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    probe.add_argument("--value")
    try:  # no argparse's answer to the probe may end the process
        return bool(probe.parse_args(["--value=--"]).value != "--")
    except (argparse.ArgumentError, SystemExit):
        return False


def _parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser for ``argv``: with the subcommand it names only (every one for ``()``)."""
    parser = _parser_class()(
        prog="offload",
        description="Distribute Nix builds over the local machine and SSH builders.",
    )
    parser.add_argument("--version", action="version", version=f"offload {__version__}")
    # Not --debug, which offload build passes to Nix as nix-build does (Nix's debug output):
    # one name for two things sent users who appended it to a failing build the wrong way.
    parser.add_argument(
        "--traceback",
        action="store_true",
        dest="debug",
        help="show Python's traceback of an error (before the command: offload --traceback build)",
    )
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)  # its old name
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _modules(argv):
        importlib.import_module(f"offload.cli.{name}").register(sub)
    return parser


# Each subcommand's module, in the order `offload --help` lists them.
_MODULES = {
    "build": "build",
    "use": "use",
    "hook": "hook",
    "setup": "setup",
    "machines": "machines",
    "doctor": "doctor",
    "status": "status",
    "simulate": "simulate",
    "log": "log",
    "history": "history",
    "report": "report",
    "fleet": "fleet",
    "demo": "demo",
    "completion": "completion",
    "manpage": "completion",
}


def _modules(argv: Sequence[str]) -> list[str]:
    """The modules to import for ``argv``: the named subcommand's alone (its imports are a
    run's first fixed cost), every one when there is none to name or help is asked for."""
    for word in argv:
        if word in {"-h", "--help", "--version"}:
            break
        if not word.startswith("-"):
            if word in _MODULES:
                return [_MODULES[word]]
            break
    return list(dict.fromkeys(_MODULES.values()))


def _did_you_mean(message: str) -> str:
    """For argparse's "invalid choice: 'statuss' (choose from ...)", the choice meant."""
    from offload.spelling import meant

    found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    close = None if found is None else meant(found[1], re.findall(r"'([^']*)'", found[2]))
    return f"did you mean {close}? " if close else ""


def root_parser() -> argparse.ArgumentParser:
    """The whole command line's parser (for the completions and the man page made from it)."""
    return _parser()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` and return its exit status; with ``argv`` None, the process's
    own command line (the console script, ``python -m offload``), whose end ends the process
    (``_end``)."""
    interrupts.reset()
    interrupts.install()
    if argv is None:
        _standard_streams()
    try:
        interrupts.unblock()  # held by the script while this was imported: taken from here
        status = _dispatch(argv)
    except KeyboardInterrupt:
        status = _interrupted()
    except Exception:
        if not interrupts.stopping():
            raise
        # What a signal's KeyboardInterrupt became on its way while the parser's modules were
        # imported: Python 3.11 wraps one raised as a class is made (a dataclass's fields) in
        # a RuntimeError. The command was stopped (seen in CI: a Ctrl-C 75 ms in).
        status = _interrupted()
    if argv is None:
        try:
            _end(status)
        except KeyboardInterrupt:
            # The first signal, come as the command returned (its objects freed: a large
            # report's take a while) and before _end's own guard: the command is stopped.
            status = _interrupted()
            _end(status)  # returns while another thread runs: then Python's exit ends it
    return status


def _interrupted() -> int:
    """The command stopped by a signal (later ones are ignored meanwhile: ``interrupts``)."""
    print("error: interrupted", file=sys.stderr)
    # Ended here too: CPython notes a KeyboardInterrupt raised in code compiled from a
    # string (a dataclass's methods, made as a module is imported) even when caught, and
    # `python -m` then kills itself with SIGINT as it exits: SIGTERM's 143 became that.
    return interrupts.stopped_status()


# Started with stdout closed: a build and a listing run as nix-build then does, what they print
# going nowhere; a command whose product is files to keep (setup's without --write, a
# completion, the man page, a machines file converted, a fleet's exports, a report to -) says
# it has nowhere to put them.
_stdout_closed = False


def _prints_files(args: argparse.Namespace) -> bool:
    command = getattr(args, "command", None)
    return (
        command in {"completion", "manpage"}
        or (getattr(args, "step", None) in {"client", "builder"} and args.write is None)
        or (command == "machines" and args.action == "convert")
        or (command == "fleet" and args.fleet_command == "env")
        or (command == "report" and args.output is None)
    )


def _standard_streams() -> None:
    """Started with stdin, stdout or stderr closed (``>&-``), as nix-build then runs and
    exits: what would go there goes nowhere. Each such descriptor is /dev/null from now on, so
    no file this process opens takes its number and no Nix or ssh it starts writes into that
    file (Python leaves ``sys.stdout`` None, whose first write was a traceback). A reader of
    stderr that goes away later is no error either (``offload.streams``)."""
    global _stdout_closed  # noqa: PLW0603 - the process's, told once as it starts
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            _stdout_closed = _stdout_closed or fd == 1
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # the lowest free number: it is fd unless a lower one was closed too
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115
    # stdout that cannot be written is said as such (``offload.streams``). In a locale that
    # is not UTF-8 (ISO-8859-1, PYTHONIOENCODING=ascii), a machine or file name it cannot
    # encode is written escaped, as stderr writes it, not an internal error.
    # What it holds already that cannot be written leaves it as it is: said at the exit.
    with contextlib.suppress(AttributeError, ValueError, OSError):  # not a file's; closed
        stdout = sys.stdout
        stdout.flush()
        # Unbuffered as it was (PYTHONUNBUFFERED, python -u): each write is a system call.
        unbuffered = not isinstance(getattr(stdout, "buffer", None), io.BufferedIOBase)
        sys.stdout = SaidStdout(
            open(stdout.fileno(), "wb", buffering=0 if unbuffered else -1, closefd=False),  # noqa: SIM115
            encoding=stdout.encoding,
            errors="backslashreplace" if stdout.errors == "strict" else stdout.errors,
            line_buffering=bool(stdout.line_buffering),
            write_through=getattr(stdout, "write_through", False),
        )
    # A reader of stderr that goes away (`2>&1 | head`) must not stop a run half-way.
    sys.stderr = ForgivingStderr(
        open(2, "wb", closefd=False),  # noqa: SIM115 - the stream's own, for the process's life
        encoding=sys.stderr.encoding,
        errors="backslashreplace",
        line_buffering=True,
    )


def _end(status: int) -> None:
    """End the process now that its command is done, as Python's exit would but without
    freeing every object and module one by one first (about 25 ms after a build; the kernel
    frees the process whole): the exit functions run and stdout and stderr are flushed (a
    failed flush exits 120, as Python's exit does). Returns, for Python's own exit, while
    another thread still runs: it would wait for it."""
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon for t in threading.enumerate()):
        return
    # A first Ctrl-C from here on ends the process at once, as it does while Python
    # finalizes; so do SIGTERM and SIGHUP, each as itself (status 128 + its number). Once
    # one stopped the command, later ones are still ignored: the status stays the first's.
    try:
        if not interrupts.stopping():
            for signum in INTERRUPTS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    signal.signal(signum, signal.SIG_DFL)
    except KeyboardInterrupt:  # the first, just before: the command is stopped all the same
        status = _interrupted()
    atexit._run_exitfuncs()  # noqa: SLF001 - what Python's exit runs, typed in typeshed
    for stream, name in ((sys.stdout, "standard output"), (sys.stderr, "standard error")):
        try:
            stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: closed
            status = status or 120
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"error: cannot write to {name}: {why}\n")
                sys.stderr.flush()
    os._exit(status)


def _dispatch(argv: Sequence[str] | None) -> int:
    # Imported here, not at the top: main() must be running (and catching Ctrl-C) first.
    from offload.marks import mark

    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    mark("imported")  # the subcommands are imported to build the parser
    func: Handler = args.func
    if _stdout_closed and _prints_files(args):
        return _failed(args, _closed_stdout())
    try:
        return func(args)
    except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback
        if interrupts.stopping():
            # What a signal's KeyboardInterrupt became on its way (Python 3.11 wraps one
            # raised as a class is made, a dataclass's fields, in a RuntimeError), or an error
            # of the clean-up it began: the command was stopped.
            return _interrupted()
        return _failed(args, exc)


def _closed_stdout() -> Exception:
    from offload.errors import ConfigError

    return ConfigError(
        "standard output is closed: the files this command prints would be lost",
        hint="give it a file or a pipe (> FILE)",
    )


def _failed(args: argparse.Namespace, exc: Exception) -> int:
    """The command's error ``exc`` (being handled), said as one line and a hint."""
    from offload.errors import OffloadError

    if isinstance(exc, BrokenPipeError):
        # Whoever read stdout has gone; later flushes must not fail again at exit.
        reader_gone(sys.stdout)
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
    if args.debug:
        traceback.print_exc()
    if isinstance(exc, OffloadError):
        _print_error(exc)
        return exit_status(exc)
    if isinstance(exc, StdoutError):
        reader_gone(sys.stdout)  # what it still holds would fail again at the exit
        print(f"error: cannot write to standard output: {exc.strerror}", file=sys.stderr)
        print("hint: send it where there is room (a file on another disk, a pipe)", file=sys.stderr)
        return 1
    if isinstance(exc, OSError) and exc.filename is not None:
        _print_os_error(exc)
        return 1
    if isinstance(exc, FileNotFoundError) and _working_directory_gone():
        # os.getcwd() (a relative path made absolute) fails so in a removed directory.
        print("error: the working directory no longer exists (it was removed)", file=sys.stderr)
        print("hint: cd into a directory that exists, and run the command again", file=sys.stderr)
        return 1
    print(f"error: internal error: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
    print(
        "hint: run again as `offload --traceback COMMAND ...` to see where, and report it",
        file=sys.stderr,
    )
    return 1


def _working_directory_gone() -> bool:
    from pathlib import Path  # imported by then: only on the way to an error

    try:
        Path.cwd()
    except FileNotFoundError:
        return True
    return False


def _print_os_error(exc: OSError) -> None:
    """An error of the system's about a file (a name too long, a directory not searchable, a
    read-only file system) that no command turned into an error of its own: it is the file's,
    a path given or a place offload keeps its state, not offload's, and said as such."""
    filename = exc.filename
    if isinstance(filename, str | bytes | os.PathLike):
        name = _one_line(os.fsdecode(filename))
    else:  # a call on a descriptor (os.utime(fd)) names it by its number
        name = f"file descriptor {filename}"
    why = exc.strerror or type(exc).__name__
    print(f"error: cannot use {name}: {why}", file=sys.stderr)
    print("hint: check that path (given, or where offload keeps its state)", file=sys.stderr)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed; an argument no parser knows is an error of the (sub)command it was
    given to, so its hint names that command's ``--help`` (argparse blames the top parser)."""
    top = _parser(argv)
    if stray := _unknown_before_command(top, argv):
        # argparse blames the command after them (`offload --trace status`), or, with none,
        # says only that a command is required (`offload --vers`): neither names the option.
        top.error(f"unrecognized arguments: {' '.join(stray)}")
    args, unknown = top.parse_known_args(argv)
    parser: argparse.ArgumentParser = vars(args).pop("_parser", top)
    if unknown and isinstance(getattr(args, "paths", None), list):
        # nix-build takes its files anywhere among its options (a.nix -A x b.nix), in order.
        args.paths += [word for word in unknown if not word.startswith("-")]
        unknown = [word for word in unknown if word.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _unknown_before_command(top: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """The options before the command's name that ``offload`` itself does not know: given to
    it (``offload --traceback build``), none of which takes a value."""
    known = top._option_string_actions  # noqa: SLF001 - argparse has no public way to list them
    stray: list[str] = []
    for word in argv:
        if word == "--" or not word.startswith("-"):
            break
        if word.split("=", 1)[0] not in known:
            stray.append(word)
    return stray


def _print_error(exc: OffloadError) -> None:
    from offload.errors import BuildFailed, NixError

    if isinstance(exc, NixError):  # Nix's own words, whole, as nix-build shows them
        if exc.text:  # "": shown as they came
            sys.stderr.write(exc.text if exc.text.endswith("\n") else exc.text + "\n")
        return
    if isinstance(exc, BuildFailed):
        # A builder's Nix says some failures on several lines, as nix-build shows them (a
        # hash mismatch's "specified:" and "got:", the hash a user copies): each line kept,
        # the rest indented under "error: " as Nix indents them, each written safe.
        first, *rest = exc.message.split("\n")
        lines = [f"error: {_one_line(first)}", *(f"       {_one_line(line)}" for line in rest)]
        print("\n".join(lines), file=sys.stderr)
    else:
        print(f"error: {_one_line(exc.message)}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {_one_line(exc.hint)}", file=sys.stderr)


def exit_status(exc: OffloadError) -> int:
    """nix-build's codes: 100 for a failed build, 101 when it timed out, 102 for a hash
    mismatch, 1 for the rest (``nix_exit_code``)."""
    from offload.errors import BuildFailed, NixError
    from offload.protocol.records import nix_exit_code

    if isinstance(exc, NixError):
        return exc.status
    if isinstance(exc, BuildFailed):
        if exc.exit_code is not None:
            return exc.exit_code
        return nix_exit_code([(exc.status, exc.message)])
    return 1
