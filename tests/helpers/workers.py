"""What each pytest-xdist worker has of its own (a pytest plugin: see tests/conftest.py).

``make test`` runs the suite in two worker processes, a test module to a worker. Almost everything
a test touches is its own already: its fleets (names, directories and ports of their own), its
state, ssh masters, build logs and temporary directories. The local machine's Nix is not: its
store and database, and its build slots (``local-<n>`` in ``/nix/var/nix/current-load``,
``offload.slots``), which every offload process on a host shares, as it should. Two workers'
runs would then share the local machine's two slots, a test counting on them would wait for
the other worker's builds, and Nix would warn of its database being busy in the middle of
output that tests read line by line. So each worker runs in a mount namespace of its own,
where a directory of its own is bound over ``/nix``: to each worker the local machine is a
host of its own, with an empty store, as each fleet member is (``offload.fleet.spec``). The
tests build what they use; Nix itself is the system's (``/usr/bin``). Its ``nix.conf`` is the
host's with no build users, as a member's is: those uids are the host's, and Nix kills every
process of a build user around each build, in whatever store another worker builds as that
user.

Tests' directories stay as short as without workers. pytest-xdist puts each worker's under
``<basetemp>/popen-gw<n>``, ten characters longer than pytest's own, and sockets in a test's
``tmp_path`` (a hook coordinator's, ssh masters') must fit in 108 bytes, as the tests that
check where they go count on. So a run with workers gets a short base of its own,
``/tmp/ot-XXXXXXXX``, removed when every test passed (kept for a look otherwise).

The namespace is the worker's main thread's (``unshare(2)``), from which pytest runs every
test and starts every process; mounts in it are private, so nothing reaches the host's. A run
without workers (``pytest`` alone, ``-n 0``) is left as it is, on the host's store.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path

import pytest

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

NIX_CONF_DIR = Path("/etc/nix")
HOST_NIX_VAR = Path("/nix/var")

_SHORT_BASE = pytest.StashKey[Path]()


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path plugin reads the base
def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is not None:
        _own_nix(config, worker)
    elif config.getoption("numprocesses", None) and config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="ot-", dir="/tmp")
        config.stash[_SHORT_BASE] = Path(config.option.basetemp)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    base = session.config.stash.get(_SHORT_BASE, None)
    if base is not None and exitstatus == pytest.ExitCode.OK:
        shutil.rmtree(base, ignore_errors=True)


def _own_nix(config: pytest.Config, worker: str) -> None:
    own = Path(tempfile.mkdtemp(prefix=f"offload-nix-{worker}-", dir="/tmp"))
    config.add_cleanup(lambda: shutil.rmtree(own, ignore_errors=True))
    # As the host's: open to Nix's build users, with the host's directories under /nix/var
    # (empty): Nix makes what it needs on first use, but tests bind onto its daemon's socket
    # directory and ask whether offload may write its current-load's parent.
    own.chmod(0o755)
    (own / "nix" / "var" / "nix").mkdir(parents=True)
    for host in HOST_NIX_VAR.glob("*/*"):
        if host.is_dir() and not host.is_symlink():
            made = own / "nix" / host.relative_to("/nix")
            made.mkdir(parents=True, exist_ok=True)
            made.chmod(host.stat().st_mode & 0o7777)
    conf = own / "nix.conf"
    host_conf = NIX_CONF_DIR / "nix.conf"
    conf.write_text(
        (host_conf.read_text() if host_conf.exists() else "")
        + "\n# Each worker's store is its own, but Nix's build users are the host's: a build as\n"
        "# nixbld1 in one store would kill another store's builds as nixbld1 (Nix kills a build\n"
        "# user's every process before and after its build). Builds run as root, as a fleet\n"
        "# member's do (offload.fleet.spec).\nbuild-users-group =\n"
    )
    conf.chmod(0o644)
    libc = ctypes.CDLL(None, use_errno=True)
    _call(libc.unshare, CLONE_NEWNS)
    _call(libc.mount, b"none", b"/", None, MS_REC | MS_PRIVATE, None)
    _call(libc.mount, os.fsencode(own / "nix"), b"/nix", None, MS_BIND, None)
    if host_conf.exists():
        _call(libc.mount, os.fsencode(conf), os.fsencode(host_conf), None, MS_BIND, None)
    else:
        os.environ["NIX_CONF_DIR"] = str(own)


def _call(function: ctypes._NamedFuncPointer, *args: object) -> None:
    if function(*args) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{function.__name__}: {os.strerror(error)}")
