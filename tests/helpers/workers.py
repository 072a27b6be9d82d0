"""What each pytest-xdist worker has of its own (a pytest plugin: see tests/conftest.py).

``make test`` runs the suite in two worker processes, a test module to a worker. Almost everything
a test touches is its own already: its fleets (names, directories and ports of their own), its
state, ssh masters, build logs and temporary directories. One place is the host's: the local
machine's build slots, ``local-<n>`` in Nix's ``/nix/var/nix/current-load``
(``offload.slots``), which every offload process on a host shares, as it should. Two workers'
runs would then share the local machine's two slots, and a test that counts on them would wait
for the other worker's builds. So each worker runs in a mount namespace of its own, where a
directory of its own is bound over ``current-load``: to each worker the local machine is a
host of its own, as the fleet's members are to each other (``offload.fleet.spec``). Builder
slots need nothing: their files are named after the fleet's URIs, which differ per fleet.

Tests' directories stay as short as without workers. pytest-xdist puts each worker's under
``<basetemp>/popen-gw<n>``, ten characters longer than pytest's own, and sockets in a test's
``tmp_path`` (a hook coordinator's, ssh masters') must fit in 108 bytes, as the tests that
check where they go count on. So a run with workers gets a short base of its own,
``/tmp/ot-XXXXXXXX``, removed when every test passed (kept for a look otherwise).

The namespace is the worker's main thread's (``unshare(2)``), from which pytest runs every
test and starts every process; mounts in it are private, so nothing reaches the host's. A run
without workers (``pytest`` alone, ``-n 0``) is left as it is.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from offload.slots import NIX_CURRENT_LOAD

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

_SHORT_BASE = pytest.StashKey[Path]()


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path plugin reads the base
def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is not None:
        _own_current_load(config, worker)
    elif config.getoption("numprocesses", None) and config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="ot-", dir="/tmp")
        config.stash[_SHORT_BASE] = Path(config.option.basetemp)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    base = session.config.stash.get(_SHORT_BASE, None)
    if base is not None and exitstatus == pytest.ExitCode.OK:
        shutil.rmtree(base, ignore_errors=True)


def _own_current_load(config: pytest.Config, worker: str) -> None:
    own = Path(tempfile.mkdtemp(prefix=f"offload-slots-{worker}-", dir="/tmp"))
    config.add_cleanup(lambda: shutil.rmtree(own, ignore_errors=True))
    NIX_CURRENT_LOAD.mkdir(parents=True, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    _call(libc.unshare, CLONE_NEWNS)
    _call(libc.mount, b"none", b"/", None, MS_REC | MS_PRIVATE, None)
    _call(libc.mount, os.fsencode(own), os.fsencode(NIX_CURRENT_LOAD), None, MS_BIND, None)


def _call(function: ctypes._NamedFuncPointer, *args: object) -> None:
    if function(*args) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{function.__name__}: {os.strerror(error)}")
