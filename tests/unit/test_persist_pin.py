"""A builder's pinned host key that cannot be written where kept masters live (a full state
disk): one error line and no temporary file left, and ``offload build``'s transport then keeps
no master, with one of the run's own instead of an internal error."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from offload.errors import TransportError
from offload.transport.links.ssh_master import SshTransport
from offload.transport.persist import SharedPaths
from offload.transport.ssh import SshTarget

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOd1zkuWH4zrB1rIwZRx1wOEEyIf2FMX0Ve9HQB8JTYw"
TARGET = SshTarget("builder.example", public_host_key=KEY)


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """mkstemp makes its file, whose writes then fail as on a full disk (/dev/full)."""
    made = tempfile.mkstemp

    def mkstemp(*, dir: Path, prefix: str) -> tuple[int, str]:  # noqa: A002 - mkstemp's name
        fd, path = made(dir=dir, prefix=prefix)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), path

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_a_key_that_cannot_be_written_is_one_error_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _full_disk(monkeypatch)
    paths = SharedPaths(tmp_path, TARGET, "")
    with pytest.raises(TransportError) as raised:
        paths.pin()
    assert raised.value.message == (
        f"cannot write the pinned host key of builder.example to {paths.known_hosts}: "
        "No space left on device"
    )
    assert raised.value.hint is not None
    assert list(tmp_path.iterdir()) == []  # each attempt had left a .known_hosts-XXXX


def test_the_run_keeps_no_master_where_its_key_cannot_be_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = SshTransport(TARGET, name="b", shared=tmp_path)
    shared = transport._shared
    assert shared is not None
    _full_disk(monkeypatch)
    assert transport._reuse(shared) is False
    assert transport._shared is None
    assert list(tmp_path.iterdir()) == []


def test_pins_of_masters_long_gone_are_swept_and_one_in_use_is_kept(tmp_path: Path) -> None:
    # One known_hosts file per builder line and NIX_SSHOPTS ever used piled up in <state>/ssh
    # (interrupts tester: 18 after an hour); the next master pins again anyway.
    from offload.transport.persist import control_dir, location

    directory = location(tmp_path)
    directory.mkdir(mode=0o700)
    old = directory.stat().st_mtime - 2 * 3600
    stale, live, fresh = (directory / f"{n}.known_hosts" for n in ("aaaa", "bbbb", "cccc"))
    for pin in (stale, live, fresh):
        pin.write_text(f"{TARGET.host} {KEY}\n")
    (directory / "bbbb").touch()  # its master's socket: in use
    os.utime(stale, (old, old))
    os.utime(live, (old, old))
    again = SharedPaths(directory, TARGET, "")
    assert again.known_hosts is not None
    again.pin()
    os.utime(again.known_hosts, (old, old))
    again.pin()  # as a new master pins it: the same line, touched, so not stale
    assert control_dir(tmp_path) == directory
    assert sorted(p.name for p in directory.glob("*.known_hosts")) == sorted(
        [live.name, fresh.name, again.known_hosts.name]
    )
