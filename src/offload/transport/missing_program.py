"""A builder's Nix program that is not there: how it is said, and its fix, in one wording.

The program offload starts on a builder over ssh (``nix-store --serve --write``, ``nix-daemon
--stdio``, or the one ``remote-program=`` names) may be missing from the PATH that sshd gives a
non-interactive session (Nix set up for login shells only, or not installed). A session that
could not start it (``links.lending.not_started``), the line ``offload build`` says for that
builder (``build.faults.explain``) and doctor's ``nix`` row (``doctor.facts.nix_check``) all
say it with ``not_on_path`` and give ``install_nix`` as the fix: the words a user searches for
are the same wherever they met them. This host's own ``nix-store --serve`` (the local store's
session: ``offload-hook`` reads inputs and brings outputs home through it) missing from the
PATH offload was given is said as this host's (``here``), with ``fix_path_here``: no builder
is at fault. A program that ran and stopped with Nix's own ``error:`` (a nix.conf it refuses,
a file it includes that is not there) is there: ``nix_error`` finds those words, and the fix
is ``mend_settings``, never installing Nix. Pure.
"""

from __future__ import annotations

import re

from offload.ansi import strip_ansi
from offload.forced import FORCED

__all__ = [
    "NOT_ON_PATH",
    "NOT_ON_PATH_HERE",
    "fix_path_here",
    "forced_missing",
    "forced_not_there",
    "install_nix",
    "mend_settings",
    "missing",
    "nix_stopped",
    "not_on_path",
    "stopped_by_nix",
]

NOT_ON_PATH = "is not on the builder's PATH"
NOT_ON_PATH_HERE = "is not on this host's PATH"
# A shell's words for a program it cannot find ("sh: 1: nix-store: not found", "bash: nix-store:
# command not found", "exec: ...: No such file or directory"); never Nix's own "error: ...": it
# ran, so it is there (a daemon not running: "cannot connect to socket at '...': No such file").
_NOT_THERE = re.compile(r"^(?!error:).*(?:not found|No such file or directory)\s*$")


def missing(line: str) -> bool:
    """Does ``line`` (a shell's last words) say the program to run is not there?"""
    return _NOT_THERE.search(strip_ansi(line)) is not None


def nix_stopped(program: str, said: str) -> str:
    """``program`` ran and stopped with Nix's ``said`` (an ``error:`` line)."""
    return f"{program} stopped: {said}"


def stopped_by_nix(error: str) -> bool:
    """Does ``error`` say a program ran and stopped with Nix's words (``nix_stopped``)?"""
    return " stopped: error: " in error


def mend_settings(here: bool = False) -> str:
    """The fix for a Nix program that ran and stopped on its own settings or files."""
    whose = "this host's" if here else "the builder's"
    return (
        f"{whose} Nix stops on its settings: mend what its error names (nix.conf in /etc/nix"
        " or NIX_CONF_DIR, a file it includes), then check again"
    )


def not_on_path(program: str, said: str, *, here: bool = False) -> str:
    """``program`` is not there, with the last words the builder's (``here``: this host's)
    shell ``said``."""
    return f"{program} {NOT_ON_PATH_HERE if here else NOT_ON_PATH}: {said}"


# The shell's words for a forced command (the key's command=, sshd's ForceCommand) it cannot
# find, as sshd runs it (by its name, not its path): "bash: line 1: nix-daemon-x: command not
# found", "sh: 1: exec: /x/nix-daemon: not found", "bash: /x/nix-daemon: No such file or
# directory", "ash: x: not found", zsh's "zsh:1: command not found: x". Not a ProxyCommand's
# ("/bin/bash: line 1: exec: x: not found": by its path), nor sshd's of a missing login shell
# ("/usr/bin/zsh: No such file or directory"), nor Nix's ("error: ...").
_SHELL_NOT_FOUND = re.compile(
    r"^(?:(?:ba|da|k|z|a|mk)?sh: (?:line \d+: |\d+: )?(?:exec: )?\S+: "
    r"(?:command not found|not found|No such file or directory)"
    r"|zsh:\d+: (?:command not found|no such file or directory): \S+)$"
)
# ssh's own words of a connection that failed: with them, a shell's line is a ProxyCommand's,
# not the key's command.
_SSH_FAILED = (
    "kex_exchange_identification",
    "Connection closed by",
    "Connection refused",
    "no such identity",
    "unix_listener",
    "Permission denied (",
)


def forced_not_there(said: list[str]) -> str | None:
    """The shell's line when ``said`` (a login's last words, one per line) says the program
    its key runs is not there (``_SHELL_NOT_FOUND``, the last line said); None otherwise."""
    lines = [
        strip_ansi(line).strip()
        for line in said
        if line.strip() and not line.strip().startswith("(")
    ]
    if not lines or any(marker in line for line in lines for marker in _SSH_FAILED):
        return None
    return lines[-1] if _SHELL_NOT_FOUND.match(lines[-1]) else None


def forced_missing(said: str) -> tuple[str, str]:
    """(what, fix) for a login whose key's forced command (or sshd's ForceCommand) is not
    there: the shell ``said`` so where offload's own program never ran."""
    fix = (
        "check the key's command= in authorized_keys (or sshd's ForceCommand) on the builder:"
        f" ssh:// needs `{FORCED['ssh']}`, ssh-ng:// `{FORCED['ssh-ng']}` (a path the builder"
        " has: on NixOS, the nix package's bin/)"
    )
    return f"the program the builder runs for this key is not there ({said})", fix


def fix_path_here() -> str:
    """The fix for this host's Nix program not on the PATH offload was started with."""
    return (
        "offload starts this host's Nix programs from its PATH: put Nix's bin directory on it;"
        " offload-hook has the PATH of the Nix that starts it, a nix-daemon's for its hook"
    )


def install_nix(where: str = "the store URI") -> str:
    """The fix, naming ``where`` ``remote-program=`` goes (the machines file's line when it
    is known, else the store URI)."""
    return (
        "install Nix on the builder so that non-interactive ssh sessions find it on PATH,"
        f" or name the program with ?remote-program= in {where}"
    )
