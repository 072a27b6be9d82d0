"""`offload machines` (list): the pool as a table that fits 100 columns, or JSON, and every
problem with it on stderr, one line each.

The narrow table has a row per machine: name, ssh destination (or store URI), systems, jobs,
speed, features (mandatory ones marked ``!``), host key (``pinned``, ``no``, or ``junk`` for base64
of no key), and backoff (until when, and failures). Cells are cut (``..``) widest first until
the row fits, a name's port kept (``nx-long-na..:2222``: it tells the name from another on its
host); ``--wide`` shows every column whole (URI, mandatory features, why backed off, source
``file:line``), and ``--json`` everything. Backoff comes from ``backoff.json`` in the
user's state directory and, when readable, the nix-daemon hook's (``--reset NAME`` clears it).
Problems: entries Nix rejects the whole spec for (``error:``, exit 1), lines the local Nix reads
differently and machines Nix takes but no build can use (``warning:``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

from offload.backoff import REASON_CHARS, Health
from offload.config.machines import Machine, duplicate_names, machine_problems, shown
from offload.config.pool import Pool
from offload.names import LOCAL
from offload.numerals import is_decimal
from offload.paths import SYSTEM_STATE_DIR, state_dir

__all__ = ["BACKOFF_FILE", "backoff_places", "format_table", "pool_problems"]

BACKOFF_FILE = "backoff.json"
WIDTH = 100
_CUT = ".."
_MIN_CELL = 6
_PORT = re.compile(r":[0-9]+$")


def backoff_places() -> list[Path]:
    """The state directories whose backoff applies here: the user's, and the daemon hook's."""
    places = [state_dir()]
    if SYSTEM_STATE_DIR not in places and os.access(SYSTEM_STATE_DIR, os.R_OK | os.X_OK):
        places.append(SYSTEM_STATE_DIR)
    return places


def _place(line: str) -> tuple[str, int]:
    where = line.split(": ", 1)[0]
    path, _, number = where.rpartition(":")
    return (path, int(number)) if is_decimal(number) else (where, 0)


def pool_problems(pool: Pool) -> list[tuple[str, str]]:
    """Every problem of the pool as (``error``/``warning``, line), in file and line order.

    An error is an entry Nix rejects the whole spec for; the rest it takes."""
    found = [("warning", w) for w in pool.warnings]
    for machine in pool.machines:
        found += [("warning", p) for p in machine_problems(machine, os.path.exists)]
    found += [("warning", p) for p in duplicate_names(pool.machines)]
    found += [("error", e) for e in pool.errors]
    return sorted(found, key=lambda item: _place(item[1]))


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def backoff_cell(health: Health | None, *, wide: bool) -> str:
    if health is None:
        return "-"
    text = f"until {_clock(health.until)} ({health.failures}x)"
    if wide:  # whole, as status and --json show it (kept at most REASON_CHARS)
        text += f": {shown(health.why, REASON_CHARS)}"
    return text


def _key_cell(machine: Machine) -> str:
    if machine.public_host_key is not None:
        return "pinned"
    return "junk" if machine.pins_junk else "no"


def _destination(machine: Machine) -> str:
    if not machine.is_ssh or machine.host is None:
        return shown(machine.uri, 200)
    port = f":{machine.port}" if machine.port is not None else ""
    return shown(machine.ssh_destination(), 200) + port


def _features(machine: Machine) -> str:
    items = sorted(machine.supported_features - machine.mandatory_features)
    items += [f"!{f}" for f in sorted(machine.mandatory_features)]
    return shown(",".join(items), 400) or "-"


def _rows(pool: Pool, backoff: Mapping[str, Health], *, wide: bool) -> list[list[str]]:
    narrow = ["NAME", "HOST", "SYSTEMS", "JOBS", "SPEED", "FEATURES", "KEY", "BACKOFF"]
    rows = [narrow + (["URI", "SOURCE"] if wide else [])]
    if pool.local is not None:
        local = pool.local
        features = ",".join(sorted(local.supported_features)) or "-"
        row = [LOCAL, "-", ",".join(local.systems), str(local.max_jobs)]
        row += [f"{local.speed_factor:g}", features, "-", "-"]
        rows.append(row + (["local", "Nix settings / offload.toml [local]"] if wide else []))
    for m in pool.machines:
        name = m.name if m.enabled else f"{m.name} (off)"
        row = [name, _destination(m), shown(",".join(m.systems), 400) or ",", str(m.max_jobs)]
        row += [f"{m.speed_factor:g}", _features(m), _key_cell(m)]
        row.append(backoff_cell(backoff.get(m.name), wide=wide))
        rows.append(row + ([shown(m.uri, 400), m.source] if wide else []))
    return rows


def _fit(rows: list[list[str]], width: int) -> list[int]:
    """Column widths whose sum (with 2-space gaps) is at most ``width``, widest cut first."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    floors = {0: 12, 1: 12, 2: _MIN_CELL, 5: _MIN_CELL}  # name, host, systems, features
    while sum(widths) + 2 * (len(widths) - 1) > width:
        cuttable = [i for i, floor in floors.items() if widths[i] > floor]
        if not cuttable:
            break
        widths[max(cuttable, key=lambda i: widths[i])] -= 1
    return widths


def _cut(cell: str, width: int, *, name: bool = False) -> str:
    """``cell`` in ``width``, its end cut; a ``name``'s port is kept (it tells the name from
    another builder's on its host), the host before it cut."""
    if len(cell) <= width:
        return cell
    port = _PORT.search(cell) if name else None
    keep = port.group() if port is not None and len(port.group()) <= width // 2 else ""
    return cell[: width - len(_CUT) - len(keep)] + _CUT + keep


def format_table(pool: Pool, backoff: Mapping[str, Health], *, wide: bool = False) -> str:
    rows = _rows(pool, backoff, wide=wide)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    if not wide:
        widths = _fit(rows, WIDTH)
    lines = [
        "  ".join(
            _cut(c, w, name=i == 0).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    return "".join(f"{line}\n" for line in lines)
