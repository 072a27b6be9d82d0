"""`offload hook install --print`: how to make Nix use offload-hook, for this installation.

It prints, and changes nothing: the ``nix.conf`` line, the NixOS option, and how to switch it
off again. Nix 2.25-2.33 ignore a ``build-hook`` set in the system's nix.conf (nix#15083); on
those the setting must come through ``NIX_CONFIG`` or ``--option``, and only those ways are
printed when the local Nix is one of them. Lix 2.94 and later cannot run a line-protocol hook
at all.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from offload.errors import ConfigError, OffloadError
from offload.process import run

__all__ = ["LocalNix", "hook_path", "install_text", "register"]


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


@dataclass(frozen=True)
class LocalNix:
    """The Nix on PATH, as ``nix-store --version`` names it: its version, and whether it is
    Lix (``nix-store (Lix, like Nix) 2.93.0``), whose versions are its own."""

    version: tuple[int, int]
    lix: bool = False


def _local_nix() -> LocalNix | None:
    try:
        done = run(["nix-store", "--version"], check=False, timeout=30)
    except OffloadError:  # no Nix here: nothing version-specific to say
        return None
    match = re.search(r"(\d+)\.(\d+)", done.stdout)
    if match is None:
        return None
    return LocalNix((int(match.group(1)), int(match.group(2))), lix="Lix" in done.stdout)


def install_text(path: Path, nix: LocalNix | None, conf_dir: str = "/etc/nix") -> str:
    """What to write where, for ``nix``: Nix 2.25-2.33 overwrite a ``build-hook`` read from
    nix.conf with the default (nix#15083), so for those only the ways that work are given
    (the daemon's environment, NIX_CONFIG, --option); Lix 2.94 and later speak Cap'n Proto to
    their hook, which offload-hook cannot."""
    if nix is not None and nix.lix and nix.version >= (2, 94):
        return (
            f"# Lix {nix.version[0]}.{nix.version[1]} speaks Cap'n Proto to its build hook;"
            " offload-hook speaks Nix's\n# line protocol and cannot serve it. Use `offload"
            " build` for builds on the builders.\n"
        )
    splits = nix is None or nix.lix or nix.version >= (2, 10)
    if splits and any(char.isspace() for char in str(path)):
        # Nix 2.10 on splits build-hook into words (its sources), and ran the first, or
        # failed every build; 2.8 and 2.9 take it whole.
        raise ConfigError(
            f"offload-hook's path has a blank, and Nix splits build-hook on blanks: {path}",
            hint="link it from a path without one (ln -s ... /usr/local/bin/offload-hook) and"
            " run that offload",
        )
    one = [
        "# One build only, without changing any file (as root or a trusted user: a",
        "# nix-daemon ignores build-hook from any other user's command: silently before 2.22):",
        f"nix-build --option build-hook {path} ...",
    ]
    if nix is not None and not nix.lix and (2, 25) <= nix.version <= (2, 33):
        setting = f"build-hook = {path}"
        return "\n".join([
            f"# Nix {nix.version[0]}.{nix.version[1]} ignores build-hook in {conf_dir}/nix.conf:",
            "# nix#15083 (fixed in 2.34): the nix-daemon takes it from NIX_CONFIG, set for it.",
            "# systemd (systemctl edit nix-daemon; then systemctl restart nix-daemon):",
            "[Service]",
            f'Environment="NIX_CONFIG={setting}"',
            "",
            "# NixOS (configuration.nix; or services.offload.enable = true, which does it):",
            f'systemd.services.nix-daemon.environment.NIX_CONFIG = "{setting}";',
            "",
            *one,
            "",
            "# To switch it off, remove that Environment line (or the NixOS option) and restart",
            "# nix-daemon (Nix goes back to its own build-remote).",
        ]) + "\n"  # fmt: skip
    lines = [
        f"# nix.conf ({conf_dir}/nix.conf; restart nix-daemon after changing it):",
        f"build-hook = {path}",
        "# (A nix-daemon of Nix 2.25-2.33 ignores that line, nix#15083: where the daemon runs",
        "# another Nix than this command's, as `nix store ping` says, and it is one of those,",
        f'# give it NIX_CONFIG="build-hook = {path}" in its environment instead.)',
        "",
        "# NixOS (configuration.nix; a NixOS whose Nix is 2.25-2.33 ignores this one as well:",
        "# services.offload.enable = true sets it through NIX_CONFIG on any):",
        f'nix.settings.build-hook = "{path}";',
        "",
        *one,
        "",
        "# To switch it off, remove the line (Nix goes back to its own build-remote).",
    ]
    if nix is not None and nix.lix:
        lines += ["", "# Lix 2.91-2.93 still run a build-hook, but have deprecated it."]
    return "\n".join(lines) + "\n"


def _install(args: argparse.Namespace) -> int:
    del args
    conf_dir = os.environ.get("NIX_CONF_DIR") or "/etc/nix"
    sys.stdout.write(install_text(hook_path(), _local_nix(), conf_dir))
    return 0
