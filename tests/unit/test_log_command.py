"""`offload log`: the kept log of a build, or the one Nix kept, shown as nix-store -l shows it."""

from __future__ import annotations

import argparse
import bz2
import io
import subprocess
import tracemalloc
from pathlib import Path
from unittest import mock

import pytest
from typing_extensions import override

import offload.cli
from offload.cli import log as log_cli
from offload.errors import OffloadError
from offload.history.db import History
from offload.history.records import BuildRecord
from offload.logs import STOPPED, BuildLogs
from offload.nix_log_copies import nix_log_path
from offload.process import Completed, output_lines
from tests.helpers.log_clock import DRV, Clock
from tests.helpers.nix_files import nix_file


def run_main(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> int:
    """``offload.cli.main`` with a parser that has the `log` subcommand registered."""

    def parser(_argv: object = ()) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog="offload")
        p.add_argument("--debug", action="store_true")
        log_cli.register(p.add_subparsers(dest="command", required=True))
        return p

    monkeypatch.setattr(offload.cli, "_parser", parser)
    return offload.cli.main(argv)


def test_log_of_unknown_drv_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    assert run_main(monkeypatch, ["log", DRV]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert (
        lines[0] == "error: no build log kept for 0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-hello-2.12.drv"
    )
    assert len(lines) == 2
    assert lines[1].startswith("hint: ")


def test_a_derivation_the_history_says_was_not_built_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # "was it built on this host?": the history knew it was skipped, for a dependency.
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    skipped = BuildRecord("run1", DRV, "hello", "", 1.0, 1.0, "skipped", error="dep failed")
    with History(tmp_path / "history.sqlite") as history:
        history.record([skipped])
    assert run_main(monkeypatch, ["log", DRV]) == 1
    assert capsys.readouterr().err.splitlines()[1] == (
        "hint: it was not built: skipped, as a dependency failed (run run1): dep failed"
    )


def test_log_on_a_machine_without_one_names_the_machines_it_has_logs_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # It said "Nix keeps none either (`offload log` asks it)": with --machine Nix is not
    # asked, and the machines that have the log went unsaid, a typo's too.
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    with BuildLogs(tmp_path / "logs", clock=Clock()).open(DRV, "fast") as writer:
        writer.write("built\n")
    name = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-hello-2.12.drv"
    kept = "its logs are kept for fast: give one of those, or no --machine for the newest"
    for machine, hint in (("fsat", f"did you mean fast? {kept}"), ("slow", kept)):
        assert run_main(monkeypatch, ["log", DRV, "--machine", machine]) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"error: no build log kept for {name} on {machine}",
            f"hint: {hint}",
        ]
    assert run_main(monkeypatch, ["log", DRV.replace("hello", "other"), "--machine", "fast"]) == 1
    assert capsys.readouterr().err.splitlines()[1] == (
        # It said "offload keeps none of its builds' logs on any machine": offload's builds?
        "hint: offload keeps no log of it from any machine;"
        " without --machine, `offload log` asks Nix for its own"
    )


def test_no_log_is_kept_where_the_state_directory_cannot_be(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.delenv("OFFLOAD_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "a-file"))
    assert run_main(monkeypatch, ["log", DRV]) == 1  # real nix-store --read-log: none either
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: no build log kept for 0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-hello-2.12.drv"
    assert len(err) == 2


def test_log_of_a_path_unknown_to_nix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    bogus = "/nix/store/00000000000000000000000000000000-offload-no-such-path"
    assert run_main(monkeypatch, ["log", bogus]) == 1  # real nix-store --query --deriver
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: cannot find the derivation of {bogus}: path '{bogus}' is not valid"
    assert err[1].startswith("hint: ")


def test_log_prints_the_newest_build_and_strips_for_non_terminals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    clock = Clock()
    logs = BuildLogs(tmp_path / "logs", clock=clock)
    with logs.open(DRV, "slow") as writer:
        writer.write("old")
    clock.now += 1
    with logs.open(DRV, "fast") as writer:
        writer.write("\x1b[1mnew\x1b[0m\rline")
    assert run_main(monkeypatch, ["log", DRV]) == 0
    assert capsys.readouterr().out == "line\n"
    assert run_main(monkeypatch, ["log", DRV, "--machine", "slow"]) == 0
    assert capsys.readouterr().out == "old\n"


def test_a_log_of_an_attempt_that_did_not_end_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    logs = BuildLogs(tmp_path / "logs")
    with logs.open(DRV, "fast") as writer:
        writer.write("half way")
    kept = logs.kept(DRV)
    kept.rename(kept.with_name(kept.name.removesuffix(".log") + STOPPED))  # as a stopped copy's
    assert run_main(monkeypatch, ["log", DRV]) == 0
    said = capsys.readouterr()
    assert said.out == "half way\n"
    assert said.err.startswith("note: this attempt on fast did not run to its end")
    with logs.open(DRV, "slow") as writer:  # an attempt that ran to its end: no note
        writer.write("whole")
    assert run_main(monkeypatch, ["log", DRV]) == 0
    assert capsys.readouterr() == ("whole\n", "")


class Terminal(io.StringIO):
    @override
    def isatty(self) -> bool:
        return True


def test_log_of_an_output_path_goes_through_its_deriver(tmp_path: Path) -> None:
    logs = BuildLogs(tmp_path, clock=Clock())
    with logs.open(DRV, "fast") as writer:
        writer.write("\x1b[1mbold\x1b[0m")
    out_path = "/nix/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-hello-2.12"
    answer = Completed(("nix-store",), 0, DRV + "\n", "")
    with mock.patch("offload.cli.log.run", autospec=True, return_value=answer) as run:
        out = Terminal()
        assert log_cli.show_log(out_path, logs=logs, out=out) == 0
    run.assert_called_once_with(["nix-store", "--query", "--deriver", out_path], check=False)
    assert out.getvalue() == "\x1b[1mbold\x1b[0m\n"  # a terminal gets the log as kept


def test_log_of_a_path_with_no_deriver(tmp_path: Path) -> None:
    answer = Completed(("nix-store",), 0, "unknown-deriver\n", "")
    with (
        mock.patch("offload.cli.log.run", autospec=True, return_value=answer),
        pytest.raises(OffloadError, match="has no known deriver"),
    ):
        log_cli.show_log("/nix/store/x-src", logs=BuildLogs(tmp_path))


# --- logs where Nix keeps them ----------------------------------------------------------------


class Discard(io.TextIOBase):
    """stdout into a pipe nobody keeps: counts what it is given."""

    def __init__(self) -> None:
        self.chars = 0

    @override
    def write(self, text: str) -> int:
        self.chars += len(text)
        return len(text)


def test_a_huge_log_is_shown_without_being_held_whole(tmp_path: Path) -> None:
    # 64 MiB of log: read whole it took its size several times over (bytes, text, cleaned).
    logs = BuildLogs(tmp_path, clock=Clock())
    line = "x" * 1023
    with logs.open(DRV, "fast") as writer:
        for _ in range(64 * 1024):
            writer.write(line)
    out = Discard()
    tracemalloc.start()
    try:
        assert log_cli.show_log(DRV, logs=logs, out=out) == 0  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.chars == 64 * 1024 * 1024
    assert peak < 4 * 1024 * 1024


def test_a_huge_log_nix_kept_is_shown_without_being_held_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # offload kept none: Nix's own (its bzip2 file, read by the real `nix-store --read-log`).
    monkeypatch.setenv("NIX_LOG_DIR", str(tmp_path / "nix"))
    kept = nix_log_path(DRV)
    kept.parent.mkdir(parents=True)
    with bz2.open(kept, "wt") as log:
        for _ in range(32 * 1024):
            log.write("y" * 1023 + "\n")
    out = Discard()
    tracemalloc.start()
    try:
        assert log_cli.show_log(DRV, logs=BuildLogs(tmp_path / "none"), out=out) == 0  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.chars == 32 * 1024 * 1024
    assert peak < 4 * 1024 * 1024
    with pytest.raises(OffloadError):  # neither offload nor Nix has one
        log_cli.show_log(DRV.replace("hello", "other"), logs=BuildLogs(tmp_path / "none"))


def test_a_log_nix_kept_shows_a_progress_bar_s_redraws_as_its_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read in Popen's text mode, each "\r" ended a line: every redraw of a bar was a line,
    # where the same log kept by offload shows the last one.
    monkeypatch.setenv("NIX_LOG_DIR", str(tmp_path / "nix"))
    kept = nix_log_path(DRV)
    kept.parent.mkdir(parents=True)
    with bz2.open(kept, "wt", newline="") as log:
        log.write("10%\r50%\r100%\ndone\n")
    out = io.StringIO()
    assert log_cli.show_log(DRV, logs=BuildLogs(tmp_path / "none"), out=out) == 0
    assert out.getvalue() == "100%\ndone\n"


def test_a_reader_that_stops_early_stops_the_command() -> None:
    lines = output_lines(["yes", "endless"])
    assert lines is not None
    assert next(lines) == "endless\n"
    lines.close()  # as `offload log | head` ends it
    assert output_lines(["sh", "-c", "exit 3"]) is None


def test_a_drv_path_is_read_as_nix_store_l_reads_it(tmp_path: Path) -> None:
    # `x.drv/` (a shell's completion of a directory-like name) and a link to a .drv were taken
    # for output paths: "has no known deriver", where `nix-store -l` shows the log.
    file = nix_file(tmp_path, 'mk "logged" "echo hi > $out" {}')
    drv = subprocess.run(
        ["nix-instantiate", str(file)], capture_output=True, text=True, check=True
    ).stdout.strip()
    logs = BuildLogs(tmp_path / "logs", clock=Clock())
    with logs.open(drv, "fast") as writer:
        writer.write("the log")
    (tmp_path / "drv-link").symlink_to(drv)
    for target in (drv + "/", drv + "//", str(tmp_path / "drv-link")):
        out = io.StringIO()
        assert log_cli.show_log(target, logs=logs, out=out) == 0
        assert out.getvalue() == "the log\n"


def test_a_path_that_looks_like_an_option_is_asked_of_nix_as_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `offload log -- --` gave nix-store the word `--`: it asked about no path, and offload
    # said "-- has no known deriver: it was added to the store, not built".
    monkeypatch.chdir(tmp_path)
    assert run_main(monkeypatch, ["log", "--", "--"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        f"error: cannot find the derivation of --: getting status of '{tmp_path}/--':"
        " No such file or directory"
    )
