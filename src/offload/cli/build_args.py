"""The command line of `offload build`: nix-build's flags (Nix 2.8) and offload's own.

Every flag nix-build 2.8 accepts is accepted (its `LegacyArgs`, `MixCommonArgs`, `MixEvalArgs`
and the flag per setting `Config::convertToArgs` makes), with the words after it as its values
whatever they look like (``cli.nix_values``), and sorted by where its meaning goes:

- build settings become ``--option NAME VALUE`` pairs, in command-line order (``option``): the
  local Nix gets them all (its serve processes' ``NIX_CONFIG``), every builder the ones the serve
  protocol carries (`max-silent-time`, `timeout`, `max-build-log-size`, `keep-failed`);
- evaluation flags go to nix-instantiate / nix eval (``eval_flags``), with the options, -j
  and the builders (for a derivation the evaluation itself builds);
- output flags choose the renderer (``-Q``, ``--log-format``) and Nix's verbosity (``-v``);
- flags nix-build 2.8 parses and ignores are parsed and ignored (``--add-root``, ``--indirect``,
  ``--drv-link``, ``--pure``, ``--keep``), and the few whose meaning offload cannot keep are
  refused when the run starts (``refused``), with why.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from offload import __version__
from offload.cli.arguments import page_file
from offload.cli.machines import add_pool_arguments
from offload.errors import ConfigError
from offload.typing_compat import override

__all__ = ["LOG_FORMATS", "add_build_arguments", "eval_flags", "nix_json", "refusal"]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Nix 2.8's settings (`nix show-config --json`), each a flag --NAME; a boolean one also --no-NAME
# and a list one --extra-NAME. Those offload spells out below are not repeated here.
BOOL_SETTINGS = _words(
    "accept-flake-config allow-dirty allow-import-from-derivation allow-new-privileges "
    "allow-symlinked-store allow-unsafe-native-code-during-evaluation auto-optimise-store "
    "builders-use-substitutes compress-build-log enforce-determinism eval-cache "
    "filter-syscalls fsync-metadata http2 impersonate-linux-26 keep-build-log "
    "keep-derivations keep-env-derivations keep-outputs preallocate-contents print-missing "
    "pure-eval require-sigs restrict-eval run-diff-hook sandbox sandbox-fallback substitute "
    "sync-before-registering trace-function-calls use-case-hack use-registries use-sqlite-wal "
    "warn-dirty"
)
LIST_SETTINGS = _words(
    "access-tokens allowed-impure-host-deps allowed-uris allowed-users experimental-features "
    "extra-platforms hashed-mirrors ignored-acls nix-path plugin-files sandbox-paths "
    "secret-key-files substituters system-features trusted-public-keys trusted-substituters "
    "trusted-users"
)
VALUE_SETTINGS = _words(
    "bash-prompt bash-prompt-suffix build-hook build-poll-interval build-users-group "
    "commit-lockfile-summary connect-timeout diff-hook download-attempts flake-registry "
    "gc-reserved-space http-connections log-lines max-build-log-size max-free min-free "
    "min-free-check-interval nar-buffer-size narinfo-cache-negative-ttl "
    "narinfo-cache-positive-ttl netrc-file post-build-hook pre-build-hook repeat "
    "sandbox-build-dir sandbox-dev-shm-size stalled-download-timeout system tarball-ttl "
    "user-agent-suffix"
)
# The settings Nix holds as whole numbers: it refuses any other value ("setting 'repeat' has
# invalid value 'x'") where offload only passed it on, and Nix's warning let the run go.
WHOLE_SETTINGS = _words(
    "build-poll-interval connect-timeout download-attempts gc-reserved-space http-connections "
    "log-lines max-build-log-size max-free min-free min-free-check-interval nar-buffer-size "
    "narinfo-cache-negative-ttl narinfo-cache-positive-ttl repeat stalled-download-timeout "
    "tarball-ttl"
)
LOG_FORMATS = ("raw", "raw-with-logs", "internal-json", "bar", "bar-with-logs")


def _setting(name: str, parse: Callable[[str], str] = str) -> Callable[[str], tuple[str, str]]:
    """The type of a flag setting ``name``: its value becomes an ``--option`` pair."""

    def pair(text: str) -> tuple[str, str]:
        return (name, parse(text))

    return pair


def _count(text: str) -> str:
    """A count with Nix's unit prefixes (string2IntWithUnitPrefix: K, M, G, T), as digits."""
    # ASCII digits (int() reads "٣" as 3, where Nix refuses it) and the unit in either case,
    # as Nix upper-cases it; leading zeros any number of them, and a "+", as Nix reads them.
    match = re.fullmatch(r"\+?([0-9]+)([KMGTkmgt]?)", text)
    if match is None or len(match[1].lstrip("0")) > 20:
        msg = f"'{text}' is not a number (units K, M, G, T allowed)"
        raise argparse.ArgumentTypeError(msg)
    value = int(match[1]) << (10 * " KMGT".index(match[2].upper() or " "))
    if value >= 1 << 64:
        raise argparse.ArgumentTypeError(f"'{text}' is too large")
    return str(value)


def _whole(name: str) -> Callable[[str], str]:
    """A whole number for setting ``name``, as the local Nix gets it: digits, a unit prefix
    (K, M, G, T) read as Nix 2.23 and later read one (``_count``), so that Nix 2.8, which reads
    none, gets the same number; anything else refused in Nix's words."""

    def parse(text: str) -> str:
        try:
            return _count(text)
        except argparse.ArgumentTypeError:
            msg = f"setting '{name}' has invalid value '{text}'"
            raise argparse.ArgumentTypeError(msg) from None

    return parse


def _nix_settings(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Nix settings",
        "-K/--keep-failed, --fallback, --cores N, --max-silent-time N, --timeout N, and "
        "--NAME VALUE, --NAME/--no-NAME, --extra-NAME VALUE for any Nix setting, as nix-build",
    )

    # Each lands in --option's list as a (name, value) pair, in command-line order.
    def flag(flag: str, name: str, value: str, help_: str | None = argparse.SUPPRESS) -> None:
        group.add_argument(
            flag, dest="option", action="append_const", const=(name, value), help=help_
        )

    def valued(
        name: str, parse: Callable[[str], str] = str, help_: str | None = argparse.SUPPRESS
    ) -> None:
        group.add_argument(
            f"--{name}",
            dest="option",
            action="append",
            type=_setting(name, parse),
            metavar="N",
            help=help_,
        )

    group.add_argument(
        "-K",
        "--keep-failed",
        dest="option",
        action="append_const",
        const=("keep-failed", "true"),
        help="keep a failed build's directory (--option keep-failed true)",
    )
    flag("--fallback", "fallback", "true", "build what a binary cache fails to give")
    # The other half of the settings spelled out here (--no-NAME, as for every boolean).
    flag("--no-fallback", "fallback", "false")
    flag("--no-keep-failed", "keep-failed", "false")
    for name, what in (
        ("cores", "cores each build may use (0: all)"),
        ("max-silent-time", "seconds a build may print nothing before it is stopped"),
        ("timeout", "seconds a build may take in all"),
    ):
        valued(name, _count, what)
    for name in BOOL_SETTINGS:
        flag(f"--{name}", name, "true")
        flag(f"--no-{name}", name, "false")
    flag("--relaxed-sandbox", "sandbox", "relaxed")
    for name in (*LIST_SETTINGS, *VALUE_SETTINGS):
        valued(name, _whole(name) if name in WHOLE_SETTINGS else str)
    for name in LIST_SETTINGS:
        valued(f"extra-{name}")


class _AutoArg(argparse.Action):
    """--arg and --argstr: (flag, NAME, VALUE) appended to one list."""

    @override
    def __call__(
        self,
        _parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        _option_string: str | None = None,
    ) -> None:
        assert isinstance(values, list)  # nargs=2
        name, value = values
        given = [*getattr(namespace, self.dest), (self.option_strings[0], name, value)]
        setattr(namespace, self.dest, given)


class _NoKeepGoing(argparse.Action):
    """--no-keep-going: no -k before it, and keep-going = false among the settings."""

    @override
    def __call__(
        self,
        _parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        _values: str | Sequence[Any] | None,
        _option_string: str | None = None,
    ) -> None:
        namespace.keep_going = False
        namespace.option = [*(getattr(namespace, "option", None) or []), ("keep-going", "false")]


def _evaluation(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument("-A", "--attr", action="append", default=[], help="attribute to build")
    # One list for both, in command-line order: for a name given twice Nix takes the last.
    for flag, metavar in (("--arg", "EXPR"), ("--argstr", "VALUE")):
        group.add_argument(
            flag, nargs=2, action=_AutoArg, dest="auto_args", default=[], metavar=("NAME", metavar)
        )
    # A switch, as nix-build's: every positional argument is then an expression, not a file.
    group.add_argument(
        "-E", "--expr", action="store_true", help="the arguments are Nix expressions, not files"
    )
    group.add_argument(
        "-I", "--include", action="append", default=[], metavar="PATH", help="as nix-build's -I"
    )
    group.add_argument("--show-trace", action="store_true", help="Nix's whole trace on errors")
    group.add_argument(
        "--no-show-trace", action="store_false", dest="show_trace", help=argparse.SUPPRESS
    )
    group.add_argument("--impure", action="store_true", help="as nix-build (its default)")
    group.add_argument("--override-flake", nargs=2, action="append", default=[], metavar="REF")
    # nix-build's --check and --repair: carried out by the local Nix (see build.py).
    # One place for both: nix-build takes the last of them (its buildMode).
    group.add_argument(
        "--check",
        dest="mode",
        action="store_const",
        const="check",
        help="build the requested ones again",
    )
    group.add_argument(
        "--repair",
        dest="mode",
        action="store_const",
        const="repair",
        help="repair corrupt paths (local Nix)",
    )


def _output(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "-L", "--print-build-logs", action="store_true", help="show build logs (the default)"
    )
    group.add_argument(
        "-Q", "--no-build-output", action="store_true", help="do not show build logs"
    )
    group.add_argument("-v", "--verbose", action="count", default=0, help="Nix's verbosity up")
    group.add_argument("--quiet", action="count", default=0, help="Nix's verbosity down")
    # nix-build's --debug (Nix's verbosity); `offload --traceback build` shows tracebacks.
    group.add_argument("--debug", action="store_true", dest="nix_debug", help="Nix debug")
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="raw, raw-with-logs: plain lines; bar: the live view without build logs;"
        " bar-with-logs: with them;"
        " internal-json: Nix's @nix lines on stderr (for nom --json)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="one JSON event per line on stdout (with --dry-run: the plan, one line)",
    )


def _ignored(parser: argparse.ArgumentParser) -> None:
    """What nix-build 2.8 parses and then ignores (obsolete, or only nix-shell's), and its
    --version: offload's own, in nix-build's form ("nix-build (Nix) 2.8.0")."""
    hide = argparse.SUPPRESS
    version = f"offload build (offload) {__version__}"
    parser.add_argument("--version", action="version", version=version, help=hide)
    for flag in ("--indirect", "--add-drv-link", "--pure", "--no-gc-warning"):
        parser.add_argument(flag, action="store_true", dest="ignored", help=hide)
    for flag in ("--add-root", "--drv-link", "--keep"):
        parser.add_argument(flag, dest="ignored_value", help=hide)
    # Each kept by its name, for the error to say which was given.
    for flag in ("--store", "--eval-store"):
        parser.add_argument(flag, action=_Named, nargs=1, dest="refused", default=[], help=hide)
    parser.add_argument("--readonly-mode", action=_Named, nargs=0, dest="refused", help=hide)


def _link_name(text: str) -> str:
    # nix-build builds first and then fails to make the link; offload would have made ./result.
    if not text:
        raise argparse.ArgumentTypeError("an empty name for the result link")
    return text


def _report_file(text: str) -> Path:
    # ``./-`` names a file called "-"; "-" alone would mix the page into the output paths.
    text = page_file(text)
    if text == "-":
        raise argparse.ArgumentTypeError(
            "standard output carries the build's output paths: name a file, or write the page"
            " afterwards with offload report -o -"
        )
    return Path(text)


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """Every argument of `offload build` on ``parser``."""
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="FILE|DRV",
        help="default: ./default.nix; with -E, expressions; -: the expression on standard input",
    )
    _evaluation(parser)
    # One destination, so the last of -o and --no-out-link wins, as in nix-build (a wrapper
    # that passes --no-out-link and a caller's -o after it get the link).
    parser.add_argument(
        "-o", "--out-link", type=_link_name, default="result", help="symlink name (./result)"
    )
    parser.add_argument(
        "--no-out-link",
        "--no-link",
        action="store_const",
        const=None,
        dest="out_link",
        help="make no result symlinks",
    )
    parser.add_argument(
        "-k",
        "--keep-going",
        action="store_true",
        help="go on with what does not depend on a failure",
    )
    # Nix's keep-going setting off: after -k, or over nix.conf's keep-going = true (as an
    # --option keep-going false would).
    parser.add_argument(
        "--no-keep-going",
        action=_NoKeepGoing,
        nargs=0,
        dest="keep_going",
        default=False,
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--fetch-all",
        action="store_true",
        help="copy every built output here, not only the requested ones (as Nix does)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (what is built where, estimated time) and build nothing",
    )
    parser.add_argument(
        "--report",
        type=_report_file,
        metavar="FILE",
        help="write the run's HTML report (timeline per machine) to FILE at the end",
    )
    _output(parser)
    add_pool_arguments(parser)
    _nix_settings(parser)
    _ignored(parser)


def eval_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The flags nix-instantiate (and nix eval) get, as nix-build would apply them."""
    flags: list[str] = []
    for path in args.include:
        flags += ["-I", path]
    for ref, to in args.override_flake:
        flags += ["--override-flake", ref, to]
    flags += ["--show-trace"] * args.show_trace + ["--impure"] * args.impure
    flags += ["--verbose"] * args.verbose + ["--quiet"] * args.quiet
    flags += ["--debug"] * bool(getattr(args, "nix_debug", False))
    return tuple(flags + _ifd_flags(args))


def nix_json(args: argparse.Namespace) -> bool:
    """--log-format internal-json: stderr is Nix's @nix lines, which a program reads."""
    return getattr(args, "log_format", None) == "internal-json"


def _log_format(args: argparse.Namespace) -> list[str]:
    """A check's or repair's Nix writes its lines as the run's are written: with
    internal-json, a reader of stderr (``nom --json``) gets them as ``@nix`` lines too. (The
    evaluator's are read, so they stay plain: ``offload.ui.nixjson.nix_msg`` wraps them.)"""
    return ["--log-format", "internal-json"] if nix_json(args) else []


def realise_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The flags ``nix-store --realise --check`` (or ``--repair``) gets, as nix-build's own
    check runs: its logs quiet or not, going on past a failure, and its jobs and builders as
    an import from a derivation's (``_ifd_flags``)."""
    flags = ["--verbose"] * args.verbose + ["--quiet"] * args.quiet
    flags += ["--keep-going"] * bool(args.keep_going) + ["--no-build-output"] * args.no_build_output
    flags += _log_format(args)
    # Nix checks and repairs here only: -j 0 (offload's remote only) would leave it no slot.
    jobs = _ifd_flags(args, jobs=bool(args.max_jobs))
    return tuple(flags + jobs)


def _ifd_flags(args: argparse.Namespace, *, jobs: bool = True) -> list[str]:
    """-j (unless not ``jobs``) and the builders for what the evaluator builds itself (an
    import from a derivation), as nix-build's own evaluation builds it: with -j 0, on the
    builders, by Nix's hook. --option pairs reach it through NIX_CONFIG, all but builders (a
    spec may span lines), so a builders option is a flag too; the last of --builders and
    --option builders holds."""
    flags: list[str] = []
    if jobs and args.max_jobs is not None:
        flags += ["--max-jobs", str(args.max_jobs)]
    builders = args.builders
    if builders is None:
        builders = next((v for k, v in reversed(args.option) if k == "builders"), None)
    if builders is not None:
        flags += ["--builders", builders]
    return flags


class _Named(argparse.Action):
    """Appends the option's own name (``--store``), not its value; a store named ``auto`` is
    the one Nix picks by default, the one offload builds into: no other store."""

    @override
    def __call__(
        self,
        _parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        if values == ["auto"]:
            return
        given = list(getattr(namespace, self.dest, None) or [])
        if option_string not in given:
            given.append(option_string)
        setattr(namespace, self.dest, given)


def refusal(args: argparse.Namespace) -> ConfigError | None:
    """Why a flag nix-build takes cannot be honoured, or None."""
    if args.refused:  # it named all three whichever was given
        given = " and ".join(args.refused)
        # --readonly-mode is no other store: nix-build refuses to build with it too.
        other_store = any(flag != "--readonly-mode" for flag in args.refused)
        return ConfigError(
            f"{given}: not supported by offload build, which builds into the local store",
            hint="use nix-build for another store"
            if other_store
            else "a build writes to the store; nix-instantiate --eval --readonly-mode evaluates",
        )
    if nix_json(args) and args.json:
        # Both are for programs; one reader wants one stream of events.
        return ConfigError(
            "--json and --log-format internal-json: choose one",
            hint="--json: offload's events on stdout; internal-json: Nix's @nix lines on stderr",
        )
    if args.dry_run and args.report is not None:
        # A dry run plans and builds nothing: no run is kept, and no page was written.
        return ConfigError(
            "--report: a dry run builds nothing, so there is no run to report",
            hint="drop --dry-run to build and report, or --report to see the plan",
        )
    return None
