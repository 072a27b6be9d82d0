"""`offload hook install --print`: how to make Nix use offload-hook, for this installation.

It prints, and changes nothing: the ``nix.conf`` line, the NixOS option, and how to switch it
off again. Nix 2.25-2.33 ignore a ``build-hook`` set in nix.conf (nix#15083); on those the
setting must come through ``NIX_CONFIG`` or ``--option``, which the text says when the local Nix
is one of them.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from offload.errors import ConfigError, OffloadError
from offload.process import run

__all__ = ["hook_path", "install_text", "register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("hook", help="set up offload-hook as Nix's build hook")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = actions.add_parser("install", help="how to switch the hook on")
    install.add_argument(
        "--print", action="store_true", required=True, help="print the settings (changes nothing)"
    )
    install.set_defaults(func=_install)


def hook_path() -> Path:
    """The ``offload-hook`` beside the ``offload`` that runs, else on PATH, by the path it was
    found at: a profile's (``~/.nix-profile/bin``, ``/run/current-system/sw/bin``) follows
    upgrades, where the store path behind its symlinks is removed by the first garbage
    collection after the profile moves on, and every build then fails to start its hook."""
    started = Path(sys.argv[0]).absolute()
    for beside in (started.parent / "offload-hook", started.resolve().parent / "offload-hook"):
        if beside.is_file():
            return beside
    found = shutil.which("offload-hook")
    if found is None:
        raise ConfigError("offload-hook is not installed beside offload nor on PATH")
    return Path(found).absolute()


def _nix_version() -> tuple[int, int] | None:
    try:
        done = run(["nix-store", "--version"], check=False, timeout=30)
    except OffloadError:  # no Nix here: nothing version-specific to say
        return None
    match = re.search(r"(\d+)\.(\d+)", done.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else None


def install_text(path: Path, version: tuple[int, int] | None) -> str:
    lines = [
        "# nix.conf (/etc/nix/nix.conf; restart nix-daemon after changing it):",
        f"build-hook = {path}",
        "",
        "# NixOS (configuration.nix):",
        f'nix.settings.build-hook = "{path}";',
        "",
        "# One build only, without changing any file (as root or a trusted user: a",
        "# nix-daemon ignores build-hook from any other user's command, without a word):",
        f"nix-build --option build-hook {path} ...",
        "",
        "# To switch it off, remove the line (Nix goes back to its own build-remote).",
    ]
    if version is not None and (2, 25) <= version <= (2, 33):
        lines += [
            "",
            f"# Nix {version[0]}.{version[1]} ignores build-hook in nix.conf (nix#15083):",
            f'# set it for the daemon with NIX_CONFIG="build-hook = {path}" in its environment,',
            "# or pass --option build-hook on each command; Nix 2.34 fixes this.",
        ]
    return "\n".join(lines) + "\n"


def _install(args: argparse.Namespace) -> int:
    del args
    sys.stdout.write(install_text(hook_path(), _nix_version()))
    return 0
