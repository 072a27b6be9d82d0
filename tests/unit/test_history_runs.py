"""Runs, phases and the schema migration of the history database; the run recorder and
``offload history``'s views (real SQLite in tmp_path)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest

from offload.cli import main
from offload.history.db import History
from offload.history.recorder import RunRecorder, longest_paths, lower_bound
from offload.history.records import BuildRecord, MachineRecord, PhaseRecord, RunRecord, RunReport
from offload.history.views import machine_stats, speed_factors
from offload.ui.events import JobFinished, JobPhase, MachineEvent, RunFinished, RunStarted
from tests.helpers.users import as_another_user

# The schema offload wrote before runs and phases were recorded (user_version 1), verbatim.
SCHEMA_1 = """
CREATE TABLE builds (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    drv_path TEXT NOT NULL,
    pname TEXT NOT NULL,
    machine TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    status TEXT NOT NULL,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    bytes_received INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX builds_pname_machine ON builds (pname, machine, finished);
CREATE INDEX builds_drv ON builds (drv_path, finished);
PRAGMA user_version = 1;
"""


def test_a_schema_1_database_keeps_its_records_and_gains_runs(tmp_path):
    path = tmp_path / "history.sqlite"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.executemany(
        "INSERT INTO builds (run_id, drv_path, pname, machine, started, finished, status,"
        " bytes_sent, bytes_received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            ("old1", "/nix/store/a-hello-1.drv", "hello", "fast", 10.0, 14.0, "built", 5, 6),
            ("old1", "/nix/store/b-bad-1.drv", "bad", "slow", 11.0, 12.0, "failed", 0, 0),
            ("hook-x", "/nix/store/c-h-1.drv", "h", "fast", 20.0, 21.0, "built", 0, 0),
        ],
    )
    db.commit()
    db.close()
    with History(path) as history:
        assert history.durations(["hello"]) == {"hello": {"fast": 4.0}}
        old = history.builds(drv_path="/nix/store/a-hello-1.drv")
        assert [(b.machine, b.duration, b.bytes_sent, b.phases) for b in old] == [
            ("fast", 4.0, 5, ())
        ]
        # The old run is made up from its builds; the hook's build is no run.
        (run,) = history.runs()
        assert (run.run_id, run.started, run.finished, run.outcome) == ("old1", 10, 14, "failed")
        assert history.counts(["old1"]) == {"old1": {"built": 1, "failed": 1}}
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (2,)
    db.close()


def _phase(kind, drv, machine, phase, at, *, speculative=False):
    return JobPhase(drv, kind, machine, phase, None, at, speculative)


def _done(drv, machine, status, started, finished, *, build_seconds=None, sent=0, received=0):
    name = drv.rsplit("/", 1)[-1].split("-", 1)[-1].removesuffix(".drv")
    return JobFinished(
        drv,
        name,
        machine,
        status,
        started,
        finished,
        sent,
        received,
        None,
        finished,
        build_seconds,
    )


A, B, C = "/nix/store/aaa-a-1.0.drv", "/nix/store/bbb-b-1.0.drv", "/nix/store/ccc-c-1.0.drv"


def _recorded_run() -> tuple[RunRecord, list[BuildRecord]]:
    rec = RunRecorder(100.0)
    for event in [
        RunStarted("run1", 3, ("fast", "local"), 9.0, 100.5),
        MachineEvent("fast", "loaded", "busy", None, 100.6, slots=1),
        JobFinished(C, "c-1.0", "local", "substituted", 100.2, 100.4, 0, 0, None, 100.4),
        _phase("a-1.0", A, "fast", "queued", 101.0),
        _phase("a-1.0", A, "fast", "connecting", 101.5),
        _phase("a-1.0", A, "fast", "sending", 102.0),
        _phase("a-1.0", A, "fast", "building", 103.0),
        _phase("a-1.0", A, "fast", "fetching", 107.0),
        _done(A, "fast", "built", 100.9, 108.0, build_seconds=3.5, sent=10, received=20),
        _phase("b-1.0", B, "local", "connecting", 108.0),
        _phase("b-1.0", B, "local", "building", 108.1),
        _phase("b-1.0", B, "fast", "connecting", 109.0, speculative=True),
        _phase("b-1.0", B, "fast", "building", 109.2, speculative=True),
        _done(B, "local", "built", 108.0, 112.0, build_seconds=3.9),
        RunFinished("run1", 2, 0, 0, 12.0, (), 112.1),
    ]:
        rec.handle(event)
    return rec.run(
        RunReport("run1"),
        asked=["b-1.0"],
        speeds={"fast": 4.0, "local": 1.0},
        slots={"fast": 2, "local": 2},
        deps={B: (A, "/nix/store/zzz-not-in-run.drv"), A: ()},
        finished=112.5,
    )


def test_the_recorder_tells_each_copy_in_phases():
    run, builds = _recorded_run()
    by = {(b.drv_path, b.machine): b for b in builds}
    a = by[A, "fast"]
    assert [(p.phase, p.started, p.finished) for p in a.phases] == [
        ("waiting", 100.9, 102.0),
        ("sending", 102.0, 103.0),
        ("building", 103.0, 107.0),
        ("fetching", 107.0, 108.0),
    ]
    # The build itself, for estimates: the builder's own seconds, ending when building did.
    assert (a.started, a.finished, a.bytes_sent, a.bytes_received) == (103.5, 107.0, 10, 20)
    assert a.span == (100.9, 108.0)
    assert [p.phase for p in by[C, "local"].phases] == ["fetching"]
    loser = by[B, "fast"]
    # Never told an end: it stopped when the local copy was built (its build ended at 112).
    assert (loser.status, loser.speculative, loser.span) == ("cancelled", True, (109.0, 112.0))
    assert run.machines == (MachineRecord("fast", 4.0, 1), MachineRecord("local", 1.0, 2))
    assert run.deps == {B: (A,)}
    assert (run.asked, run.outcome, run.estimate, run.wall) == (("b-1.0",), "ok", 9.0, 12.5)
    # Work: a 3.5 s x 4 = 14, b 3.9 s x 1; the chain a -> b on the fastest (speed 4).
    assert run.lower_bound == pytest.approx((14 + 3.9) / 4)


def test_runs_and_builds_with_phases_come_back_as_recorded(tmp_path):
    run, builds = _recorded_run()
    with History(tmp_path / "h.sqlite") as history:
        history.record_run(run, builds)
        (back,) = history.runs(run_id="run")
        assert back == run
        got = history.builds(run_id="run1", limit=None)
        assert {(b.drv_path, b.machine): b for b in got} == {
            (b.drv_path, b.machine): b.__class__(**{**b.__dict__, "run_id": "run1"}) for b in builds
        }
        assert [b.machine for b in history.builds(machine="local", name="bbb-b")] == ["local"]
        assert history.runs(run_id="nope") == []
        assert history.runs(run_id="%") == []  # LIKE wildcards are plain characters


def test_lower_bound_takes_the_longer_of_chain_and_capacity():
    builds = [
        BuildRecord("r", d, d, m, 0, t, "built")
        for d, m, t in [("x", "a", 4.0), ("y", "a", 4.0), ("z", "b", 2.0)]
    ]
    machines = [MachineRecord("a", 1.0, 4), MachineRecord("b", 2.0, 1)]
    # Chain x -> y -> z: 4 + 4 + 4 (2 s at speed 2) = 12 work, /2 fastest = 6 > 12 / 6.
    assert lower_bound(builds, machines, {"y": ("x",), "z": ("y",)}) == pytest.approx(6.0)
    assert lower_bound(builds, machines, {}) == pytest.approx(2.0)
    assert lower_bound([], machines, {}) is None
    assert longest_paths({"p": 1.0, "q": 2.0}, {"q": ("p", "gone")}) == {"p": 1.0, "q": 3.0}


def test_measured_speed_compares_with_the_other_machines_times():
    def built(pname, machine, seconds):
        return BuildRecord("r", f"/nix/store/x-{pname}.drv", pname, machine, 0, seconds, "built")

    builds = [
        built("gcc", "fast", 10.0),  # 40 s of work at speed 4...
        built("gcc", "slow", 80.0),  # ... and 80 s at speed 1: slow is half as fast as it says
        built("solo", "slow", 5.0),  # built nowhere else: not comparable
        BuildRecord("r", "/nix/store/f.drv", "f", "slow", 0, 1, "failed"),
    ]
    stats = {s.machine: s for s in machine_stats(builds, {"fast": 4.0, "slow": 1.0})}
    assert stats["slow"].measured_speed == pytest.approx(0.5)
    assert stats["fast"].measured_speed == pytest.approx(8.0)
    assert (stats["slow"].builds, stats["slow"].failures, stats["slow"].busy) == (2, 1, 86.0)
    runs = [
        RunRecord("old", 1, 2, (), "ok", (MachineRecord("fast", 3.0, 1),), None, None),
        RunRecord("new", 5, 6, (), "ok", (MachineRecord("fast", 4.0, 1),), None, None),
    ]
    assert speed_factors(runs) == {"fast": 4.0}


def test_history_cli_lists_runs_builds_and_estimates(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    run, builds = _recorded_run()
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(run, builds)
    assert main(["history", "--json", "--machine", "fast"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in shown["runs"]] == ["run1"]
    assert {(b["name"], b["status"]) for b in shown["builds"]} == {
        ("a-1.0", "built"),
        ("b-1.0", "cancelled"),
    }
    (a,) = (b for b in shown["builds"] if b["name"] == "a-1.0")
    assert a["phase_seconds"] == {"waiting": 1.1, "sending": 1.0, "building": 4.0, "fetching": 1.0}
    assert shown["estimates"] == {
        "a": {"work": 14.0, "machines": {"fast": 3.5, "local": 14.0}},
        "b": {"work": 3.9, "machines": {"fast": 0.975, "local": 3.9}},  # built on local
    }
    assert main(["history", "--run", "run1"]) == 0
    text = capsys.readouterr().out
    assert "b-1.0" in text
    assert "cancelled (speculative)" in text


def test_history_cli_names_an_unknown_run_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    History(tmp_path / "history.sqlite").close()  # a history, without that run
    assert main(["history", "--run", "feed"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: no run 'feed' in the history"
    assert err[1].startswith("hint: ")
    with pytest.raises(SystemExit, match="1"):
        main(["history", "--last", "0"])
    assert "0 is not between 1 and 1000000" in capsys.readouterr().err


def test_a_phase_record_never_has_a_negative_duration():
    assert PhaseRecord("building", 5.0, 4.0).duration == 0.0


def test_a_run_row_of_json_without_its_fields_is_damage_said_in_one_line(
    tmp_path, monkeypatch, capsys
):
    # Valid JSON, not what offload wrote: every `offload history` read every run's machines.
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    run, builds = _recorded_run()
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(run, builds)
    with sqlite3.connect(tmp_path / "history.sqlite") as db:
        db.execute("""UPDATE runs SET machines = '[{"nbme": "fast"}]'""")
    assert main(["history"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(
        f"error: {tmp_path / 'history.sqlite'}: the history database is damaged"
    )
    assert "internal error" not in err[0]


def test_another_users_history_is_read_as_it_is_or_said_unusable(tmp_path):
    # Left by `sudo -E offload build`: root's, 0644. chmod 0600 by its reader failed with an
    # internal error; it is read as it is (a write it cannot make is a StoreError).
    place = Path(tempfile.mkdtemp(prefix="ofh", dir="/tmp"))
    place.chmod(0o777)  # the reader may make its -wal beside it
    run, builds = _recorded_run()
    with History(place / "history.sqlite") as history:
        history.record_run(run, builds)
    (place / "history.sqlite").chmod(0o644)

    def read_runs() -> str:
        with History(place / "history.sqlite") as history:
            return repr([r.run_id for r in history.runs()])

    answer = as_another_user(read_runs)
    shutil.rmtree(place)
    assert answer == "['run1']"


def test_history_in_a_directory_this_user_may_not_write_is_read_as_it_is(tmp_path):
    # The state directory of another user (root's, 0755): `offload history` and `offload
    # report` read it where they could only fail writing it (its -shm cannot be made there).
    place = Path(tempfile.mkdtemp(prefix="ofh", dir="/tmp"))
    place.chmod(0o755)
    state = place / "state"
    state.mkdir(mode=0o755)
    run, builds = _recorded_run()
    with History(state / "history.sqlite") as history:
        history.record_run(run, builds)
    (state / "history.sqlite").chmod(0o644)
    before = sorted((p.name, p.read_bytes()) for p in state.iterdir())
    out = place / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)

    def read() -> str:
        os.environ["OFFLOAD_STATE_DIR"] = str(state)
        said = io.StringIO()
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            codes = [main(["history", "--json"]), main(["report", "-o", str(out / "r.html")])]
        return json.dumps([codes, said.getvalue()])

    codes, said = json.loads(as_another_user(read))
    after = sorted((p.name, p.read_bytes()) for p in state.iterdir())
    page = (out / "r.html").read_text() if (out / "r.html").exists() else ""
    shutil.rmtree(place)
    assert codes == [0, 0], said
    assert '"run_id": "run1"' in said
    assert page.startswith("<!DOCTYPE html>")
    assert after == before


def test_no_history_in_a_directory_this_user_may_not_write_is_one_error(tmp_path):
    place = Path(tempfile.mkdtemp(prefix="ofh", dir="/tmp"))
    place.chmod(0o755)

    def read() -> str:
        os.environ["OFFLOAD_STATE_DIR"] = str(place)
        said = io.StringIO()
        with contextlib.redirect_stderr(said):
            code = main(["history"])
        return f"{code}\n{said.getvalue()}"

    said = as_another_user(read).splitlines()
    made = list(place.iterdir())
    shutil.rmtree(place)
    error = f"error: {place / 'history.sqlite'}: no history, and {place} cannot be written"
    assert said == [
        "1",
        f"{error} to start one",
        "hint: OFFLOAD_STATE_DIR names it: point it at a directory you may write",
    ]
    assert made == []


def test_an_interrupted_run_shows_no_bound_nor_ratio(tmp_path, monkeypatch, capsys):
    # Its bound is of what it built before the Ctrl-C: "0.0s", a ratio of 3423.27.
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    run, builds = _recorded_run()
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(dataclasses.replace(run, outcome="interrupted"), builds)
    assert main(["history"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if "run1" in line]
    assert row.split()[-5:-3] == ["-", "-"]  # bound, ratio
    assert row.endswith("interrupted")


def test_a_run_whose_bound_is_under_a_second_shows_no_ratio(tmp_path, monkeypatch, capsys):
    # Builds of 0.04 s after 5 s on an unreachable cache: a ratio of 145, read as a scheduling
    # disaster. Its bound still shows.
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    run, builds = _recorded_run()
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(dataclasses.replace(run, run_id="run2", lower_bound=0.04), builds[:0])
        history.record_run(dataclasses.replace(run, run_id="run3", lower_bound=2.0), builds[:0])
    assert main(["history"]) == 0
    rows = capsys.readouterr().out.splitlines()
    (short,) = [line for line in rows if "run2" in line]
    (long,) = [line for line in rows if "run3" in line]
    assert short.split()[-5:-3] == ["0.0s", "-"]  # bound, ratio
    assert long.split()[-4] == f"{run.wall / 2.0:.2f}"


def _faulty_run() -> tuple[RunRecord, list[BuildRecord]]:
    """away: down all run; slow: slow to answer, then up and building; fast: builds."""
    rec = RunRecorder(100.0)
    for event in [
        RunStarted("run2", 2, ("fast", "slow", "away"), 9.0, 100.1),
        MachineEvent("away", "down", "host name away does not resolve", 160.0, 100.2),
        MachineEvent("slow", "slow", "no answer\n yet", None, 100.5),
        _phase("a-1.0", A, "fast", "building", 101.0),
        _done(A, "fast", "built", 101.0, 105.0),
        MachineEvent("slow", "up", "it answered", None, 102.0),
        _phase("b-1.0", B, "slow", "building", 105.0),
        _done(B, "slow", "built", 105.0, 109.0),
        # Its backoff ended: said up, tried, and down again (a review: it was read as back).
        MachineEvent("away", "up", "its backoff ended: it takes work again", None, 109.5),
        _phase("c-1.0", C, "away", "connecting", 109.6),
        *(MachineEvent("away", "down", f"again {i}", None, 110.0 + i) for i in range(30)),
        RunFinished("run2", 2, 0, 0, 10.0, (), 141.0),
    ]:
        rec.handle(event)
    return rec.run(
        RunReport("run2"),
        asked=["b-1.0"],
        speeds={"fast": 4.0, "slow": 1.0, "away": 8.0},
        slots={"fast": 1, "slow": 1, "away": 4},
        deps={B: (A,), A: ()},
        finished=141.0,
    )


def test_what_a_run_said_of_its_machines_is_kept_and_a_machine_down_all_run_is_no_capacity(
    tmp_path, monkeypatch, capsys
):
    run, builds = _faulty_run()
    fast, slow, away = run.machines
    assert (fast.said, fast.usable) == ((), True)
    assert slow.said == ("+0.5s slow to answer: no answer yet", "+2.0s up: it answered")
    assert slow.usable  # slow at first, then it built
    assert away.said[0] == "+0.2s down: host name away does not resolve"
    assert len(away.said) == 21  # 20 kept, and how many more
    assert away.said[1] == "+9.5s up: its backoff ended: it takes work again"
    assert away.said[-1] == "... and 12 more"
    assert not away.usable
    # The bound counts fast and slow (the chain's 16 + 4 work-seconds at fast's speed 4: 5 s),
    # not away, down all run, whose speed 8 made it 2.5 s.
    assert run.lower_bound == pytest.approx(5.0)
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(run, builds)
        (again,) = history.runs(run_id="run2")
    assert again.machines == run.machines
    assert main(["history", "--run", "run2"]) == 0
    text = capsys.readouterr().out
    assert "  slow: +0.5s slow to answer: no answer yet\n" in text
    assert "  away: down or not answering all run\n" in text
    assert main(["history", "--run", "run2", "--json"]) == 0
    (said,) = json.loads(capsys.readouterr().out)["runs"]
    assert said["machines"][2]["usable"] is False
    assert said["machines"][1]["said"][1] == "+2.0s up: it answered"


def test_a_run_kept_by_an_older_offload_has_machines_with_nothing_said(tmp_path):
    with History(tmp_path / "history.sqlite") as history:
        run, builds = _recorded_run()
        history.record_run(run, builds)
    with sqlite3.connect(tmp_path / "history.sqlite") as db:
        (kept,) = db.execute("SELECT machines FROM runs").fetchone()
        assert json.loads(kept)[0].keys() == {"name", "speed", "slots"}  # as older ones wrote
    with History(tmp_path / "history.sqlite") as history:
        (again,) = history.runs()
    assert [(m.said, m.usable) for m in again.machines] == [((), True), ((), True)]
