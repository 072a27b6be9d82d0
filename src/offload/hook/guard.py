"""The guard: what cleans up after a hook process that did not get to do it itself.

Nix 2.8 ends a hook with SIGKILL to its process group when the user interrupts the build
(Nix 2.35 sends SIGTERM first and waits 500 ms, ``HookInstance``'s destructor), and
killing ssh does not stop a remote build: without help, the builder would go on building for
nobody and keep the slot. So once the remote serve process is known, the hook starts a guard: a
``sh`` in a session of its own whose stdin is a pipe only the hook holds. When the hook is done
it writes ``done``; if the hook goes any other way the guard reads EOF and then removes the
hook's temporary output trees (``offload.hook.home``) and stops the remote serve process and
its builders over the shared ssh master. A guard costs one ``sh`` per accepted build.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import IO

from offload.hook.home import TEMP_MARK
from offload.process import local_sh, start_guard

__all__ = ["Guard", "guard_argv"]

_SCRIPT = (
    'if read -r word && [ "$word" = done ]; then exit 0; fi; '
    # <32-character hash part>-offload-hook-temp-<pid>-<batch>-<n> (offload.hook.home)
    'rm -rf -- "$1"/' + "?" * 32 + "-" + TEMP_MARK + '"$2"-*; shift 2; exec "$@"'
)


def guard_argv(store_dir: str, pid: int, kill: Sequence[str]) -> list[str]:
    """``sh`` that waits for EOF or ``done`` on stdin, then cleans up and runs ``kill``."""
    return ["sh", "-c", _SCRIPT, "sh", store_dir, str(pid), *kill]


class Guard:
    def __init__(self, store_dir: str, kill: Sequence[str]) -> None:
        self._pipe: IO[bytes] | None = start_guard(
            local_sh(guard_argv(store_dir, os.getpid(), kill))
        )

    def dismiss(self) -> None:
        """The hook cleaned up itself: the guard exits without doing anything."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.write(b"done\n")
                pipe.close()
