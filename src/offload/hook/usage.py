"""``offload-hook`` run by a person: what it is, and how Nix is told to start it.

Nix starts its build hook itself, as ``offload-hook VERBOSITY`` (a number; Nix 2.10 and later
put the ``build-hook`` setting's own arguments before it), with the hook protocol on stdin, a
pipe. So ``--help``, ``--version`` or another option with no number after it, no number last
at all (a script's start, stdin a pipe or /dev/null), or a terminal on stdin, is a person at a
shell: they get the usage or the version (exit 0), or one error line and a hint (exit 1), not
the protocol's first read failing. The client (``offload.hook.client``)
imports this module only then: Nix's own starts never pay for it.

Standard library only, like the client.
"""

from __future__ import annotations

import sys

from offload import __version__
from offload.hook.client import from_nix

__all__ = ["USAGE", "answer"]

USAGE = """\
usage: offload-hook [--help | --version]

offload-hook is Nix's build hook: Nix starts it, with its verbosity as the argument and the
hook protocol on stdin, for every derivation it may build elsewhere, and offload-hook sends
each to the machine expected to finish it first (or declines: Nix builds it locally). It is
not run by hand; tell Nix to use it, for one build (as root or a trusted user: a nix-daemon
ignores build-hook from any other user's command: silently before Nix 2.22):

  nix-build ... --option build-hook "$(command -v offload-hook)"

or for every build, in nix.conf (`offload hook install --print` prints the line):

  build-hook = /absolute/path/to/offload-hook

Nix 2.25-2.33 ignore build-hook in the system's nix.conf: pass it with --option or
NIX_CONFIG there (a nix-daemon's: in its environment).
The builders are Nix's own (`builders`, /etc/nix/machines). See offload's README.
"""

_HINT = (
    'hint: let Nix start it: --option build-hook "$(command -v offload-hook)", or '
    "build-hook = PATH in nix.conf (see offload-hook --help)\n"
)


def answer(argv: list[str], *, terminal: bool) -> int | None:
    """The exit code after answering a person (``terminal``: stdin is one); None when ``argv``
    and stdin are Nix's, and the hook protocol is to be served."""
    words = argv[1:]
    if not from_nix(argv):
        if words and words[0] in {"-h", "--help"}:
            sys.stdout.write(USAGE)
            return 0
        if words and words[0] == "--version":
            sys.stdout.write(f"offload-hook {__version__}\n")
            return 0
        unknown = next((word for word in words if word.startswith("-")), None)
        if unknown is not None:
            return _error(f"unknown option {unknown[:40]!r}: it takes --help or --version")
        if not terminal:  # a script or a pipe: Nix's protocol would only fail on its first read
            return _error(
                "started without Nix's verbosity as its last argument: Nix starts its build "
                "hook as `offload-hook VERBOSITY`, with the hook protocol on stdin"
            )
    if terminal:
        return _error(
            "this is Nix's build hook, meant to be started by Nix: it reads Nix's hook "
            "protocol on stdin, not a terminal"
        )
    return None


def _error(message: str) -> int:
    sys.stderr.write(f"offload-hook: error: {message}\n{_HINT}")
    return 1
