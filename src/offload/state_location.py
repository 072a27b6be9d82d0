"""Where offload's state lives, as plain strings (``offload.paths`` gives the same as ``Path``s).

The one place the rules are written: ``$OFFLOAD_STATE_DIR`` wins; otherwise
``$XDG_STATE_HOME/offload`` or ``~/.local/state/offload``. The hook run by the nix-daemon has
no home of a user: as root without ``$HOME`` (or with ``/``, Nix's ``/homeless-shelter`` or
``/var/empty``) its state is ``/var/lib/offload``. Strings, because ``offload-hook`` starts
once per derivation Nix builds remotely and cannot afford to import ``pathlib``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

__all__ = [
    "HOOK_STATE_NOTE",
    "SYSTEM_STATE",
    "RelativeStateDir",
    "hook_state",
    "private_dir",
    "usable_hook_state",
    "user_state",
    "uses_xdg_state",
]

# The hook's state when the nix-daemon runs it (as root, with the daemon's bare environment).
SYSTEM_STATE = "/var/lib/offload"
_HOMELESS = frozenset({"", "/", "/homeless-shelter", "/var/empty"})
# The environment variable a hook passes its coordinator why its state is elsewhere (said once
# per nix-build).
HOOK_STATE_NOTE = "OFFLOAD_HOOK_STATE_NOTE"


class RelativeStateDir(ValueError):
    """``$OFFLOAD_STATE_DIR`` is not an absolute path: refused, as Nix refuses a relative
    ``NIX_STATE_DIR`` ("not an absolute path"): it would put the history, logs and backoff
    wherever each command happens to run. (A relative ``$XDG_STATE_HOME`` is ignored instead,
    as the XDG spec says: it is every program's, not offload's own setting.)"""

    HINT = "set it to an absolute path, or unset it"

    def __init__(self, value: str) -> None:
        super().__init__(f"OFFLOAD_STATE_DIR={value!r}: not an absolute path")


def user_state(env: Mapping[str, str] | None = None, home: str | None = None) -> str:
    """``RelativeStateDir`` if ``$OFFLOAD_STATE_DIR`` is relative."""
    env = os.environ if env is None else env
    if env.get("OFFLOAD_STATE_DIR"):
        if not os.path.isabs(env["OFFLOAD_STATE_DIR"]):  # noqa: PTH117 - no pathlib here
            raise RelativeStateDir(env["OFFLOAD_STATE_DIR"])
        return env["OFFLOAD_STATE_DIR"]
    if uses_xdg_state(env):
        return os.path.join(env["XDG_STATE_HOME"], "offload")  # noqa: PTH118 - no pathlib here
    base = home or _home(env)
    return os.path.join(base, ".local", "state", "offload")  # noqa: PTH118 - no pathlib here


def uses_xdg_state(env: Mapping[str, str]) -> bool:
    """Whether ``$XDG_STATE_HOME`` is used: the XDG spec has a relative one ignored, as
    invalid (it would put the history wherever each command happens to run)."""
    return os.path.isabs(env.get("XDG_STATE_HOME", ""))  # noqa: PTH117 - no pathlib here


def _home(env: Mapping[str, str]) -> str:
    """``$HOME``; where it is empty or relative, the user's home from the password database
    (``expanduser`` takes an empty one for the root directory: root's state in /.local)."""
    home = env.get("HOME", "")
    if os.path.isabs(home):  # noqa: PTH117 - no pathlib here
        return home
    import pwd  # only for a home that is not said: a builtin module, cheap for the hook

    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # a uid with no entry: as before, whatever expanduser makes of it
        return os.path.expanduser("~")  # noqa: PTH111 - no pathlib here


def hook_state(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if env.get("OFFLOAD_STATE_DIR") or uses_xdg_state(env):
        return user_state(env)
    if os.geteuid() == 0 and env.get("HOME", "") in _HOMELESS:
        return SYSTEM_STATE
    return user_state(env)


def private_dir(path: str, *, follow: bool = False) -> str:
    """``path`` made (with parents) and checked to be a real directory of this user's, mode
    0700: where sockets and keys may go, also under a shared /tmp. ``OSError`` if it is not.
    With ``follow``, a symbolic link to such a directory is one too: a state directory the
    user named (``offload build`` takes it so), not a name under a shared /tmp."""
    os.makedirs(path, mode=0o700, exist_ok=True)  # noqa: PTH103 - no pathlib here
    info = os.stat(path) if follow else os.lstat(path)  # noqa: PTH116 - no pathlib here
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OSError(f"{path} is not a directory of this user's")
    os.chmod(path, 0o700)  # noqa: PTH101 - no pathlib here
    return path


def usable_hook_state(env: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """``hook_state`` made private and writable, with no note; where it cannot be (a read-only
    home or mount, a file in its place), one under the temporary directory, the same for every
    hook of this user, with a note saying why: a state that cannot be kept where asked costs
    where it is kept, never the build (``OSError`` if that cannot be made either)."""
    env = os.environ if env is None else env
    try:
        state = hook_state(env)
    except RelativeStateDir as exc:
        instead = spare_state(env)
        return instead, f"{exc}; state kept in {instead} instead (hint: {exc.HINT})"
    try:
        # The user's own (a link to another disk is theirs to make, and `offload use`
        # writes through it): one that is refused here splits the state in two.
        private_dir(state, follow=True)
        if os.access(state, os.W_OK):  # EROFS too, which root's permissions do not pass
            return state, None
        why = "read-only"
    except OSError as exc:
        why = exc.strerror or str(exc)
    instead = spare_state(env)
    return instead, (
        f"{state}: cannot use the state directory ({why}); kept in {instead} instead"
        " (hint: set OFFLOAD_STATE_DIR to a writable directory)"
    )


def spare_state(env: Mapping[str, str] | None = None) -> str:
    """The state under the temporary directory, the same for every hook of this user (and
    where a run keeps its slot locks when its own state cannot hold them)."""
    env = os.environ if env is None else env
    tmp = env.get("TMPDIR") or "/tmp"  # noqa: S108 - a directory checked to be ours
    return private_dir(private_dir(f"{tmp}/offload-hook-{os.getuid()}") + "/state")
