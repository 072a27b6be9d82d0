"""An error is one line whatever it quotes: a path, a name or a value with a line break or
another control character in it is said escaped, not spread over lines of the terminal."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from offload.cli import _failed as cli_failed
from offload.cli import main


def _lines(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own exits
        status = int(exit_.code or 0)
    assert status == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines, "no error said"
    assert all(line.startswith(("error: ", "hint: ")) for line in lines), lines
    assert all(line.isprintable() for line in lines), lines
    return lines


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        # A DAG file, an offload.toml, a fleet directory whose names hold a line break
        (["simulate", "a\nb"], "a\\nb: cannot read DAG file"),
        (["machines", "--builders", "", "--config", "a\nb"], "a\\nb: no such file"),
        (["fleet", "env", "--dir", "/nonexistent/a\nb"], "no fleet in /nonexistent/a\\nb"),
        # A run id with a terminal's escape sequence, and one that was no UTF-8
        (["report", "\x1b[2J", "--daemon"], "'\\x1b[2J': offload-hook's builds are no run"),
        (["simulate", "/nonexistent/\udcff"], "/nonexistent/\\xff: cannot read DAG file"),
    ],
    ids=["dag", "config", "fleet-dir", "escape", "not-utf8"],
)
def test_a_control_character_in_what_an_error_quotes_is_escaped(
    argv: list[str],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    lines = _lines(argv, capsys)
    assert said in lines[0], lines


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDtRv6kpQ3Yc3oFsrnzH2Ka3YaMW0OqgPjPzVGQQ5mJZ me"


@pytest.mark.parametrize(
    "argv",
    [["report", "-o"], ["setup", "key"], ["setup", "builder", "--key", KEY, "--write"]],
    ids=["report", "setup-key", "setup-builder"],
)
def test_a_path_the_system_refuses_is_an_error_naming_it(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A name longer than the file system takes (ENAMETOOLONG) was an "internal error" to
    # report: Path.exists() and is_dir() raise it, where they answer False for a missing one.
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    long = str(tmp_path / ("x" * 300))
    lines = _lines([*argv, long], capsys)
    assert lines[0].startswith(f"error: cannot use {long}"), lines  # or a file in it
    assert lines[0].endswith(": File name too long"), lines
    assert lines[1:] == ["hint: check that path (given, or where offload keeps its state)"]


@pytest.mark.parametrize(
    "spec",
    ["ssh://h\0x x86_64-linux", "ssh://h x86_64-linux /key\0x", "ssh://h?remote-store=%00"],
    ids=["uri", "key", "parameter"],  # a parameter's %00 passed, and ssh could not start
)
@pytest.mark.parametrize("command", [["status"], ["doctor", "--timeout", "1"]])
def test_a_machine_with_a_nul_byte_is_left_out_with_a_warning(
    spec: str,
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A machines file may hold a NUL; no program can be given it and no file named by it:
    # status (its slot lock is named after the URI), doctor and build were internal errors
    # ("ValueError: embedded null byte").
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    main([*command, "--builders", spec])
    err = capsys.readouterr().err
    assert "internal error" not in err, err
    assert "holds a NUL byte, which no program or file name can hold; not used" in err, err


def test_an_include_named_with_a_nul_byte_is_an_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # "internal error: ValueError: embedded null byte".
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    machines = tmp_path / "machines"
    machines.write_bytes(b"ssh://h\n@/tmp/x\0y\n")
    assert main(["machines", "--builders", f"@{machines}"]) == 1
    err = capsys.readouterr().err
    assert (
        f"error: {machines}:2: cannot read machines file /tmp/x\\x00y: its name holds a NUL" in err
    )


@pytest.mark.parametrize("host", ["a..b", "a" * 64 + ".example"], ids=["empty-label", "long-label"])
def test_doctor_says_a_host_name_dns_cannot_look_up_as_its_resolve_check(
    host: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The lookup's encoding of the name (IDNA) refused it with a UnicodeError: an internal
    # error, where a name that does not resolve is doctor's "resolve" row.
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    assert main(["doctor", "--builders", f"ssh://{host} x86_64-linux", "--timeout", "1"]) == 1
    out, err = capsys.readouterr()
    assert "internal error" not in err, err
    assert "does not resolve: not a host name DNS can look up" in out, out


SAMPLE = str(Path(__file__).resolve().parents[2] / "src" / "offload" / "data" / "sample.json")


@pytest.mark.parametrize(
    "argv",
    [
        ["/nonexistent/g.json"],
        [SAMPLE, "--noise", "-1"],
        [SAMPLE, "--machines", ","],
        [SAMPLE, "--machines", "a:x:1"],
        [SAMPLE, "--machines", "a:0:1"],
        [SAMPLE, "--machines", "a:1:1,a:1:1"],
        [SAMPLE, "--machines", "a:1:0"],
    ],
    ids=["missing", "noise", "none", "speed-word", "speed-0", "twice", "no-slot"],
)
def test_simulate_s_errors_say_what_to_give(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Each was an error line with no hint.
    lines = _lines(["simulate", *argv], capsys)
    assert len(lines) == 2, lines
    assert lines[1].startswith("hint: "), lines


def _setup_client_on(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> list[str]:
    """`offload setup client`'s lines with ``path`` as the whole PATH (its ssh-keyscan)."""
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "key").write_text("")
    monkeypatch.setenv("PATH", str(path))
    return _lines(["setup", "client", "127.0.0.1:1", "--identity", str(tmp_path / "key")], capsys)


def test_a_program_that_is_not_there_is_said_with_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `setup client` with no ssh-keyscan on PATH said "cannot run ssh-keyscan" with no hint.
    from offload.errors import TransportError
    from offload.process import run

    lines = _setup_client_on(tmp_path / "no-bin", tmp_path, monkeypatch, capsys)
    assert lines == [
        "error: cannot run ssh-keyscan: No such file or directory",
        "hint: install OpenSSH (Debian: apt-get install openssh-client)",
    ]
    with pytest.raises(TransportError) as raised:
        run(["offload-no-such-program"])
    assert raised.value.hint == "install offload-no-such-program, or put it on PATH"


@pytest.mark.parametrize(
    "argv",
    [
        ["builder", "--key", KEY, "--write", "{file}/out"],
        ["builder", "--key", "@{binary}"],
        ["client", "h", "--timeout", "nan"],
    ],
    ids=["write-under-a-file", "key-not-utf8", "timeout"],
)
def test_setup_s_errors_say_what_to_give(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each was an error line with no hint.
    (tmp_path / "file").write_text("")
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    names = {"file": tmp_path / "file", "binary": tmp_path / "binary"}
    lines = _lines(["setup", *(word.format(**names) for word in argv)], capsys)
    assert len(lines) == 2, lines
    assert lines[1].startswith("hint: "), lines


def test_a_program_that_is_there_but_cannot_be_run_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A non-executable ssh-keyscan first on PATH: "Permission denied", and the hint said to
    # install OpenSSH, which is installed.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh-keyscan").write_text("#!/bin/sh\n")
    (bin_dir / "ssh-keyscan").chmod(0o644)
    lines = _setup_client_on(bin_dir, tmp_path, monkeypatch, capsys)
    assert lines == [
        "error: cannot run ssh-keyscan: Permission denied",
        "hint: make ssh-keyscan executable for this user (chmod +x), or put another first on PATH",
    ]


def test_an_error_of_a_call_on_a_file_descriptor_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # OSError's filename is the descriptor's number for a call on one (os.utime(fd)): the error
    # printer itself raised TypeError on os.fsdecode(999).
    status = cli_failed(argparse.Namespace(debug=False), OSError(9, "Bad file descriptor", 999))
    assert status == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: cannot use file descriptor 999: Bad file descriptor"


def test_an_argument_list_too_long_is_said_so_not_as_a_program_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # E2BIG from exec: "cannot run nix-instantiate: Argument list too long", hint: install Nix.
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    expression = "1" + " " * 200_000  # one argument past Linux's 128 KiB for one
    lines = _lines(["build", "--builders", "", "-E", expression], capsys)
    assert lines[0].startswith("error: cannot run nix-instantiate: Argument list too long ("), lines
    assert lines[0].endswith(" arguments, the longest 200,001)"), lines
    assert lines[1] == (
        "hint: one argument may be 128 KiB at most, and all of them with the environment"
        " `getconf ARG_MAX` bytes: give less at once (a long -E expression: in a file), or"
        " unset large environment variables"
    )


def test_a_removed_working_directory_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `cd dir; rm -r dir; offload build ...`: an internal error with a traceback hint.
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "gone").mkdir()
    monkeypatch.chdir(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    for argv in (["build", "--builders", ""], ["machines", "--builders", ""], ["status"]):
        assert _lines(argv, capsys) == [
            "error: the working directory no longer exists (it was removed)",
            "hint: cd into a directory that exists, and run the command again",
        ], argv


def test_a_program_that_is_no_program_or_a_directory_gone_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both had the hint to install OpenSSH (or the program), which was installed.
    from offload.errors import TransportError
    from offload.process import run

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh-keyscan").write_bytes(b"\x7fELF not this machine's\n")
    (bin_dir / "ssh-keyscan").chmod(0o755)
    assert _setup_client_on(bin_dir, tmp_path, monkeypatch, capsys) == [
        "error: cannot run ssh-keyscan: Exec format error",
        "hint: the ssh-keyscan first on PATH is no program this machine runs: reinstall it",
    ]
    with pytest.raises(TransportError) as raised:
        run(["true"], cwd=tmp_path / "gone")
    assert raised.value.message == f"cannot run true in {tmp_path}/gone: No such file or directory"
    assert raised.value.hint == "that directory must exist and be searchable by this user"
