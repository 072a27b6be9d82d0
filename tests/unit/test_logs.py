"""The build log store: kept logs, their modes, pruning, the run's recorder, and logs kept
where Nix reads them. `offload log` itself: ``test_log_command``."""

from __future__ import annotations

import bz2
import itertools
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest

from offload.errors import OffloadError
from offload.logs import BuildLogs, LogFile
from offload.names import LOCAL
from offload.nix_log_copies import keep_for_nix, nix_log_path
from offload.ui.events import JobFinished, JobPhase
from tests.helpers.log_clock import DRV, OTHER, T0, Clock
from tests.helpers.users import as_another_user


def test_round_trip_as_received(tmp_path: Path) -> None:
    logs = BuildLogs(tmp_path / "logs", clock=Clock())
    with logs.open(DRV, "fast") as writer:
        writer.write("\x1b[32mchecking\x1b[0m for gcc... yes")
        writer.write("done\n")
        writer.write("ünïcode ✓")
    assert logs.read(DRV) == "\x1b[32mchecking\x1b[0m for gcc... yes\ndone\nünïcode ✓\n"
    assert logs.read(Path(DRV).name, "fast") == logs.read(DRV)  # a basename works too
    found = logs.latest(DRV)
    assert found is not None
    parsed = LogFile.parse(found)
    assert parsed is not None
    assert (parsed.drv_name, parsed.machine) == (Path(DRV).name, "fast")


def test_modes_are_private(tmp_path: Path) -> None:
    root = tmp_path / "state" / "logs"
    logs = BuildLogs(root, clock=Clock())
    with logs.open(DRV, "fast") as writer:
        writer.write("x")
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    path = logs.latest(DRV)
    assert path is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_latest_picks_the_newest_and_filters_by_machine(tmp_path: Path) -> None:
    clock = Clock()
    logs = BuildLogs(tmp_path, clock=clock)
    builds = [
        (T0, "fast", "first"),
        (T0 + 5, "slow", "second"),
        (T0 + 10, "fast", "third"),
        (T0 + 10, "fast", "same stamp"),
    ]
    for at, machine, text in builds:
        clock.now = at
        with logs.open(DRV, machine) as writer:
            writer.write(text)
    clock.now = T0 + 20
    with logs.open(OTHER, "fast") as writer:
        writer.write("other drv")
    assert logs.read(DRV) == "same stamp\n"
    assert logs.read(DRV, "slow") == "second\n"
    assert logs.read(DRV, "fast") == "same stamp\n"
    assert logs.latest(DRV, "local") is None
    assert logs.read(OTHER) == "other drv\n"
    assert len(logs.logs()) == 5


def test_machine_names_with_separators(tmp_path: Path) -> None:
    logs = BuildLogs(tmp_path, clock=Clock())
    with logs.open(DRV, "user@host/x") as writer:
        writer.write("ok")
    assert logs.read(DRV, "user@host/x") == "ok\n"
    assert logs.latest(DRV, "user") is None
    assert [p.name for p in tmp_path.iterdir()] == [p.path.name for p in logs.logs()]


def test_missing_log_is_a_one_line_error(tmp_path: Path) -> None:
    logs = BuildLogs(tmp_path / "never-created")
    assert logs.latest(DRV) is None
    with pytest.raises(OffloadError) as info:
        logs.read(DRV, "fast")
    assert "\n" not in info.value.message
    assert "hello-2.12" in info.value.message
    assert info.value.hint


def test_default_root_is_in_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "st"))
    assert BuildLogs().root == tmp_path / "st" / "logs"


def fill(logs: BuildLogs, clock: Clock, count: int, size: int = 10) -> None:
    for n in range(count):
        clock.now = T0 + n
        with logs.open(f"/nix/store/{n:032d}-d{n}.drv", "m") as writer:
            writer.write("x" * (size - 1))


def test_pruning_by_count_drops_the_oldest(tmp_path: Path) -> None:
    clock = Clock()
    fill(BuildLogs(tmp_path, clock=clock), clock, 8)
    logs = BuildLogs(tmp_path, max_files=5, clock=clock)
    clock.now = T0 + 100
    writer = logs.open(DRV, "fast")  # the first open of a run prunes, before adding its own
    assert kept_names(logs) == ["d3.drv", "d4.drv", "d5.drv", "d6.drv", "d7.drv", "hello-2.12.drv"]
    writer.close()
    assert logs.prune() == 1  # six now: the oldest goes, never the newest
    assert kept_names(logs) == ["d4.drv", "d5.drv", "d6.drv", "d7.drv", "hello-2.12.drv"]


def kept_names(logs: BuildLogs) -> list[str]:
    return [log.drv_name.split("-", 1)[1] for log in logs.logs()]


def test_pruning_by_size_keeps_open_logs(tmp_path: Path) -> None:
    clock = Clock()
    logs = BuildLogs(tmp_path, max_bytes=35, clock=clock)
    clock.now = T0 - 1
    held = logs.open(DRV, "fast")  # older than all, but still being written
    held.write("y" * 9)
    fill(logs, clock, 6)
    removed = logs.prune()
    assert removed == 4  # 70 bytes of logs: drop the oldest closed ones until 30 bytes remain
    assert sum(log.path.stat().st_size for log in logs.logs()) <= 35
    assert logs.latest(DRV) is not None
    held.close()


def test_recorder_files_each_build_separately(tmp_path: Path) -> None:
    clock = Clock()
    logs = BuildLogs(tmp_path, clock=clock)
    recorder = logs.recorder()
    recorder.handle(JobPhase(DRV, "hello-2.12", "fast", "building", 1.0, T0))
    recorder.write(DRV, "fast", "attempt one")
    recorder.handle(
        JobFinished(DRV, "hello-2.12", "fast", "lost", T0, T0 + 1, 0, 0, "gone", T0 + 1)
    )
    clock.now = T0 + 2
    # A new copy starts with "connecting" (no file yet: opened at its first line).
    recorder.handle(JobPhase(DRV, "hello-2.12", "fast", "connecting", 1.0, T0 + 2))
    recorder.write(DRV, "fast", "attempt two")
    recorder.handle(JobPhase(OTHER, "other-1", "slow", "building", 1.0, T0 + 2))  # silent build
    recorder.close()
    assert logs.read(DRV, "fast") == "attempt two\n"
    assert sorted(p.read_text() for p in tmp_path.iterdir()) == [
        "",
        "attempt one\n",
        "attempt two\n",
    ]
    assert logs.read(OTHER) == ""


def test_a_runs_recorder_leaves_each_log_where_nix_reads_it_once_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIX_LOG_DIR", str(tmp_path / "nix"))
    recorder = BuildLogs(tmp_path / "logs").recorder(for_nix=True)
    for drv, machine in [(DRV, "fast"), (OTHER, LOCAL)]:
        recorder.handle(JobPhase(drv, "x", machine, "building", 1.0, T0))
        recorder.write(drv, machine, f"log of {machine}")
        recorder.handle(JobFinished(drv, "x", machine, "built", T0, T0 + 1, 0, 0, None, T0 + 1))
    recorder.close()  # waits for the copies made meanwhile
    assert bz2.decompress(nix_log_path(DRV).read_bytes()) == b"log of fast\n"
    # This machine's too: Nix's serve, which runs it, keeps no log.
    assert bz2.decompress(nix_log_path(OTHER).read_bytes()) == f"log of {LOCAL}\n".encode()


def test_lines_told_while_the_recorders_thread_is_busy_go_as_one_batch(tmp_path: Path) -> None:
    # A build's log may be 100,000s of lines: a task handed to the thread for each cost the
    # run's loop about 25 us a line (a verbose build took 6x Nix's time). Lines told while the
    # thread works wait in the queue and go together, in order, each file flushed once.
    logs = BuildLogs(tmp_path)
    recorder = logs.recorder()
    busy, free = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        free.wait(10)

    recorder._later(hold)
    assert busy.wait(10)
    thread = recorder._thread
    assert thread is not None
    handed: list[object] = []
    submit = thread.submit

    def counted(fn: Callable[..., object], /, *args: object) -> Future[object]:
        handed.append((fn, *args))
        return submit(fn, *args)

    thread.submit = counted  # type: ignore[method-assign,assignment]
    recorder.handle(JobPhase(DRV, "hello-2.12", "fast", "building", 1.0, T0))
    for n in range(5_000):
        recorder.write(DRV, "fast", f"line {n}")
    free.set()
    recorder.close()
    assert handed == [(recorder._close_all,)]
    assert logs.read(DRV, "fast") == "".join(f"line {n}\n" for n in range(5_000))


def test_a_recorder_that_cannot_write_says_so_when_closed(tmp_path: Path) -> None:
    blocked = tmp_path / "logs"
    blocked.write_text("")  # a file where the log directory would go
    recorder = BuildLogs(blocked).recorder()
    recorder.write(DRV, "fast", "a line")  # the disk is the recorder's thread's to wait on
    with pytest.raises(OffloadError, match="cannot write build logs in") as info:
        recorder.close()
    assert info.value.hint


# --- offload log -------------------------------------------------------------------------------


def test_kept_logs_this_user_may_not_read_are_one_line(tmp_path: Path) -> None:
    logs = BuildLogs(tmp_path / "logs", clock=Clock())
    with logs.open(DRV, "fast") as writer:
        writer.write("root's\n")
    # The logs directory is root's, mode 0700 (as `sudo -E offload build` leaves it).
    said = as_another_user(lambda: str(BuildLogs(tmp_path / "logs").latest(DRV)))
    assert said == (
        f"OffloadError: {tmp_path / 'logs'}: cannot read the kept build logs: Permission denied"
    )


def test_nix_log_path_is_where_nix_2_8_reads_it() -> None:
    drv = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello.drv"
    path = nix_log_path(drv, {"NIX_LOG_DIR": "/var/log/nix"})
    assert path == Path("/var/log/nix/drvs/01/23456789abcdfghijklmnpqrsvwxyz-hello.drv.bz2")
    assert nix_log_path(drv, {}).parts[:5] == ("/", "nix", "var", "log", "nix")


def test_a_log_is_kept_for_nix_as_whole_bzip2(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_bytes(b"line one\nline \xff two\n")
    target = tmp_path / "drvs" / "ab" / "cdef-x.drv.bz2"
    assert keep_for_nix("/nix/store/abcdef-x.drv", log, target, started=1000.0)
    assert bz2.decompress(target.read_bytes()) == log.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary left


def test_an_unwritable_nix_log_dir_is_not_an_error(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("hi\n")
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where a directory would go
    assert not keep_for_nix(
        "/nix/store/abcdef-x.drv", log, blocked / "ab" / "x.bz2", started=1000.0
    )


def test_a_pasted_name_with_a_line_break_is_one_error_line(tmp_path: Path) -> None:
    # The name is what was typed: a line break or an escape in it split or coloured the line.
    logs = BuildLogs(tmp_path / "logs")
    with pytest.raises(OffloadError) as caught:
        logs.read("/nix/store/a\nb\x1b[31m.drv", machine="m\n1")
    assert caught.value.message == "no build log kept for a\\nb\\x1b[31m.drv on m\\n1"


def test_a_runs_recorder_prunes_as_it_closes(tmp_path: Path) -> None:
    # 3,000 builds' logs stayed over the bound of 5,000 files until the next run began.
    ticks = itertools.count(T0)
    logs = BuildLogs(tmp_path, max_files=3, clock=lambda: next(ticks))  # each open later
    recorder = logs.recorder()
    for n in range(6):
        recorder.write(f"/nix/store/{n:032d}-d{n}.drv", "fast", "line")
    recorder.close()
    assert kept_names(logs) == ["d3.drv", "d4.drv", "d5.drv"]
