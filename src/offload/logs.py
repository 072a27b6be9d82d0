"""Every build's log, kept in ``<state dir>/logs`` so ``offload log DRV`` can show it later.

One file per build attempt, named ``<drv basename>@<machine>@<UTC timestamp>.log`` (the machine
name percent-quoted, since ssh aliases may hold ``@`` or ``/``); a second attempt in the same
microsecond gets a ``-N`` suffix. The newest attempt is the one with the greatest timestamp, so
``latest`` needs no index: the file names are the index. Speculative copies on two machines
write two files; ``latest(drv, machine)`` picks either. A copy the run stopped (one that lost
to another, or was moved, or stopped by the run's end) or lost with its machine has its file
renamed ``...@<stamp>.stopped.log`` once it ends, and ``latest`` takes the newest of the
attempts that ran to their end (built or failed) over any stopped one: a speculative copy
started after the one that built, and stopped when that one won, is not the build's log.

Text is stored as received, escape codes included (``offload log`` strips them when its
output is not a terminal). The directory is 0700 and files 0600: logs can show secrets that a
build printed.

The store is bounded: when a ``BuildLogs`` first opens a log (once per run), when a run's
recorder closes, and whenever ``prune()`` is called, the oldest files go until at most
``max_files`` (default 5000) remain and together they take at most ``max_bytes`` (default
1 GiB). Logs still being written by this ``BuildLogs`` are never removed.

A run's recorder (``for_nix``) also copies each finished remote build's log where Nix keeps
logs (``nix_log_path``: bzip2 under ``$NIX_LOG_DIR/drvs``), so `nix log` and `nix-store -l`
find it as they find the log of a build Nix's own hook sent away; builds on this machine are
logged there by the local Nix itself. Not root (the directory is not ours): not copied.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self
from urllib.parse import quote, unquote

from offload.config.machines.model import shown
from offload.errors import OffloadError
from offload.nix_log_copies import drv_name, keep_for_nix
from offload.numerals import is_decimal
from offload.paths import state_dir
from offload.spelling import meant
from offload.thread_pool import Executor
from offload.ui.events import Event, JobFinished, JobPhase

__all__ = ["BuildLogWriter", "BuildLogs", "LogFile", "LogRecorder"]

DEFAULT_MAX_FILES = 5000
DEFAULT_MAX_BYTES = 1 << 30
STOPPED = ".stopped.log"  # the suffix of a stopped attempt's log, for ".log"
# The phases a recorder is told of: a copy's first ones (a new copy), and "building".
_OPENING = frozenset({"queued", "connecting", "building"})
# Bytes read from a log at a time: a line longer than this comes in pieces.
_READ_SIZE = 1 << 20


@dataclass(frozen=True)
class LogFile:
    """One kept log, as its file name says."""

    path: Path
    drv_name: str  # basename of the .drv
    machine: str
    stamp: str  # UTC, YYYYmmddTHHMMSS.ffffffZ, sorts as time does
    serial: int  # >0 when several attempts shared a stamp
    stopped: bool = False  # the attempt was stopped before its end (module docstring)

    @classmethod
    def parse(cls, path: Path) -> LogFile | None:
        """The log a file name describes, or None for files that are not logs."""
        if not path.name.endswith(".log"):
            return None
        stopped = path.name.endswith(STOPPED)
        parts = path.name.removesuffix(STOPPED if stopped else ".log").split("@")
        if len(parts) != 3 or not parts[0].endswith(".drv"):
            return None
        drv_name, machine, stamp = parts
        serial = 0
        if "-" in stamp:
            stamp, _, tail = stamp.partition("-")
            if not is_decimal(tail):
                return None
            serial = int(tail)
        return cls(path, drv_name, unquote(machine), stamp, serial, stopped)

    @property
    def order(self) -> tuple[str, int]:
        return (self.stamp, self.serial)


class BuildLogWriter:
    """Appends one build's log lines to its file; a context manager. A file the disk could
    not take whole (full) is removed at the first failed write and the lines after it are
    dropped: ``offload log`` would show one cut short as if it were the build's whole log."""

    def __init__(
        self, path: Path, on_close: Callable[[Path], None], *, append: bool = False
    ) -> None:
        """A new file at ``path``; with ``append``, the end of the one there."""
        self.path = path
        self.lost = False
        self._on_close = on_close
        how = os.O_APPEND if append else os.O_CREAT | os.O_EXCL
        fd = os.open(path, os.O_WRONLY | how | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "wb")

    def write(self, line: str, *, flush: bool = True) -> None:
        """Append ``line``, adding the newline it came without; flushed so readers see it
        (unless ``flush`` is False: the caller flushes after a batch of lines)."""
        if self.lost:
            return
        if not line.endswith("\n"):
            line += "\n"
        try:
            data = line.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            data = line.encode("utf-8", "replace")
        with self._losing():
            self._file.write(data)
            if flush:
                self._file.flush()

    def flush(self) -> None:
        if not self._file.closed:
            with self._losing():
                self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            try:
                with self._losing():
                    self._file.close()
            finally:
                self._on_close(self.path)

    @contextlib.contextmanager
    def _losing(self) -> Iterator[None]:
        """The body's OSError (a full disk) raised, the file closed and removed first."""
        try:
            yield
        except OSError:
            self.lost = True
            with contextlib.suppress(OSError):
                self._file.close()  # the buffer fails to go again; the descriptor is closed
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class BuildLogs:
    def __init__(
        self,
        root: Path | None = None,
        *,
        max_files: int = DEFAULT_MAX_FILES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root if root is not None else state_dir() / "logs"
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._clock = clock
        self._open: set[Path] = set()
        self._ready = False

    def open(
        self, drv_path: str, machine: str, *, stopped: bool = False, to: Path | None = None
    ) -> BuildLogWriter:
        """A new log file for one build of ``drv_path`` on ``machine`` (a stopped one's, with
        ``stopped``), or the end of its file ``to``, if that is still there."""
        if to is not None:
            with contextlib.suppress(FileNotFoundError):  # pruned meanwhile: a new one
                writer = BuildLogWriter(to, self._open.discard, append=True)
                self._open.add(to)
                return writer
        if not self._ready:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.root.chmod(0o700)  # mkdir's mode is masked by the umask
            self._ready = True
            self.prune()
        now = self._clock()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        base = f"{drv_name(drv_path)}@{quote(machine, safe='')}@{stamp}"
        suffix = STOPPED if stopped else ".log"
        for serial in range(1000):
            path = self.root / (f"{base}{suffix}" if serial == 0 else f"{base}-{serial}{suffix}")
            try:
                writer = BuildLogWriter(path, self._open.discard)
            except FileExistsError:
                continue
            self._open.add(path)
            return writer
        raise OffloadError(f"cannot create a log file for {drv_path} in {self.root}")

    def logs(self) -> list[LogFile]:
        """Every kept log, oldest first."""
        return sorted(self._scan(), key=lambda log: log.order)

    def latest(self, drv_path: str, machine: str | None = None) -> Path | None:
        """The newest log of ``drv_path`` (on ``machine``, when given) of an attempt that ran
        to its end, else the newest stopped one, if one is kept."""
        name = drv_name(drv_path)
        found = [
            log
            for log in self._scan(prefix=f"{name}@")
            if log.drv_name == name and (machine is None or log.machine == machine)
        ]
        return max(found, key=lambda log: (not log.stopped, log.order)).path if found else None

    def read(self, drv_path: str, machine: str | None = None) -> str:
        """The text of the newest log of ``drv_path``; ``OffloadError`` when none is kept."""
        return "".join(self.lines(drv_path, machine))

    def lines(self, drv_path: str, machine: str | None = None) -> Iterator[str]:
        """The newest log of ``drv_path``, line by line (a log may be hundreds of MiB: it is
        never read whole); ``OffloadError`` at once when none is kept."""
        for _ in range(2):
            path = self.kept(drv_path, machine)
            try:
                log = path.open("rb")
            except FileNotFoundError:  # renamed (a stopped copy's) or pruned since the look
                continue
            return _lines_of(log)
        raise self._none_kept(drv_path, machine)

    def kept(self, drv_path: str, machine: str | None = None) -> Path:
        """The newest log file of ``drv_path``; ``OffloadError`` when none is kept."""
        path = self.latest(drv_path, machine)
        if path is None:
            raise self._none_kept(drv_path, machine)
        return path

    def _none_kept(self, drv_path: str, machine: str | None) -> OffloadError:
        name = drv_name(drv_path)
        # shown: it is whatever was typed or pasted (a line break, a terminal escape).
        what = f"no build log kept for {shown(name, 200)}"
        if machine is None:
            return OffloadError(
                what,
                hint="offload keeps the logs of builds it ran itself (not one a full disk "
                "cut short: the run said so), and Nix keeps none either (`offload log` asks it):"
                " was it built on this host?",
            )
        others = sorted({log.machine for log in self._scan(f"{name}@") if log.drv_name == name})
        if not others:
            # Not "none of its builds' logs": read as offload's, it says no log is kept at all.
            hint = "offload keeps no log of it from any machine; without --machine, "
            hint += "`offload log` asks Nix for its own"
        else:
            close = meant(machine, others)
            hint = f"did you mean {shown(close, 200)}? " if close else ""
            hint += f"its logs are kept for {shown(', '.join(others), 400)}: give one of those,"
            hint += " or no --machine for the newest"
        return OffloadError(f"{what} on {shown(machine, 200)}", hint=hint)

    def prune(self) -> int:
        """Remove the oldest logs beyond the limits; returns how many were removed."""
        logs = self.logs()
        sizes = {}
        for log in logs:
            try:
                sizes[log.path] = log.path.stat().st_size
            except FileNotFoundError:  # removed by a concurrent offload
                sizes[log.path] = 0
        count, total, removed = len(logs), sum(sizes.values()), 0
        for log in logs:
            if count <= self.max_files and total <= self.max_bytes:
                break
            if log.path in self._open:
                continue
            log.path.unlink(missing_ok=True)
            count -= 1
            total -= sizes[log.path]
            removed += 1
        return removed

    def recorder(self, *, for_nix: bool = False) -> LogRecorder:
        """A sink for a whole run's log lines: ``write(drv_path, machine, line)``; with
        ``for_nix`` a builder's finished log is also kept where Nix keeps logs."""
        return LogRecorder(self, for_nix=for_nix)

    def _scan(self, prefix: str = "") -> Iterator[LogFile]:
        try:
            entries = list(os.scandir(self.root))
        except (FileNotFoundError, NotADirectoryError):  # no directory there: none kept
            return
        except OSError as exc:
            raise OffloadError(
                f"{self.root}: cannot read the kept build logs: {exc.strerror or exc}",
                hint="let this user read it, or move it away (the logs are copies)",
            ) from exc
        for entry in entries:
            if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                log = LogFile.parse(Path(entry.path))
                if log is not None:
                    yield log


class LogRecorder:
    """Files the log lines of every build in a run, one writer per (derivation, machine).

    ``write`` opens a build's file at its first line. Fed the run's events too (``handle``, a
    ``Renderer``), it opens the file when the build starts, so a silent build still leaves an
    (empty) log, and closes it when the job finishes, so a retry on the same machine gets a
    file of its own (it starts with "queued" or "connecting"). A stopped copy may still say
    a line once told ended (the run's end tells its copies stopped before they are: a cut
    upload's cleanup is said then): it goes to that copy's stopped log, never to a new
    attempt's. ``close`` closes whatever is still open.

    The files are created, written, closed and copied for Nix by one thread of the recorder's,
    in the order it was told of them, so a run's event loop never waits on the disk (creating
    a file in a directory of thousands, under a busy store, is a journal transaction). What it
    is told waits in a queue the thread empties a batch at a time, flushing each file once a
    batch: a build's log may be hundreds of thousands of lines (a test suite's), and a task
    handed to the thread for each cost about 25 us of the loop's time and a turn of the GIL.
    ``close`` waits for all of it and raises the first error met there, if any
    (``OffloadError`` for the disk's).
    """

    def __init__(self, logs: BuildLogs, *, for_nix: bool = False) -> None:
        self._logs = logs
        self._for_nix = for_nix
        self._writers: dict[tuple[str, str], BuildLogWriter] = {}  # the thread's alone
        # Copies told stopped: their stopped log, if they had one yet (the thread's alone).
        self._stopped: dict[tuple[str, str], Path | None] = {}
        self._thread: Executor | None = None  # started by the first thing to do
        self._errors: list[BaseException] = []
        # What the thread is to do, in order, and whether a drain of it is handed over yet.
        self._queue: list[tuple[Callable[..., None], tuple[object, ...]]] = []
        self._queued = threading.Lock()
        self._draining = False
        self._touched: set[BuildLogWriter] = set()  # written since the last flush (the thread's)

    def write(self, drv_path: str, machine: str, line: str) -> None:
        self._later(self._write, drv_path, machine, line)

    def handle(self, event: Event) -> None:
        if (isinstance(event, JobPhase) and event.phase in _OPENING) or isinstance(
            event, JobFinished
        ):
            self._later(self._handle, event)

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.submit(self._close_all)
            thread.shutdown(wait=True)
        errors, self._errors = self._errors, []
        if errors and isinstance(errors[0], OSError):
            raise OffloadError(
                f"cannot write build logs in {self._logs.root}: {errors[0]}",
                hint="the state directory must be writable and have room",
            ) from errors[0]
        if errors:
            raise errors[0]

    def _later(self, work: Callable[..., None], *args: object) -> None:
        with self._queued:
            self._queue.append((work, args))
            if self._draining:
                return
            self._draining = True
        if self._thread is None:
            self._thread = Executor(max_workers=1, thread_name_prefix="build-logs")
        self._thread.submit(self._drain)

    def _drain(self) -> None:
        """Do what is queued, a batch at a time, until nothing is; each file written flushed
        once a batch."""
        while True:
            with self._queued:
                batch, self._queue = self._queue, []
                if not batch:
                    self._draining = False
                    return
            for work, args in batch:
                self._guarded(work, *args)
            touched, self._touched = self._touched, set()
            for writer in touched:
                self._guarded(writer.flush)

    def _guarded(self, work: Callable[..., object], *args: object) -> None:
        try:
            work(*args)
        except Exception as exc:  # noqa: BLE001 - raised by close, in the run's thread
            # The first is the one close raises. Kept all, a disk full under a build printing
            # millions of lines held an exception (and its frames) per line: gigabytes.
            if not self._errors:
                self._errors.append(exc)

    def _write(self, drv_path: str, machine: str, line: str) -> None:
        writer = self._writer(drv_path, machine)
        writer.write(line, flush=False)
        self._touched.add(writer)

    def _handle(self, event: Event) -> None:
        if not isinstance(event, JobPhase | JobFinished):
            return
        key = (event.drv_path, event.machine)
        if isinstance(event, JobPhase):
            if event.phase != "building":  # a new copy there: the stopped one's lines end
                self._stopped.pop(key, None)
            else:
                self._writer(event.drv_path, event.machine)
        else:
            writer = self._writers.pop(key, None)
            stopped = event.status in ("cancelled", "lost")
            if stopped:
                self._stopped[key] = None
            if writer is not None:
                writer.close()
                if writer.lost:
                    return
                if self._for_nix and event.status in ("built", "failed"):
                    keep_for_nix(event.drv_path, writer.path, started=event.started)
                if stopped:
                    path = writer.path
                    self._stopped[key] = path.replace(
                        path.with_name(path.name.removesuffix(".log") + STOPPED)
                    )

    def _close_all(self) -> None:
        writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            writer.close()
        # Pruned at the end too: a run of thousands of builds left that many over the bound
        # until the next run began.
        self._guarded(self._logs.prune)

    def _writer(self, drv_path: str, machine: str) -> BuildLogWriter:
        key = (drv_path, machine)
        writer = self._writers.get(key)
        if writer is None:
            writer = self._writers[key] = self._logs.open(
                drv_path, machine, stopped=key in self._stopped, to=self._stopped.get(key)
            )
            if key in self._stopped:
                self._stopped[key] = writer.path  # its further lines go on there
        return writer


def _lines_of(log: BinaryIO) -> Iterator[str]:
    """``log``'s lines, decoded one by one (invalid UTF-8 replaced), with their newlines, the
    file closed after the last; a line longer than the read size comes in pieces."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character cut in two
    with log:
        # readline() would hold a log without a newline whole (a progress bar's \r's).
        for piece in iter(functools.partial(log.readline, _READ_SIZE), b""):
            if text := decoder.decode(piece):
                yield text
        if rest := decoder.decode(b"", final=True):
            yield rest
