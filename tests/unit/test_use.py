"""`offload use`: the choice file and durations."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from offload.errors import ConfigError
from offload.paths import SYSTEM_STATE_DIR
from offload.slots import SlotLocks
from offload.use import Choice, clear_choice, parse_duration, read_choice, write_choice


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h30m", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "m", "1x", "-5m", "1h 2m"])
def test_bad_durations_are_one_line_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0s", "0h0m"])
def test_a_duration_of_zero_is_said_as_such(text: str) -> None:
    # It was "'0s': not a duration", hint "write it as 90s, 30m, 2h or 1h30m": it is one.
    with pytest.raises(ConfigError, match=f"'{text}': a duration of 0$") as raised:
        parse_duration(text, "--since")
    assert raised.value.hint == "give one longer than 0s"


def test_choice_round_trip_expiry_and_clear(tmp_path: Path) -> None:
    write_choice(tmp_path, Choice(("fast", "@gpu"), since=100.0, until=200.0))
    assert (tmp_path / "use.json").stat().st_mode & 0o777 == 0o644
    choice = read_choice(tmp_path, now=150.0)
    assert choice is not None
    assert choice.machines == ("fast", "@gpu")
    assert read_choice(tmp_path, now=250.0) is None
    assert clear_choice(tmp_path)
    assert read_choice(tmp_path, now=150.0) is None
    assert not clear_choice(tmp_path)


def test_unreadable_choice_is_no_choice(tmp_path: Path) -> None:
    (tmp_path / "use.json").write_text("{not json")
    assert read_choice(tmp_path, now=0.0) is None


@pytest.mark.parametrize("machines", ['"fast"', '["fast", 1]', '{"fast": 1}'])
def test_a_choice_not_a_list_of_names_is_no_choice(tmp_path: Path, machines: str) -> None:
    # "fast" was read as the machines f, a, s and t, and every real one shown as not chosen.
    (tmp_path / "use.json").write_text(f'{{"machines": {machines}, "since": 0}}')
    assert read_choice(tmp_path, now=0.0) is None


@pytest.mark.parametrize("until", ["1e300", "Infinity", "NaN"])
def test_a_choice_until_past_any_date_is_no_choice(tmp_path: Path, until: str) -> None:
    # Not offload's: `offload use` and `offload status` failed on it (timestamp out of range).
    text = f'{{"machines": ["fast"], "since": 0, "until": {until}}}'
    (tmp_path / "use.json").write_text(text)
    assert read_choice(tmp_path, now=0.0) is None


def test_the_longest_duration_is_one_a_date_can_show() -> None:
    assert parse_duration("999999d") == 999999 * 86400
    assert parse_duration("9999999s") == 9999999  # 115 days: it was "not a duration"
    with pytest.raises(ConfigError, match="--for '999999d999999d': longer than 1000000 days") as e:
        parse_duration("999999d999999d")
    assert e.value.hint  # every mistake has its hint (a tester: this one had none)


def test_probe_sees_held_slots_and_their_expected_ends(tmp_path: Path) -> None:
    locks = SlotLocks(tmp_path)
    assert locks.probe("ssh:__b", 2).free == 2
    fd = locks.try_acquire("ssh:__b", 2, until=1234.5)
    assert fd is not None
    try:
        probe = locks.probe("ssh:__b", 2)
        assert (probe.free, probe.busy_ends) == (1, (1234.5,))
    finally:
        import os

        os.close(fd)
    assert locks.probe("ssh:__b", 2).free == 2


def test_a_state_directory_named_on_purpose_is_the_only_one_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from offload.cli import use as use_cli

    system = tmp_path / "system"
    system.mkdir()
    monkeypatch.setattr(use_cli, "SYSTEM_STATE_DIR", system)  # as root: writable, taken too
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.delenv("OFFLOAD_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert use_cli._places() == [tmp_path / "xdg" / "offload", system]
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "mine"))
    assert use_cli._places() == [tmp_path / "mine"]


@pytest.mark.parametrize("earlier", [None, b'{"machines": ["fast"], "since": 1.0, "until": null}'])
def test_a_choice_one_place_cannot_take_leaves_every_place_as_it_was(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    earlier: bytes | None,
) -> None:
    from offload.cli import main

    (tmp_path / "a-file").write_text("")
    system = tmp_path / "a-file" / "offload"  # a file in its way: it cannot be made
    monkeypatch.setattr("offload.cli.use.SYSTEM_STATE_DIR", system)
    monkeypatch.setattr("os.geteuid", lambda: 0)  # as root: the system place is written too
    monkeypatch.setenv("OFFLOAD_STATE_DIR", "")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    user = tmp_path / "xdg" / "offload"
    if earlier is not None:
        user.mkdir(parents=True)
        (user / "use.json").write_bytes(earlier)
    assert main(["use", "local", "--for", "1h", "--builders", ""]) == 1
    done = capsys.readouterr()
    assert done.err.splitlines()[0] == (
        f"error: {system}: cannot write the builder choice: Not a directory; nothing was changed"
    )
    assert done.err.splitlines()[1].startswith("hint: as root, `offload use` chooses for")
    assert done.out == ""
    if earlier is None:
        assert list(user.iterdir()) == []
    else:
        assert (user / "use.json").read_bytes() == earlier
        assert [p.name for p in user.iterdir()] == ["use.json"]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--for", "2h"], "error: --for: no builders to use for that long"),
        (["--clear", "local"], "error: --clear takes no builders and no --for"),
        (["--clear", "--for", "2h"], "error: --clear takes no builders and no --for"),
    ],
)
def test_what_use_cannot_honour_is_refused_not_dropped(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    said: str,
) -> None:
    # `use --for 2h` showed the choice and `use --clear local` cleared it, as if the rest
    # had not been given.
    from offload.cli import main

    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    write_choice(tmp_path, Choice(("fast",), since=0.0))
    assert main(["use", *argv]) == 1
    assert capsys.readouterr().err.splitlines()[0] == said
    assert read_choice(tmp_path, now=1.0) == Choice(("fast",), since=0.0)


def test_clear_with_json_prints_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `use --clear --json` printed 'offload-hook uses the whole pool again': no JSON.
    from offload.cli import main

    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    write_choice(tmp_path, Choice(("fast",), since=0.0))
    assert main(["use", "--clear", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {str(tmp_path): None}
    assert read_choice(tmp_path, now=1.0) is None


def test_a_builder_named_twice_is_kept_once_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As `offload build --on fast,fast` builds on fast once: the choice was kept, and shown,
    # with the duplicate.
    from offload.cli import main

    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    assert main(["use", "slow,fast, slow,fast", "--builders", "ssh://fast;ssh://slow"]) == 0
    assert capsys.readouterr().out == f"{tmp_path}: slow,fast (until cleared)\n"
    choice = read_choice(tmp_path, now=time.time())
    assert choice is not None
    assert choice.machines == ("slow", "fast")


_SET = """
import sys
import socket
from pathlib import Path
from offload.use import Choice, set_choice
choice = None if sys.argv[2] == "clear" else Choice(("a",), 0.0, None)
set_choice([Path(sys.argv[1])], choice, lambda place: "")
print((Path(sys.argv[1]) / "use.json").read_text() if choice else "cleared")
"""


@pytest.mark.parametrize("what", ["clear", "write"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_choice_file_that_is_a_fifo_or_device_is_replaced_not_read(
    tmp_path: Path, kind: str, what: str
) -> None:
    # `offload use` read the old file whole first (to put it back if another place failed):
    # a FIFO there blocked it for good, /dev/zero read until memory ran out.
    import os
    import resource
    import subprocess
    import sys

    if kind == "fifo":
        os.mkfifo(tmp_path / "use.json")
    else:
        (tmp_path / "use.json").symlink_to("/dev/zero")
    done = subprocess.run(
        [sys.executable, "-c", _SET, str(tmp_path), what],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-1000:]
    if what == "clear":
        assert done.stdout == "cleared\n"
        assert not (tmp_path / "use.json").exists()
    else:
        assert json.loads(done.stdout)["machines"] == ["a"]


def test_a_user_who_cannot_choose_for_the_daemon_is_told_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not root: the choice goes into the user's state alone, and the nix-daemon's hook reads
    # /var/lib/offload only; nix-build and nixos-rebuild through it took no part of it, unsaid.
    from offload.cli import use as use_cli

    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "daemon.sock"))
    monkeypatch.delenv("OFFLOAD_STATE_DIR", raising=False)
    monkeypatch.setenv("NIX_DAEMON_SOCKET_PATH", str(tmp_path / "daemon.sock"))
    try:
        mine = [tmp_path / "state"]
        assert use_cli._daemon_unchosen(mine)
        use_cli._tell_daemon(mine)
        assert "`sudo offload use ...` chooses for them" in capsys.readouterr().err
        assert not use_cli._daemon_unchosen([*mine, SYSTEM_STATE_DIR])
        monkeypatch.setenv("NIX_DAEMON_SOCKET_PATH", str(tmp_path / "none"))
        assert not use_cli._daemon_unchosen(mine)
    finally:
        listening.close()


@pytest.mark.parametrize(
    ("builders", "why"),
    [
        ("ssh://a.invalid x86_64-linux - 1 1 - - aGVsbG8=", "does not connect to a.invalid"),
        ("ssh://a.invalid x86_64-linux - 0", "a.invalid"),
    ],
    ids=["junk-host-key", "no-jobs"],
)
def test_a_choice_of_no_machine_that_takes_jobs_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    builders: str,
    why: str,
) -> None:
    # It was kept: the hook then declined every build, saying it used a.invalid.
    from offload.cli import main

    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    assert main(["use", "a.invalid", "--builders", builders]) == 1
    err = capsys.readouterr().err
    assert "error: a.invalid: no machine to build on: " in err
    assert why in err
    assert read_choice(tmp_path, now=1.0) is None


def test_a_bad_duration_is_said_before_the_names_are_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `offload use fast --for 2x` with no builders said "no machine named 'fast'", not the
    # duration the command line got wrong (README tester).
    from offload.cli import main

    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("NIX_CONFIG", "builders =")
    assert main(["use", "nx-a", "--for", "2x"]) == 1
    assert capsys.readouterr().err.splitlines()[0] == "error: --for '2x': not a duration"
