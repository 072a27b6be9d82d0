"""`offload hook install --print` names offload-hook by the path it was found at.

Installed with Nix (``nix profile install``, NixOS's ``environment.systemPackages``), the
``offload`` a person runs is a symlink chain from their profile into one store path. The line
printed goes into nix.conf: a store path there is removed by the first garbage collection after
the profile moves on (an upgrade), and every build then fails with "executing '...': No such
file or directory". The profile's path follows the upgrade. Here the profile is a directory of
symlinks to this installation's scripts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from offload.cli.hook import LocalNix, install_text
from offload.errors import ConfigError

BIN = Path(sys.executable).parent


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "profile" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("offload", "offload-hook"):
        (bin_dir / name).symlink_to(BIN / name)
    return bin_dir


def _printed(argv: list[str], path: str) -> list[str]:
    done = subprocess.run(
        argv, env={**os.environ, "PATH": path}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("build-hook = ")]


def test_the_profiles_path_is_printed_not_the_one_behind_its_symlinks(profile: Path) -> None:
    lines = _printed([str(profile / "offload"), "hook", "install", "--print"], os.environ["PATH"])
    assert lines == [f"build-hook = {profile / 'offload-hook'}"]


def test_one_found_on_path_is_printed_as_found(profile: Path) -> None:
    # `python -m offload`: nothing beside the module, so PATH's offload-hook, as PATH names it.
    path = f"{profile}:{os.environ['PATH']}"
    lines = _printed([sys.executable, "-m", "offload", "hook", "install", "--print"], path)
    assert lines == [f"build-hook = {profile / 'offload-hook'}"]


def test_the_one_build_line_says_who_a_daemon_takes_it_from(profile: Path) -> None:
    # Checked with Nix 2.8: an untrusted user's `--option build-hook` reaches a nix-daemon,
    # which ignores it silently and builds with its own hook.
    done = subprocess.run(
        [str(profile / "offload"), "hook", "install", "--print"], capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    one = lines.index(f"nix-build --option build-hook {profile / 'offload-hook'} ...")
    assert "trusted user" in " ".join(lines[one - 2 : one])


@pytest.mark.parametrize("version", [(2, 25), (2, 28), (2, 33)])
def test_on_a_nix_that_ignores_nix_conf_only_the_ways_that_work_are_printed(
    version: tuple[int, int],
) -> None:
    # nix#15083: Nix 2.25-2.33 overwrite a build-hook read from nix.conf with the default.
    # The text led with the nix.conf line and nix.settings.build-hook, both ignored there.
    text = install_text(Path("/p/offload-hook"), LocalNix(version))
    assert "build-hook = /p/offload-hook\n" not in text  # no nix.conf line
    assert "nix.settings.build-hook" not in text
    assert 'Environment="NIX_CONFIG=build-hook = /p/offload-hook"' in text
    assert (
        'systemd.services.nix-daemon.environment.NIX_CONFIG = "build-hook = /p/offload-hook";'
        in text
    )
    assert "nix-build --option build-hook /p/offload-hook ..." in text


@pytest.mark.parametrize("version", [(2, 8), (2, 24), (2, 34), (2, 35)])
def test_on_other_nix_the_nix_conf_line_is_printed_where_nix_reads_it(
    version: tuple[int, int],
) -> None:
    text = install_text(Path("/p/offload-hook"), LocalNix(version), "/srv/nix-conf")
    assert "# nix.conf (/srv/nix-conf/nix.conf; restart nix-daemon" in text
    assert "\nbuild-hook = /p/offload-hook\n" in text
    # A daemon of another Nix than the command's may be one that ignores nix.conf's line.
    assert "nix-daemon of Nix 2.25-2.33 ignores that line" in text
    assert 'give it NIX_CONFIG="build-hook = /p/offload-hook" in its environment' in text
    assert "Environment=" not in text
    # So may the NixOS system's Nix: its option went without a word (tester).
    nixos = text.split("# NixOS", 1)[1]
    assert "2.25-2.33 ignores this one as well" in nixos.split("nix.settings.build-hook")[0]


def test_a_hook_path_with_a_blank_is_refused_with_a_way_round() -> None:
    # Nix 2.10 and later split build-hook into words: every build ran "/opt/my" or failed.
    with pytest.raises(ConfigError, match="Nix splits build-hook on blanks: /opt/my apps/") as e:
        install_text(Path("/opt/my apps/offload-hook"), LocalNix((2, 10)))
    assert e.value.hint is not None
    assert "ln -s" in e.value.hint
    # Nix 2.8 and 2.9 take the setting whole.
    assert "build-hook = /opt/my apps/offload-hook\n" in install_text(
        Path("/opt/my apps/offload-hook"), LocalNix((2, 9))
    )


def test_a_lix_that_speaks_capn_proto_to_its_hook_is_told_it_cannot_run_it() -> None:
    text = install_text(Path("/p/offload-hook"), LocalNix((2, 94), lix=True))
    assert "Cap'n Proto" in text
    assert "build-hook =" not in text
    older = install_text(Path("/p/offload-hook"), LocalNix((2, 93), lix=True))
    assert "\nbuild-hook = /p/offload-hook\n" in older  # Lix 2.93 is no Nix 2.25-2.33
    assert "deprecated" in older
