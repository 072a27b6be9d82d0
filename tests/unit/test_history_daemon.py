"""``offload history --daemon``: the nix-daemon's offload-hook history, read where it is kept
(its directory pointed into tmp_path), real SQLite."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from offload.cli import main
from offload.history.db import History
from offload.history.records import BuildRecord
from tests.helpers.users import as_another_user

DRV = "/nix/store/" + "a" * 32 + "-firefox-130.0.drv"


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    place = tmp_path / "system"
    monkeypatch.setattr("offload.cli.history_file.SYSTEM_STATE_DIR", place)
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "user"))
    return place


def _hook_built(place: Path) -> None:
    place.mkdir(mode=0o700)
    build = BuildRecord(
        "hook-1", DRV, "firefox", "big", 100.0, 700.0, "built", name="firefox-130.0"
    )
    with History(place / "history.sqlite") as history:
        history.record([build], deps={DRV: ()})


def test_the_daemons_builds_are_listed_with_their_estimates(
    system: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _hook_built(system)
    assert main(["history", "--daemon", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(b["name"], b["machine"]) for b in shown["builds"]] == [("firefox-130.0", "big")]
    assert shown["estimates"]["firefox"]["work"] == 600.0
    assert main(["history", "--daemon"]) == 0  # no run to show: the builds are listed
    listed = capsys.readouterr().out
    assert "firefox-130.0  big" in listed
    # Its id is the build's own, which --run took for no run's: the run is said as none.
    assert any(line.endswith(" offload-hook") for line in listed.splitlines())
    assert main(["history", "--daemon", "--run", "hook-1"]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        "error: 'hook-1': offload-hook's builds belong to no run"
    )
    # As the listing names their run (interrupts tester: "no run 'offload-hook'").
    assert main(["history", "--daemon", "--run", "offload-hook"]) == 1
    said = capsys.readouterr().err.splitlines()
    assert said[0] == "error: 'offload-hook': offload-hook's builds belong to no run"
    assert said[1].startswith("hint: `offload history --drv NAME` lists them")


def test_estimates_weigh_the_builds_by_the_pool_s_speed_factors(
    system: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hook's builds record no factor: "big" at speed 4 was read as speed 1, a quarter of
    # the work the scheduler and the hook estimate from the same history.
    monkeypatch.setenv("NIX_CONFIG", "builders = ssh://big x86_64-linux - 1 4")
    _hook_built(system)
    assert main(["history", "--daemon", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["estimates"]["firefox"]["work"] == 2400.0


def test_the_users_own_history_says_the_daemons_exists(
    system: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (system.parent / "user").mkdir()
    History(system.parent / "user" / "history.sqlite").close()
    assert main(["history"]) == 0
    assert capsys.readouterr().err == ""
    _hook_built(system)
    assert main(["history"]) == 0
    done = capsys.readouterr()
    note = f"note: the nix-daemon's offload-hook keeps its own history in {system}:"
    assert done.err.splitlines() == [f"{note} `sudo offload history --daemon`"]
    assert "firefox" not in done.out


def test_no_daemon_history_is_one_line_and_makes_nothing(
    system: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", "--daemon"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0] == f"error: {system / 'history.sqlite'}: no history of the nix-daemon's offload-hook"
    )
    assert err[1].startswith("hint: ")
    # It sent the user to `offload doctor`, which checks builders, not Nix's build-hook.
    assert "doctor" not in err[1]
    assert "`offload hook install --print`" in err[1]
    # A daemon whose hook keeps its state elsewhere (OFFLOAD_STATE_DIR in its environment,
    # services.offload.stateDir): the hint says how to read that one, which --daemon never does.
    assert "`OFFLOAD_STATE_DIR=DIR offload history`, without --daemon" in err[1]
    assert len(err) == 2
    assert not system.exists()


def test_a_user_is_told_the_daemons_history_is_roots(
    monkeypatch: pytest.MonkeyPatch, system: Path
) -> None:
    # As /var/lib/offload is: a directory of root's, mode 0700, in one everyone may search.
    place = Path(tempfile.mkdtemp(prefix="ofd", dir="/tmp"))
    place.chmod(0o755)
    system = place / "offload"
    monkeypatch.setattr("offload.cli.history_file.SYSTEM_STATE_DIR", system)
    _hook_built(system)

    def read() -> str:
        said = io.StringIO()
        with contextlib.redirect_stderr(said):
            code = main(["history", "--daemon"])
        return f"{code}\n{said.getvalue()}"

    said = as_another_user(read)
    shutil.rmtree(place)
    assert said.splitlines() == [
        "1",
        f"error: {system / 'history.sqlite'}: the nix-daemon's history is root's",
        "hint: sudo offload history --daemon",
    ]


def test_a_machine_is_checked_against_the_daemons_history_not_the_users_pool(
    system: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # --machine was checked against the user's pool: one of it passed with empty tables, and
    # a typo was said missing from "the pool", with the user's machines as those known.
    _hook_built(system)  # the daemon's hook built on big
    machines = tmp_path / "machines"
    machines.write_text("ssh://medium x86_64-linux - 2 2\n")
    monkeypatch.setenv("NIX_CONFIG", f"builders = @{machines}")
    assert main(["history", "--daemon", "--machine", "medium"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: no machine 'medium' in the nix-daemon's history",
        "hint: known: big, local (the machines its offload-hook has built on)",
    ]
    assert main(["history", "--daemon", "--machine", "bgi"]) == 1
    assert capsys.readouterr().err.splitlines()[1].startswith("hint: did you mean big? known:")
    assert main(["history", "--daemon", "--json", "--machine", "big"]) == 0
    assert [b["machine"] for b in json.loads(capsys.readouterr().out)["builds"]] == ["big"]
    assert main(["history", "--daemon", "--json", "--machine", "local"]) == 0


def test_a_drv_or_run_not_in_the_daemons_history_names_that_history(
    system: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # They were said missing "in the history", as if it were the user's own, and --run's hint
    # sent to `offload history`, which lists the user's runs.
    _hook_built(system)
    assert main(["history", "--daemon", "--drv", "fierfox"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: no build in the nix-daemon's history whose .drv path contains 'fierfox'",
        "hint: did you mean firefox? builds kept of: firefox",
    ]
    assert main(["history", "--daemon", "--run", "feed"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: no run 'feed' in the nix-daemon's history",
        "hint: `offload history --daemon` lists the runs and ids",
    ]
