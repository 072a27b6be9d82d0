"""What the command line does with input it cannot use: one `error:` line and a hint, exit 1,
never a traceback, and a quiet end when stdout's reader goes away (issue #14)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from offload.cli import main, root_parser
from offload.cli.completion import walk
from offload.history.db import History

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "offload" / "data" / "sample.json"


def _offload(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own exits (usage errors, --help)
        status = int(exit_.code or 0)
    return status, capsys.readouterr().err


def _one_error(err: str) -> None:
    lines = err.splitlines()
    assert lines[0].startswith("error: "), err
    assert all(line.startswith(("error: ", "hint: ")) for line in lines), err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [["nosuchcommand"], ["build", "--frobnicate"], ["simulate"], ["simulate", "x", "--noise", "a"]],
)
def test_usage_errors_exit_1_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = _offload(argv, capsys)
    assert status == 1
    _one_error(err)
    assert "hint: see offload" in err


# Every command that runs something (no subcommands of its own), as words after `offload`.
COMMANDS = [c.path for c in walk(root_parser()).all() if c.path and not c.subcommands]


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_an_unknown_option_names_the_command_it_was_given_to(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = _offload([*path, "--frobnicate"], capsys)
    assert status == 1
    _one_error(err)
    prog = " ".join(("offload", *path))
    # Unknown to it, or (before it is seen) a missing argument: either way, its own help.
    assert err.startswith(f"error: {prog}: "), err
    assert err.endswith(f"hint: see {prog} --help\n"), err


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "offload")
def test_an_abbreviated_option_is_refused_not_taken_for_the_option(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse took `--hel` for --help (and `--max-j 2` for --max-jobs, below): nix-build
    # refuses a flag that is not spelled whole ("unrecognised flag"), and so does offload.
    status, err = _offload([*path, "--hel"], capsys)
    assert status == 1
    _one_error(err)
    assert err.endswith(f"hint: see {' '.join(('offload', *path))} --help\n"), err


@pytest.mark.parametrize(
    ("argv", "prog", "word"),
    [
        (["build", "--max-j", "2"], "offload build", "--max-j"),
        (["build", "--builder", "x"], "offload build", "--builder"),
        (["build", "--keep-go"], "offload build", "--keep-go"),
        (["build", "--show-tr=1"], "offload build", "--show-tr=1"),
        # Given to offload before the command (as --traceback is), not to the command after
        # it; with none after it, argparse said only that a command is required.
        (["--trace", "status"], "offload", "--trace"),
        (["--vers"], "offload", "--vers"),
        (["--traceback", "--hel"], "offload", "--hel"),
        (["history", "--las", "3"], "offload history", "--las 3"),
        (["setup", "client", "--syst", "x86_64-linux", "h"], "offload setup client", "--syst"),
        (["fleet", "up", "--di", "d"], "offload fleet up", "--di d"),
    ],
)
def test_an_abbreviated_option_is_an_unrecognized_argument(
    argv: list[str], prog: str, word: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from offload.cli import _parse

    with pytest.raises(SystemExit) as exit_:
        _parse(argv)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    _one_error(err)
    assert err == (f"error: {prog}: unrecognized arguments: {word}\nhint: see {prog} --help\n"), err


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["statuss"], "hint: did you mean status? see offload --help\n"),
        (["machines", "convrt"], "hint: did you mean convert? see offload machines --help\n"),
        (["zzz"], "hint: see offload --help\n"),
    ],
)
def test_a_mistyped_command_is_named_with_the_one_meant(
    argv: list[str], hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = _offload(argv, capsys)
    assert status == 1
    _one_error(err)
    assert err.endswith(hint), err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["build", "-o", ""], "an empty name for the result link"),
        (["log", ""], "error: an empty path"),
        (["setup", "key", ""], "argument PATH: an empty path"),
        (["doctor", "--timeout", "0"], "more than 0 and at most 600 seconds"),
        (["demo", "--dir", ""], "an empty path"),
        (["fleet", "up", "--dir", ""], "an empty path"),
    ],
)
def test_an_empty_path_is_refused_not_taken_as_here(
    argv: list[str],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Path("") is the current directory: a result link, a key or a log looked up there.
    monkeypatch.chdir(tmp_path)
    status, err = _offload(argv, capsys)
    assert status == 1
    _one_error(err)
    assert said in err.splitlines()[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["report", ""], "offload report: argument RUN: an empty run id"),
        (["history", "--run", ""], "offload history: argument --run: an empty run id"),
        (["history", "--machine", ""], "offload history: argument --machine: an empty machine"),
        (["history", "--drv", ""], "offload history: argument --drv: an empty name"),
        (["log", "--machine", "", "x.drv"], "offload log: argument --machine: an empty machine"),
        (["machines", "--reset", ""], "offload machines: argument --reset: names no machine"),
        (["machines", "--reset", " , "], "offload machines: argument --reset: names no machine"),
        (["use", ""], "offload use: argument NAME,...|@TAG: names no machine"),
        (["use", ","], "offload use: argument NAME,...|@TAG: names no machine"),
        # `--for "$DUR"`, DUR unset: the choice was kept for ever, "until cleared".
        (["use", "local", "--for", "", "--builders", ""], "--for '': not a duration"),
        (["doctor", "fast", ""], "offload doctor: argument NAME: names no machine"),
    ],
)
def test_an_empty_name_or_id_is_refused_naming_its_argument(
    argv: list[str],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An unset variable in a script: `report ''` reported the latest run, `history --run ''`
    # matched every run, `machines --reset ''` and `use ''` went on as if nothing was given
    # (`use ''` even kept an empty choice), `doctor ''` blamed an --on never given.
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    status, err = _offload(argv, capsys)
    assert status == 1
    _one_error(err)
    assert err.splitlines()[0].startswith(f"error: {said}"), err
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "picked", [["local"], ["--on", "local"], ["--exclude", "nx-dr-a.invalid,nx-dr-b.invalid"]]
)
def test_doctor_on_no_builder_of_a_pool_with_builders_does_not_ask_for_builders(
    picked: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`offload doctor local` said 'no builders to check', hint 'give them with --builders', with
    two builders given: the pool has them, none was picked."""
    builders = "nx-dr-a.invalid x86_64-linux; nx-dr-b.invalid x86_64-linux"
    status, err = _offload(["doctor", "--builders", builders, *picked], capsys)
    assert status == 1
    _one_error(err)
    assert "no builder to check among those named" in err
    assert "--builders" not in err


def test_a_long_store_path_is_cut_in_the_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _offload(["log", "/nix/store/" + "a" * 5000], capsys)  # Nix echoes it too
    assert status == 1
    _one_error(err)
    assert len(err) < 800


def test_a_pasted_value_is_not_echoed_whole(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _offload(["build", "-j", "9" * 5000], capsys)
    assert status == 1
    _one_error(err)
    assert len(err) < 300


def test_help_still_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = _offload(["simulate", "--help"], capsys)
    assert status == 0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--to", "toml"], "--to: only"),
        (["--from-format", "nixos"], "--from-format: only"),
        (["--newer-nix"], "--newer-nix: only"),
        (["--to", "nix", "--newer-nix"], "--to, --newer-nix: only"),
    ],
)
def test_a_convert_option_without_convert_is_one_line_with_the_command_that_takes_it(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`offload machines --newer-nix` listed the pool as if it was not given; `--to toml` said
    so with no hint."""
    status, err = _offload(["machines", "--builders", "", *flags], capsys)
    assert status == 1
    _one_error(err)
    assert err.startswith(f"error: {named} `offload machines convert` takes")
    assert "hint: offload machines convert --to " in err


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--json"], "--json"),
        (["--wide"], "--wide"),
        (["--reset", "a", "--json"], "--json, --reset"),
    ],
)
def test_a_listing_option_with_convert_is_one_line_not_ignored(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`offload machines convert --to nix --reset a` printed the file and cleared nothing."""
    argv = ["machines", "convert", "--to", "nix", "--builders", "nx-cv-a.invalid", *flags]
    status, err = _offload(argv, capsys)
    assert status == 1
    _one_error(err)
    assert err.startswith(f"error: {named}: not for `offload machines convert`")


def test_status_interval_without_watch_is_refused_not_ignored(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `offload status --interval 5` printed one snapshot, as if --interval was not given.
    status, err = _offload(["status", "--builders", "", "--interval", "5"], capsys)
    assert status == 1
    _one_error(err)
    assert err.startswith("error: --interval: only --watch redraws the status\n")


def test_history_last_with_run_is_refused_not_ignored(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `offload history --run ID --last 1` listed the run whole, as if --last was not given.
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    status, err = _offload(["history", "--run", "abc", "--last", "1"], capsys)
    assert status == 1
    _one_error(err)
    assert err.startswith("error: --last: --run lists one run, whole\n")
    assert not (tmp_path / "history.sqlite").exists()  # refused before anything was opened


ANOTHER_STORE = "use nix-build for another store"


@pytest.mark.parametrize(
    ("flags", "named", "hint"),
    [
        (["--store", "/x"], "--store", ANOTHER_STORE),
        (["--eval-store", "-x"], "--eval-store", ANOTHER_STORE),
        (
            ["--readonly-mode", "--store", "a", "--store", "b"],
            "--readonly-mode and --store",
            ANOTHER_STORE,
        ),
        # Its hint was "use nix-build for another store": it names no store, and nix-build
        # refuses to build with it too.
        (
            ["--readonly-mode"],
            "--readonly-mode",
            "a build writes to the store; nix-instantiate --eval --readonly-mode evaluates",
        ),
    ],
)
def test_a_refused_store_flag_is_named_as_given(
    flags: list[str], named: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each said '--store, --eval-store and --readonly-mode are not supported by offload build'.
    status, err = _offload(["build", "-A", "x", *flags], capsys)
    assert status == 1
    _one_error(err)
    assert err.startswith(f"error: {named}: not supported by offload build, which builds into")
    assert err.endswith(f"\nhint: {hint}\n")


def test_the_log_format_help_says_every_choice(capsys: pytest.CaptureFixture[str]) -> None:
    """It said 'raw: plain lines; bar: live', nothing of bar-with-logs or internal-json."""
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for said in ("bar: the live view without build logs;", "bar-with-logs: with them;"):
        assert said in out
    assert "internal-json: Nix's @nix lines on stderr (for nom --json)" in out


def test_json_and_internal_json_together_are_one_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _offload(["build", "-A", "x", "--json", "--log-format", "internal-json"], capsys)
    assert status == 1
    _one_error(err)
    assert err.startswith("error: --json and --log-format internal-json: choose one\nhint: ")


@pytest.mark.parametrize("command", ["history", "report", "demo", "completion", "simulate"])
def test_a_help_drawn_from_the_docstring_has_no_source_markup(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`offload history --help` said '``--run``, ``--machine`` and ``--drv``' and named
    '``offload.cli.history_file``', a module of offload's source (simulate's --policy too)."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "``" not in out
    assert not re.search(r"\boffload\.[a-z_]+\.", out)  # a module path (offload.cli.x)
    assert "::\n" not in out


def test_deeply_nested_json_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    status, err = _offload(["simulate", str(deep)], capsys)
    assert status == 1
    _one_error(err)
    assert "nested too deeply" in err


def test_a_utf16_dag_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    utf16 = tmp_path / "dag.json"
    utf16.write_bytes(json.dumps({"nodes": []}).encode("utf-16"))
    status, err = _offload(["simulate", str(utf16)], capsys)
    assert status == 1
    _one_error(err)
    assert "not UTF-8" in err


@pytest.mark.parametrize("noise", ["1e308", "nan", "-1", "inf"])
def test_noise_out_of_range_is_refused(noise: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _offload(["simulate", str(SAMPLE), "--noise", noise], capsys)
    assert status == 1
    _one_error(err)


@pytest.mark.parametrize("slots", ["9" * 5000, "99999999999999999999"])
def test_huge_slot_counts_are_refused_and_not_echoed_whole(
    slots: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = _offload(["simulate", str(SAMPLE), "--machines", f"a:1:{slots}"], capsys)
    assert status == 1
    _one_error(err)
    assert len(err) < 300


def test_an_internal_error_hints_at_the_traceback_option_that_shows_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from offload import cli

    def boom(_args: object) -> int:
        raise RuntimeError("a bug")

    parse = cli._parse

    def parse_to_boom(argv: list[str]) -> object:
        args = parse(argv)
        args.func = boom
        return args

    monkeypatch.setattr(cli, "_parse", parse_to_boom)
    status, err = _offload(["status"], capsys)
    assert status == 1
    _one_error(err)
    assert "error: internal error: RuntimeError: a bug" in err
    assert "hint: run again as `offload --traceback COMMAND ...`" in err
    # Not --debug after the command: offload build passes that one to Nix.
    assert parse(["build", "--debug", "x.nix"]).nix_debug is True
    assert parse(["build", "--debug", "x.nix"]).debug is False
    for flag in ("--traceback", "--debug"):  # --debug before the command: its old name
        status, err = _offload([flag, "status"], capsys)
        assert status == 1
        assert "Traceback (most recent call last)" in err
        assert 'raise RuntimeError("a bug")' in err


@pytest.mark.parametrize("graph", ["absent.json", ".", "not.json"])
def test_a_demo_graph_that_cannot_be_read_is_said_before_any_fleet_starts(
    graph: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not.json").write_text("{not json")
    status, err = _offload(["demo", "--graph", graph, "--dir", str(tmp_path / "fleet")], capsys)
    assert status == 1
    _one_error(err)  # it was an internal error (FileNotFoundError, IsADirectoryError, JSON)
    assert not (tmp_path / "fleet").exists()


def test_a_dash_dash_given_as_an_options_value_is_that_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--since=--` gives the option the value "--"; Python 3.11's argparse made it [], an
    # internal error here, and "the history database is damaged: move the file away" there.
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    History(tmp_path / "state" / "history.sqlite").close()  # a history, of no run
    status, err = _offload(["report", "--hook", "--since=--"], capsys)
    assert status == 1
    _one_error(err)
    assert err.startswith("error: --since '--': not a duration\n")
    status, err = _offload(["history", "--machine=--"], capsys)
    assert status == 1
    assert err.startswith("error: no machine '--' in the history, nor in the pool\n")
    status, err = _offload(["report", "-o=--"], capsys)
    assert status == 1
    assert err.startswith("error: no run in the history\n")


def test_a_simulated_machine_name_is_one_printable_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `simulate --machines $'a\nb:1:1'` printed the name on two lines in its table.
    dag = tmp_path / "g.json"
    dag.write_text('{"nodes": [{"name": "a", "work": 1}]}')
    status, err = _offload(["simulate", str(dag), "--machines", "a\nb:1:1"], capsys)
    assert status == 1
    assert err.splitlines()[0].startswith("error: --machines: 'a\\nb:1:1' is not name:speed:slots")


def test_simulated_features_split_by_a_comma_say_they_are_joined_by_plus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A tester wrote server:4:2:big-parallel,kvm: "'kvm' is not name:speed:slots...".
    dag = tmp_path / "g.json"
    dag.write_text('{"nodes": [{"name": "a", "work": 1}]}')
    status, err = _offload(["simulate", str(dag), "--machines", "s:4:2:big-parallel,kvm"], capsys)
    assert status == 1
    assert "features are joined by '+'" in err.splitlines()[1]


def test_a_key_under_a_user_that_does_not_exist_is_a_missing_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was an internal error: pathlib could not determine that home directory.
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    status, err = _offload(["machines", "--builders", "ssh://h - ~offloadnouser/k"], capsys)
    assert status == 0, err
    assert "warning: --builders: h: ssh key file ~offloadnouser/k does not exist" in err
    assert "internal error" not in err


def test_simulate_reads_the_graph_from_standard_input_given_as_dash() -> None:
    # `offload simulate -` said "No such file or directory" and "check the path".
    import subprocess
    import sys

    graph = '{"nodes": [{"name": "a", "work": 1.5}]}'
    done = subprocess.run(
        [sys.executable, "-m", "offload", "simulate", "-", "--json"],
        input=graph, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["makespan"] > 0
