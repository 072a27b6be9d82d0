"""``offload history``'s filters: a name that matches nothing the history or the pool knows is
one error with what it could have meant (real SQLite in tmp_path; the pool as the real Nix
reads it from ``NIX_CONFIG``)."""

from __future__ import annotations

import json

import pytest

from offload.cli import main
from offload.history.db import History
from offload.history.records import BuildRecord, RunRecord

# (run, machine of its one build of hello), oldest first.
RUNS = [("run1", "slow"), ("run2", "fast"), ("run3", "fast")]


@pytest.fixture
def history(tmp_path, monkeypatch):
    """Three runs of hello, one on slow then two on fast; medium is in the pool only."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(state))
    machines = tmp_path / "machines"
    machines.write_text("ssh://medium x86_64-linux - 2 2\n")
    monkeypatch.setenv("NIX_CONFIG", f"builders = @{machines}")
    with History(state / "history.sqlite") as kept:
        for n, (run_id, machine) in enumerate(RUNS):
            at = 1000.0 + 100 * n
            run = RunRecord(run_id, at, at + 5, ("hello",), "ok", (), None, None)
            drv = f"/nix/store/{n}{'a' * 31}-hello-2.12.drv"
            build = BuildRecord(
                run_id, drv, "hello", machine, at, at + 4, "built", name="hello-2.12"
            )
            kept.record_run(run, [build])
    return kept


def _error(capsys, argv):
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()


def test_a_machine_neither_history_nor_pool_knows_is_one_error_with_the_names(history, capsys):
    assert _error(capsys, ["history", "--machine", "fsat"]) == [
        "error: no machine 'fsat' in the history, nor in the pool",
        "hint: did you mean fast? known: fast, local, medium, slow (`offload machines`: the pool)",
    ]
    # Said the same way when another filter is given too.
    assert _error(capsys, ["history", "--machine", "fsat", "--run", "run2"])[0] == (
        "error: no machine 'fsat' in the history, nor in the pool"
    )


def test_a_machine_of_the_pool_with_no_builds_kept_shows_empty_tables(history, capsys):
    assert main(["history", "--json", "--machine", "medium"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["runs"] == shown["machines"] == shown["builds"] == []
    # Known to the history, only not in that run: nothing to say but what is there.
    assert main(["history", "--json", "--machine", "slow", "--run", "run3"]) == 0
    assert json.loads(capsys.readouterr().out)["builds"] == []


def test_a_drv_name_no_build_has_is_one_error_with_the_names_kept(history, capsys):
    assert _error(capsys, ["history", "--drv", "helo"]) == [
        "error: no build in the history whose .drv path contains 'helo'",
        "hint: did you mean hello? builds kept of: hello",
    ]
    assert main(["history", "--json", "--drv", "hello-2"]) == 0
    assert len(json.loads(capsys.readouterr().out)["builds"]) == 3


def test_a_drv_name_in_an_empty_history_says_it_is_empty(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    History(tmp_path / "history.sqlite").close()
    assert _error(capsys, ["history", "--drv", "hello"]) == [
        "error: no build in the history whose .drv path contains 'hello'",
        "hint: the history has no builds yet",
    ]


def test_last_narrows_the_machine_table_to_what_it_lists(history, capsys):
    assert main(["history", "--json"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert {m["machine"]: m["builds"] for m in every["machines"]} == {"fast": 2, "slow": 1}
    assert main(["history", "--json", "--last", "1"]) == 0
    newest = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in newest["runs"]] == ["run3"]
    assert {m["machine"]: m["builds"] for m in newest["machines"]} == {"fast": 1}
    assert main(["history", "--last", "1"]) == 0
    assert "machines (of the listed runs and builds only; " in capsys.readouterr().out


def test_last_with_a_machine_lists_the_newest_runs_that_used_it(history, capsys):
    # slow built only in the oldest run: the newest run *on slow*, not the newest run.
    assert main(["history", "--json", "--machine", "slow", "--last", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in shown["runs"]] == ["run1"]
    assert [(b["run_id"], b["machine"]) for b in shown["builds"]] == [("run1", "slow")]
    assert [m["machine"] for m in shown["machines"]] == ["slow"]


def test_a_machine_table_past_the_builds_it_reads_says_it_sums_only_the_newest(
    history, capsys, monkeypatch
):
    # It summed the newest 20,000 builds of up to 100,000 kept, its help saying "every build
    # kept" and its title nothing. Here 2 of the 3 builds kept.
    monkeypatch.setattr("offload.cli.history._SUMMED", 2)
    assert main(["history", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {m["machine"]: m["builds"] for m in printed["machines"]} == {"fast": 2}
    # The JSON says what its machine table summed, as the title does (it said nothing).
    assert printed["machines_scope"] == {"listed_only": False, "newest_builds_only": 2}
    assert main(["history", "--json", "--last", "1"]) == 0
    scope = json.loads(capsys.readouterr().out)["machines_scope"]
    assert scope == {"listed_only": True, "newest_builds_only": None}
    assert main(["history"]) == 0
    assert "\nmachines (of the newest 2 builds only; measured: " in capsys.readouterr().out
    # --last 3 lists run1 too, whose build is older than the 2 read: said.
    assert main(["history", "--last", "3"]) == 0
    said = "\nmachines (of the listed runs and builds, within the newest 2 builds only; "
    assert said in capsys.readouterr().out
    # --last 1 lists run3, all of whose builds were read: nothing left out to say.
    assert main(["history", "--last", "1"]) == 0
    assert "\nmachines (of the listed runs and builds only; measured: " in capsys.readouterr().out


def test_a_machine_when_the_pool_cannot_be_read_is_not_said_missing_from_it(
    history, tmp_path, monkeypatch, capsys
):
    # With offload.toml broken, `--machine local` said "no machine 'local' in the history, nor
    # in the pool", hint "known:  (...)": the pool was not read, and local is always in it.
    config = tmp_path / "config"
    (config / "offload").mkdir(parents=True)
    (config / "offload" / "offload.toml").write_text("not [ toml\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    assert main(["history", "--json", "--machine", "local"]) == 0
    assert json.loads(capsys.readouterr().out)["builds"] == []
    error, hint = _error(capsys, ["history", "--machine", "fsat"])
    assert error.startswith(
        "error: no machine 'fsat' in the history, and the pool could not be read ("
        f"{config / 'offload' / 'offload.toml'}: "
    )
    assert hint == (
        "hint: did you mean fast? known: fast, local, slow"
        " (`offload machines` says what is wrong with it)"
    )


def test_a_name_with_odd_characters_is_said_as_typed(history, capsys):
    # 'he\x07llo' was said as 'hello' ("no build ... contains 'hello'", a name the history
    # has): the control character dropped, not shown; a long name was cut with no mark.
    assert _error(capsys, ["history", "--drv", "he\x07llo"])[0] == (
        "error: no build in the history whose .drv path contains 'he\\x07llo'"
    )
    error = _error(capsys, ["history", "--machine", "fa\x1b[31mst" + "x" * 80])[0]
    assert error.startswith("error: no machine 'fa\\x1b[31mstxxx")
    assert error.endswith("...' in the history, nor in the pool")
    # A run id likewise ("no run 'ab'" for 'a\x07b').
    assert _error(capsys, ["history", "--run", "a\x07b"])[0] == (
        "error: no run 'a\\x07b' in the history"
    )


def test_the_builds_listed_say_why_each_that_did_not_build_ended_so(tmp_path, monkeypatch, capsys):
    """A failed build's Nix error and a lost one's builder fault were in --json only: the
    listing showed "failed" and no why."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(state))
    monkeypatch.setenv("NIX_CONFIG", "builders =")
    run = RunRecord("run1", 1000.0, 1005.0, ("hello",), "failed", (), None, None)
    drv = "/nix/store/" + "a" * 32 + "-{}.drv"
    builds = [
        BuildRecord("run1", drv.format("ok"), "ok", "fast", 1000.0, 1001.0, "built", name="ok"),
        BuildRecord(
            "run1", drv.format("bad"), "bad", "fast", 1000.0, 1002.0, "failed", name="bad",
            error="builder for '/nix/store/x-bad.drv' failed with exit code 3",
        ),
        BuildRecord(
            "run1", drv.format("gone"), "gone", "slow", 1000.0, 1003.0, "lost", name="gone",
            error="ssh: connect to host slow port 22: Connection refused\n" + "x" * 400,
        ),
    ]  # fmt: skip
    with History(state / "history.sqlite") as kept:
        kept.record_run(run, builds)
    assert main(["history", "--run", "run1"]) == 0
    out = capsys.readouterr().out
    why = out.split("\nwhy (newest first):\n")[1].split("\n\n")[0].splitlines()
    lost, failed = why  # the build that built has no line
    assert lost.startswith(
        "  gone on slow (lost, run1): ssh: connect to host slow port 22: Connection refused / xxx"
    )
    assert lost.endswith("x...")
    assert len(lost) < 400
    assert failed == (
        "  bad on fast (failed, run1): builder for '/nix/store/x-bad.drv' failed with exit code 3"
    )
