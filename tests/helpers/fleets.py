"""Local sshd fleets for integration tests (a pytest plugin: see tests/conftest.py).

``fleet`` is the three-member fleet (fast:4:2, medium:2:2, slow:1:2) shared by the session.
A module whose tests kill members or edit them gets a fleet of its own from
``private_fleet_fixture``, so the shared one is never changed. The functions read what a
fleet's members are and do.

The ssh masters a test's runs keep (``offload.transport.persist``: ``<tmp_path>/state/ssh``,
or, as pytest's tmp_path is too long for a socket there, ``$TMPDIR/offload-ssh-<uid>-<hash>``)
are the test's own: a test with a ``tmp_path`` gets a short ``TMPDIR`` of its own, in this
process (where tests look for masters) and in every process it starts, and its masters there
are stopped when it ends. Those under ``/tmp``, where other pytest sessions' and people's runs
keep theirs, are never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

from offload.config.machines import Machine, parse_machines
from offload.config.machines.uri import parse_store_uri
from offload.fleet import DEFAULT_SPECS, Fleet, Member, MemberSpec, fleet_down, fleet_up
from offload.procfs import running
from offload.transport.persist import location
from offload.transport.ssh import ssh_path
from tests.helpers.offload_run import stop_coordinators


@contextlib.contextmanager
def private_fleet(
    specs: Sequence[MemberSpec] = DEFAULT_SPECS, prefix: str = "ofl"
) -> Iterator[Fleet]:
    """A fleet of its own in a fresh directory, always stopped and removed afterwards. The
    directory is short on purpose: sshd and ssh limit path lengths."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield fleet_up(root, specs)
    finally:
        try:
            fleet_down(root, purge=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def private_fleet_fixture(
    specs: Sequence[MemberSpec] = DEFAULT_SPECS,
    prefix: str = "ofl",
    *,
    scope: Literal["function", "module", "session"] = "function",
    doc: str = "A private fleet: tests may kill or change its members.",
) -> Any:
    """A fixture that starts ``private_fleet(specs, prefix)`` once per ``scope``; it takes the
    name it is assigned to (``own_fleet = private_fleet_fixture(...)`` in a test module)."""

    def started() -> Iterator[Fleet]:
        with private_fleet(specs, prefix) as fleet:
            yield fleet

    started.__doc__ = doc
    return pytest.fixture(scope=scope)(started)


@pytest.fixture(autouse=True)
def _persistent_masters_end_with_the_test(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A test with a ``tmp_path`` keeps its runs' ssh masters in a directory of its own (module
    docstring), stopped when it ends. (``tmp_path`` first: pytest finds its own base directory
    through ``tempfile`` too, when not given one.)"""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    tmp_path: Path = request.getfixturevalue("tmp_path")
    short = Path(tempfile.mkdtemp(prefix="ofm", dir="/tmp"))  # short: sockets go under it
    monkeypatch.setenv("TMPDIR", str(short))
    monkeypatch.setattr(tempfile, "tempdir", str(short))
    try:
        yield
    finally:
        try:
            # The state's own directory when short enough, and the fallback, ``short``'s; one
            # never made holds no socket (a look at /proc the less for most tests).
            fallbacks = short.glob(f"offload-ssh-{os.getuid()}-*")
            for place in {location(tmp_path / "state"), *fallbacks}:
                if place.exists():
                    stop_masters(place)
        finally:
            shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def coordinators_stopped(tmp_path: Path) -> Iterator[None]:
    """The hook coordinators a test's nix-builds started (state in ``tmp_path / "state"``)
    are stopped with the test, and checked gone; a module asks for it with
    ``pytestmark = pytest.mark.usefixtures("coordinators_stopped")``."""
    yield
    stop_coordinators(tmp_path / "state")


def persistent_masters(control_dir: Path) -> list[int]:
    """Pids of the background ssh masters serving sockets in ``control_dir``."""
    masters = []
    for pid in ssh_using(control_dir):
        with contextlib.suppress(OSError):
            if b"[mux]" in Path(f"/proc/{pid}/cmdline").read_bytes():
                masters.append(pid)
    return masters


def stop_masters(control_dir: Path, timeout: float = 10.0) -> None:
    """Stop the persistent ssh masters (and their sessions) whose sockets are in
    ``control_dir``, and wait until they are gone: SIGTERM, on which ssh closes the connection
    and removes its socket; SIGKILL for any still there after ``timeout`` s."""
    pids = ssh_using(control_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while (pids := [pid for pid in pids if running(pid)]) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not pids:
            return


fleet = private_fleet_fixture(
    scope="session",
    doc="The three-member local fleet (fast:4:2, medium:2:2, slow:1:2), once per session, "
    "started only when a test asks for it.",
)


def fleet_machine(fleet: Fleet, name: str) -> Machine:
    """Member ``name`` as its line in the fleet's machines file describes it."""
    machines, _ = parse_machines(fleet.machines_file.read_text(), source="m", system=fleet.system)
    return next(m for m in machines if m.name == name)


def machines_lines(fleet: Fleet) -> list[list[str]]:
    return [line.split() for line in fleet.machines_file.read_text().splitlines() if line]


def member_line(fleet: Fleet, name: str) -> str:
    """Member ``name``'s line in the fleet's machines file."""
    uri = fleet.member(name).uri
    return next(
        line for line in fleet.machines_file.read_text().splitlines() if line.split()[0] == uri
    )


def host_of(uri: str) -> str | None:
    """A machines line's member: ``ssh://fast?ssh-key=...`` -> ``fast`` (the fleet's URIs carry
    its key, so that two fleets never share slot locks)."""
    return parse_store_uri(uri).host


def speed_of(fleet: Fleet, name: str) -> str:
    """What ``nix_files.SPEED`` prints on member ``name``."""
    return (fleet.member(name).root / "etc-nix" / "offload-speed").read_text().strip()


def member_processes(member: Member) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes that see ``member``'s store at /nix."""
    want = (member.root / "nix").stat()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            seen = (entry / "root" / "nix").stat()
            # Any process's: not all of them are in UTF-8, its name (in stat) nor its arguments.
            stat = (entry / "stat").read_bytes().decode(errors="replace")
            raw = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            cmdline = raw.decode(errors="replace").strip()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] in "ZX":
            continue
        if (seen.st_dev, seen.st_ino) == (want.st_dev, want.st_ino):
            found.append((int(entry.name), cmdline))
    return found


@contextlib.contextmanager
def sessions_silent(member: Member) -> Iterator[None]:
    """``member``'s end of every connection open to it stops answering (its sshd session
    processes stopped, as a hung or suspended builder's are); its sshd still takes new ones.
    Afterwards those session processes are killed."""
    silent = [
        pid for pid, cmd in member_processes(member) if pid != member.pid and cmd.startswith("sshd")
    ]
    assert silent, "no connection is open to the member"
    for pid in silent:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in silent:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def drop_member(member: Member) -> None:
    """Kill the member outright, as a host that lost its power: its sshd and everything running
    in its namespace, all at once. Each is stopped first (SIGSTOP, until no new one appears),
    then all are killed: killed one by one, a build's own process could die before the
    nix-store serving it, which would then report the build killed by signal 9 over a
    connection still open (a build that failed, not a builder gone). In /proc's order of pids
    that happened whenever the pids had wrapped around between the two."""
    stopped: set[int] = set()
    while fresh := {member.pid, *(pid for pid, _ in member_processes(member))} - stopped:
        for pid in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        stopped |= fresh
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def established(port: int) -> int:
    """Established TCP connections to 127.0.0.1:port (client side), from /proc/net/tcp."""
    want = f"0100007F:{port:04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == want and fields[3] == "01":
            count += 1
    return count


def ssh_using(control_dir: Path) -> list[int]:
    """Pids of the processes whose command line names ``control_dir`` (ssh masters, sessions;
    given to ssh with ``%`` doubled, ``ssh_path``)."""
    names = {str(control_dir).encode(), ssh_path(control_dir).encode()}
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if any(name in cmdline for name in names):
                    pids.append(int(entry.name))
    return pids
