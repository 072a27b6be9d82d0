"""Build times from Nix's own logs: file names, birth-to-change times, the newest of a name, the
logs offload copied there, and history's estimates falling back to them."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.history.db import History
from offload.history.estimates import estimator
from offload.history.nix_logs import KEEP, NixLogs, default_drvs_dir, file_times, log_name
from offload.history.records import BuildRecord
from offload.nix_log_copies import keep_for_nix
from tests.helpers.nix_logs import HASH, nix_log


def _born_after(moment: float, probe: Path) -> None:
    """Return once a file made now is born after ``moment``: file times tick coarsely."""
    while True:
        probe.write_bytes(b"")
        times = file_times(probe)
        probe.unlink()
        if times is not None and times[0] > moment:
            return


def _hash(i: int) -> str:
    return f"{i:02d}" + HASH[2:]


def test_a_log_file_name_gives_its_derivation_name() -> None:
    assert log_name(f"{HASH[2:]}-hello-2.12.drv.bz2") == "hello-2.12"
    assert log_name(f"{HASH[2:]}-hello-2.12.drv") == "hello-2.12"  # compress-build-log off
    assert log_name(f"{HASH[2:]}-hello.drv.bz2.tmp") is None
    assert log_name(f"{HASH[2:]}-hello.nar") is None
    assert log_name(f"{HASH[2:]}-.drv.bz2") is None
    assert log_name(f"{HASH[2:-1]}e-hello.drv.bz2") is None  # e is not nix32
    assert log_name("short-hello.drv.bz2") is None


def test_the_log_dir_is_nix_s(tmp_path: Path) -> None:
    assert default_drvs_dir({"NIX_LOG_DIR": str(tmp_path)}) == tmp_path / "drvs"
    assert default_drvs_dir({}) == Path("/nix/var/log/nix/drvs")


def test_a_name_takes_the_median_of_its_newest_logs_of_any_version(tmp_path: Path) -> None:
    drvs = tmp_path / "drvs"
    # Seven builds of hello: two far off, then KEEP born after them.
    old = [
        nix_log(drvs, f"hello-1.{i}", seconds, hash_part=_hash(i))
        for i, seconds in enumerate([900.0, 800.0])
    ]
    _born_after(max((file_times(path) or (0.0, 0.0))[0] for path in old), tmp_path / "probe")
    times = [10.0, 12.0, 11.0, 30.0, 13.0]
    for i, seconds in enumerate(times):
        nix_log(drvs, f"hello-2.{i}", seconds, hash_part=_hash(10 + i))
    nix_log(drvs, "world-1.0", 4.0, hash_part=_hash(40))
    found = NixLogs(drvs).durations({"hello", "world", "absent"})
    assert found.keys() == {"hello", "world"}
    assert found["world"] == pytest.approx(4.0)
    assert len(times) == KEEP
    assert found["hello"] == pytest.approx(12.0)


def test_names_that_share_a_first_word_are_told_apart(tmp_path: Path) -> None:
    drvs = tmp_path / "drvs"
    nix_log(drvs, "python3.12-requests-2.31.0", 5.0, hash_part=_hash(1))
    nix_log(drvs, "python3.12-requests-toolbelt-1.0.0", 7.0, hash_part=_hash(2))
    nix_log(drvs, "python3.12-idna-3.4", 2.0, hash_part=_hash(3))
    nix_log(drvs, "python3.12", 9.0, hash_part=_hash(4))
    logs = NixLogs(drvs)
    assert logs.durations({"python3.12-requests", "python3.12-idna", "python3.12-six"}) == {
        "python3.12-requests": pytest.approx(5.0),
        "python3.12-idna": pytest.approx(2.0),
    }
    # Asked later of the same listing: the word's logs were read for the first names.
    assert logs.durations({"python3.12-requests-toolbelt", "python3.12"}) == {
        "python3.12-requests-toolbelt": pytest.approx(7.0),
        "python3.12": pytest.approx(9.0),
    }


def test_a_log_changed_before_its_birth_says_nothing(tmp_path: Path) -> None:
    # offload's copy of a builder's log carries the build's start, before the copy's birth.
    drvs = tmp_path / "drvs"
    text = tmp_path / "build.log"
    text.write_text("built\n")
    drv = f"/nix/store/{HASH}-copied-1.0.drv"
    target = drvs / HASH[:2] / f"{HASH[2:]}-copied-1.0.drv.bz2"
    assert keep_for_nix(drv, text, target, started=1_000_000.0)
    assert target.stat().st_mtime == 1_000_000.0
    assert NixLogs(drvs).durations({"copied"}) == {}


def test_no_log_dir_is_no_hint(tmp_path: Path) -> None:
    assert NixLogs(tmp_path / "absent").durations({"hello"}) == {}
    (tmp_path / "drvs").write_text("a file where the directory would be")
    assert NixLogs(tmp_path / "drvs").durations({"hello"}) == {}


def test_the_directory_is_listed_once(tmp_path: Path) -> None:
    drvs = tmp_path / "drvs"
    nix_log(drvs, "early-1", 2.0)
    logs = NixLogs(drvs)
    assert logs.durations({"early", "late"}).keys() == {"early"}
    nix_log(drvs, "late-1", 3.0, hash_part=_hash(7))
    assert logs.durations({"late"}) == {}  # one listing per NixLogs: a run's, or a hook's
    assert NixLogs(drvs).durations({"late"}) == {"late": pytest.approx(3.0)}


def _built(pname: str, machine: str, seconds: float) -> BuildRecord:
    return BuildRecord(
        run_id="",
        drv_path=f"/nix/store/{HASH}-{pname}-1.0.drv",
        pname=pname,
        machine=machine,
        started=1000.0,
        finished=1000.0 + seconds,
        status="built",
    )


def test_history_comes_first_and_logs_fill_in_at_the_fastest_speed(tmp_path: Path) -> None:
    drvs = tmp_path / "drvs"
    nix_log(drvs, "known-1.0", 100.0, hash_part=_hash(1))
    nix_log(drvs, "logged-2.0", 6.0, hash_part=_hash(2))
    with History(tmp_path / "history.sqlite") as history:
        history.record([_built("known", "slow", 5.0)])
        speeds = {"slow": 1.0, "fast": 4.0}
        found = estimator(history, speeds, NixLogs(drvs))(iter(["known", "logged", "none"]))
        without = estimator(history, speeds)(["known", "logged"])
    assert found == {"known": pytest.approx(5.0), "logged": pytest.approx(24.0)}
    assert without == {"known": pytest.approx(5.0)}


def test_a_listing_past_its_age_is_made_again(tmp_path: Path) -> None:
    drvs = tmp_path / "drvs"
    logs = NixLogs(drvs, max_age=0.0)  # a coordinator's, aged at once
    assert logs.durations({"late"}) == {}
    nix_log(drvs, "late-1", 3.0)
    assert logs.durations({"late"}) == {"late": pytest.approx(3.0)}
