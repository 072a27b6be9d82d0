"""Running a piece of a test as another user than root (the tests run as root, README)."""

from __future__ import annotations

import os
from collections.abc import Callable

NOBODY = 65534


def as_another_user(work: Callable[[], str]) -> str:
    """``work()`` run as user and group nobody in a forked child of this process (the
    interpreter is root's, so no exec): its answer, or its exception as ``Type: message``."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        answer = "unfinished"
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            answer = work()
        except BaseException as exc:  # noqa: BLE001 - the parent says what it was
            answer = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write, answer.encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode()
    os.waitpid(child, 0)
    return said
