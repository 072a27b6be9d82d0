"""What was learned of builders' slots, kept for `offload status`: real files in a temp dir."""

import json
import stat
import time
from pathlib import Path

import pytest

from offload.cli.status import format_status, status_json
from offload.config.machines import parse_machines
from offload.config.pool import Pool
from offload.config.settings import LocalMachine
from offload.load_state import LOADS_FILE, load_loads
from offload.slot_fallback import FALLBACK_FILE, Fallback, load_fallbacks, record_fallbacks
from offload.slots import SlotLocks
from offload.status import pool_status
from offload.transport.links.turns import FALLBACKS, RESTRICTED_FALLBACK

SYSTEM = "x86_64-linux"


def test_a_fallback_is_kept_with_when_and_cleared_once_slots_are_counted_there(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / FALLBACK_FILE
    record_fallbacks(path, {"a": RESTRICTED_FALLBACK, "b": None}, 100.0)
    assert load_fallbacks([path]) == {"a": Fallback(RESTRICTED_FALLBACK, 100.0)}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    record_fallbacks(path, {"b": FALLBACKS["noflock"]}, 200.0)
    assert load_fallbacks([path])["b"] == Fallback(FALLBACKS["noflock"], 200.0)
    record_fallbacks(path, {"a": None}, 300.0)
    assert set(load_fallbacks([path])) == {"b"}


def test_the_same_finding_again_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / FALLBACK_FILE
    record_fallbacks(path, {"a": FALLBACKS["nodir"]}, 100.0)
    before = path.stat().st_mtime_ns, path.stat().st_ino
    record_fallbacks(path, {"a": FALLBACKS["nodir"], "b": None}, 500.0)
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before
    assert load_fallbacks([path])["a"].learned == 100.0  # first learned, not rewritten


def test_damaged_entries_and_files_read_as_none(tmp_path: Path) -> None:
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    one.write_text(json.dumps({"a": {"reason": "x"}, "b": [], "c": {"reason": "", "learned": 1}}))
    two.write_text("{not json")
    assert load_fallbacks([one, two, tmp_path / "missing"]) == {}
    one.write_text(json.dumps({"a": {"reason": "old", "learned": 1}}))
    two.write_text(json.dumps({"a": {"reason": "new", "learned": 2}}))
    assert load_fallbacks([one, two]) == {"a": Fallback("new", 2.0)}


def test_status_says_which_builders_count_their_slots_here_only(tmp_path: Path) -> None:
    machines, _ = parse_machines(
        f"ssh://kept {SYSTEM} - 2 1\nssh://plain {SYSTEM} - 1 1\n", source="m", system=SYSTEM
    )
    pool = Pool(LocalMachine(1.0, 1, (SYSTEM,), frozenset()), tuple(machines))
    now = time.time()
    record_fallbacks(tmp_path / FALLBACK_FILE, {"kept": RESTRICTED_FALLBACK}, now)
    status = pool_status(pool, [tmp_path], SlotLocks(tmp_path / "current-load"), now)
    by_name = {m.name: m for m in status.machines}
    assert by_name["kept"].slot_fallback == Fallback(RESTRICTED_FALLBACK, now)
    assert by_name["plain"].slot_fallback is None
    lines = format_status(status).splitlines()
    told = [line for line in lines if "counted on this host only" in line]
    assert len(told) == 1
    assert told[0].startswith("kept: slots counted on this host only (learned ")
    assert told[0].endswith(RESTRICTED_FALLBACK)
    data = status_json(status)
    rows = {m["name"]: m for m in data["machines"]}  # type: ignore[attr-defined]
    assert rows["kept"]["slot_fallback"] == {"reason": RESTRICTED_FALLBACK, "learned": now}
    assert rows["plain"]["slot_fallback"] is None
    assert rows["local"]["slot_fallback"] is None


@pytest.mark.parametrize("learned", ["1" * 400, "NaN", "Infinity", "1e999"])
def test_a_number_no_state_file_holds_reads_as_no_file(tmp_path: Path, learned: str) -> None:
    # A 400-digit integer passed the type check, and float() of it failed every run that used a
    # builder ("internal error: OverflowError") and `offload status`; NaN came out of
    # `offload status --json` as NaN, which is not JSON.
    path = tmp_path / FALLBACK_FILE
    path.write_text(f'{{"fast": {{"reason": "r", "learned": {learned}}}}}')
    assert load_fallbacks([path]) == {}
    loads = tmp_path / LOADS_FILE
    loads.write_text(f'{{"fast": {{"slots": 1, "full": 2, "said": "s", "reported": {learned}}}}}')
    assert load_loads([loads]) == {}


def test_status_shows_a_learned_reason_safe_for_the_terminal(tmp_path: Path) -> None:
    # The files are offload's, but a hand edit put a terminal's escape sequence on its screen.
    machines, _ = parse_machines(f"ssh://kept {SYSTEM} - 2 1\n", source="m", system=SYSTEM)
    pool = Pool(LocalMachine(1.0, 1, (SYSTEM,), frozenset()), tuple(machines))
    now = time.time()
    record_fallbacks(tmp_path / FALLBACK_FILE, {"kept": "no flock\x1b[2J\nthere"}, now)
    status = pool_status(pool, [tmp_path], SlotLocks(tmp_path / "current-load"), now)
    shown = format_status(status)
    assert "\x1b" not in shown
    assert "no flock\\x1b[2J\\nthere" in shown
