"""Scratch directories: a killed run's is swept by the next, a live run's never.

Real /proc and real processes: a child started and SIGKILLed here stands in for a killed run."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.errors import TransportError
from offload.names import LOCAL
from offload.procfs import proc_stat
from offload.transport import scratch


def _namespace() -> str:
    return str(Path("/proc/self/ns/pid").readlink())


def _owned(base: Path, name: str, line: str) -> Path:
    directory = base / f"{scratch.PREFIX}{name}"
    directory.mkdir(mode=0o700)
    (directory / scratch.OWNER).write_text(line)
    (directory / "known_hosts").write_text("host key\n")
    return directory


def _killed_run_line() -> str:
    child = subprocess.Popen(["sleep", "60"])
    found = proc_stat(child.pid)
    assert found is not None
    child.send_signal(signal.SIGKILL)
    child.wait()
    return f"{_namespace()} {child.pid} {found[1]}\n"


def test_a_killed_runs_directory_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    dead = _owned(tmp_path, "dead", _killed_run_line())
    me = proc_stat(os.getpid())
    assert me is not None
    live = _owned(tmp_path, "live", f"{_namespace()} {os.getpid()} {me[1]}\n")
    recycled = _owned(tmp_path, "recycled", f"{_namespace()} {os.getpid()} {me[1] + 1}\n")
    # recycled: our pid with another start time, so the run that wrote it is gone.
    assert sorted(scratch.sweep(tmp_path)) == sorted([dead, recycled])
    assert not dead.exists()
    assert not recycled.exists()
    assert live.exists()


def test_what_is_not_provably_abandoned_is_left(tmp_path: Path) -> None:
    line = _killed_run_line()
    elsewhere = _owned(tmp_path, "otherns", line.replace(_namespace(), "pid:[1]", 1))
    unowned = tmp_path / f"{scratch.PREFIX}making"
    unowned.mkdir()
    garbled = _owned(tmp_path, "garbled", "not an owner line\n")
    link_target = tmp_path / "kept"
    link_target.mkdir()
    (link_target / scratch.OWNER).write_text(line)
    link = tmp_path / f"{scratch.PREFIX}link"
    link.symlink_to(link_target)
    assert scratch.sweep(tmp_path) == []
    for kept in (elsewhere, unowned, garbled, link, link_target):
        assert kept.exists(), kept


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A $TMPDIR short enough for ssh's socket path (pytest's tmp_path is not)."""
    base = Path(tempfile.mkdtemp(prefix="ofs", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    yield base
    shutil.rmtree(base)


def test_a_new_private_dir_records_its_owner_and_sweeps_first(short_tmp: Path) -> None:
    tmp_path = short_tmp
    dead = _owned(tmp_path, "dead", _killed_run_line())
    made = scratch.private_dir()
    assert made.parent == tmp_path
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    namespace, pid, _ = (made / scratch.OWNER).read_text().split()
    assert (namespace, int(pid)) == (_namespace(), os.getpid())
    assert not dead.exists()
    assert scratch.sweep(tmp_path) == []  # ours, while we live


def test_a_private_dir_that_cannot_be_written_is_an_error_and_leaves_nothing(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk failed the owner file's write: a bare OSError out of the link, and an
    # "ofl-" directory without an owner, which no sweep ever removes.
    real_write = Path.write_text

    def full(self: Path, *args: object, **kwargs: object) -> int:
        if self.name == scratch.OWNER:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(
        TransportError, match=r"cannot make a private directory in .*space left"
    ) as e:
        scratch.private_dir()
    assert e.value.peer == LOCAL  # this host's disk: each builder in turn was backed off for it
    assert list(short_tmp.iterdir()) == []
