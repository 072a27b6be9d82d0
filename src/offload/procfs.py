"""Processes as /proc tells them: a pid's state and start time, so that a recorded pid is
recognised as the same process only while its start time matches (never a recycled pid).

``parse_proc_stat`` is pure; ``proc_stat`` reads the file and ``is_ours`` asks it whether a
recorded (pid, start time) is still that live process. ``owner_line`` is such a record of a
process for a file it leaves behind, with its pid namespace (a pid means nothing in another),
and ``owner_gone`` says whether the process a record names has surely ended; ``user_of`` whom
a process runs as.

A process that has exited but is not yet reaped (a zombie: state Z or X) keeps its /proc
entry, and it holds nothing any more (no file, socket or lock); when its parent is init that
entry can stay for seconds or longer, so ``running`` counts it as gone. Before that, a process
that has begun to exit (``exiting``) lets go of its files, root and namespaces one by one.
"""

from __future__ import annotations

import pwd
from pathlib import Path

from offload.numerals import is_decimal

__all__ = [
    "exiting",
    "is_ours",
    "owner_gone",
    "owner_line",
    "parent_pid",
    "parse_proc_stat",
    "pid_namespace",
    "proc_stat",
    "running",
    "user_of",
]


# The states of a process that has exited: a zombie, and one being reaped.
_EXITED = frozenset({"Z", "X"})
# PF_EXITING in a process's flags (field 9; include/linux/sched.h): set as do_exit() begins,
# before the process lets go of its files, its root and its namespaces.
_PF_EXITING = 0x4


def parse_proc_stat(text: str) -> tuple[str, int]:
    """The state letter and start time (field 22, clock ticks since boot) of /proc/PID/stat."""
    rest = _fields(text)
    # rest[0] is field 3 (state); field 22 is rest[19].
    return rest[0], int(rest[19])


def proc_stat(pid: int) -> tuple[str, int] | None:
    """``parse_proc_stat`` of a live pid's stat; None when there is no such process."""
    text = _read_stat(pid)
    try:
        return None if text is None else parse_proc_stat(text)
    except (ValueError, IndexError):
        return None


def exiting(pid: int) -> bool:
    """Has ``pid`` begun to exit (it may still be letting go of what it held), or exited and
    not been reaped? False for a live process and for no process at all."""
    rest = _stat_fields(pid)
    return rest is not None and (rest[0] in _EXITED or bool(int(rest[6]) & _PF_EXITING))


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` (field 4), or None for no such process."""
    rest = _stat_fields(pid)
    return None if rest is None else int(rest[1])


def _fields(text: str) -> list[str]:
    """/proc/PID/stat's fields from the third on (state first). The command name (field 2) is
    in parentheses and may itself hold spaces and parentheses, so they are counted from the
    last ``)`` (ValueError without one)."""
    return text[text.rindex(")") + 1 :].split()


def _read_stat(pid: int) -> str | None:
    """/proc/PID/stat, or None for no such process. Its name (field 2) is any bytes the
    process chose (prctl, its file name cut to 15 bytes): strictly decoded, a live process
    read as none."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """``_fields`` of ``pid``'s stat with the numbers read here, or None for no process."""
    text = _read_stat(pid)
    try:
        rest = [] if text is None else _fields(text)
    except ValueError:
        return None
    return rest if len(rest) >= 20 and is_decimal(rest[1]) and is_decimal(rest[6]) else None


def running(pid: int) -> bool:
    """Is there a process ``pid`` that has not exited (a zombie has)?"""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in _EXITED


def is_ours(pid: int, start_time: int) -> bool:
    """Is ``pid`` alive and still the process we started (not a recycled pid, not a zombie)?"""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in _EXITED and stat[1] == start_time


def user_of(pid: int) -> str | None:
    """The login name of the user ``pid`` runs as (its uid where no such name is known), or
    None when there is no such process here."""
    try:
        uid = Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def pid_namespace() -> str:
    """This process's pid namespace, as /proc names it (``pid:[4026531836]``), or ``?``."""
    try:
        return str(Path("/proc/self/ns/pid").readlink())
    except OSError:
        return "?"


def owner_line(pid: int) -> str | None:
    """``NAMESPACE PID START`` of the live process ``pid``, or None when there is none."""
    found = proc_stat(pid)
    return None if found is None else f"{pid_namespace()} {pid} {found[1]}"


def owner_gone(line: str) -> bool:
    """Has the process an ``owner_line`` names ended? False when that cannot be told: a record
    from another pid namespace, or not one at all."""
    try:
        namespace, pid, start = line.split()
        return namespace == pid_namespace() and not is_ours(int(pid), int(start))
    except ValueError:
        return False
