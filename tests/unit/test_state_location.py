"""Where the user's state lives when the environment says it badly: an empty or relative
``$HOME`` is not taken as the root directory or the working one, a relative
``$XDG_STATE_HOME`` is ignored as the XDG spec asks, and a relative ``$OFFLOAD_STATE_DIR`` is
refused as Nix refuses its own relative directories."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from offload.cli import main
from offload.paths import state_hint
from offload.state_location import hook_state, usable_hook_state, user_state

HOME = pwd.getpwuid(os.getuid()).pw_dir


@pytest.mark.parametrize("home", ["", "relative/home", "."])
def test_a_home_that_is_no_absolute_path_is_the_users_own(
    home: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python's expanduser took "" for "/": root's history went to /.local/state/offload.
    monkeypatch.setenv("HOME", home)
    assert user_state({"HOME": home}) == f"{HOME}/.local/state/offload"
    assert user_state() == f"{HOME}/.local/state/offload"


def test_a_relative_xdg_state_home_is_ignored() -> None:
    env = {"HOME": "/home/u", "XDG_STATE_HOME": "rel/state"}
    assert user_state(env) == "/home/u/.local/state/offload"
    assert not state_hint(env).startswith("it is $XDG_STATE_HOME")
    assert user_state({**env, "XDG_STATE_HOME": "/s"}) == "/s/offload"


@pytest.mark.skipif(os.geteuid() != 0, reason="the nix-daemon's hook runs as root")
def test_the_daemons_hook_ignores_a_relative_xdg_state_home_too() -> None:
    # Under the nix-daemon (root, no home) the hook's state is the system one, as without it.
    env = {"HOME": "/homeless-shelter", "XDG_STATE_HOME": "rel/state"}
    assert hook_state(env) == "/var/lib/offload"
    assert hook_state({**env, "XDG_STATE_HOME": "/s"}) == "/s/offload"


def test_a_relative_offload_state_dir_is_refused_not_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As Nix refuses a relative NIX_STATE_DIR ("not an absolute path"): each command run in
    # another directory kept (and read) another history, backoff and `offload use` choice.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OFFLOAD_STATE_DIR", "rel/state")
    for argv in (["history"], ["use", "--clear"], ["status"]):
        assert main(argv) == 1
        assert capsys.readouterr().err == (
            "error: OFFLOAD_STATE_DIR='rel/state': not an absolute path\n"
            "hint: set it to an absolute path, or unset it\n"
        )
    assert list(tmp_path.iterdir()) == []


def test_the_hook_keeps_its_state_aside_for_a_relative_offload_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hook never fails a build for its state: kept where an unusable one is, said once.
    monkeypatch.chdir(tmp_path)
    env = {"HOME": str(tmp_path), "OFFLOAD_STATE_DIR": "rel", "TMPDIR": str(tmp_path / "tmp")}
    state, note = usable_hook_state(env)
    assert state == f"{tmp_path}/tmp/offload-hook-{os.getuid()}/state"
    assert note == (
        f"OFFLOAD_STATE_DIR='rel': not an absolute path; state kept in {state} instead"
        " (hint: set it to an absolute path, or unset it)"
    )
    assert not (tmp_path / "rel").exists()


def test_the_hook_takes_a_state_directory_that_is_a_link_to_the_user_s_own(
    tmp_path: Path,
) -> None:
    # Refused as "not a directory of this user's": the hook kept its state under the
    # temporary directory while `offload use` wrote through the link: two states.
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    env = {"HOME": str(tmp_path), "OFFLOAD_STATE_DIR": str(tmp_path / "link")}
    assert usable_hook_state(env) == (str(tmp_path / "link"), None)
