"""Where the user's state lives when the environment says it badly: an empty or relative
``$HOME`` is not taken as the root directory or the working one, and a relative
``$XDG_STATE_HOME`` is ignored as the XDG spec asks."""

from __future__ import annotations

import os
import pwd

import pytest

from offload.paths import state_hint
from offload.state_location import hook_state, user_state

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
