from __future__ import annotations

import base64
import fcntl
import json
import os
import shlex
import shutil
import threading
import time
from pathlib import Path

import pytest

from offload.cli import main
from offload.errors import FleetError
from offload.fleet import DEFAULT_SPECS, MemberSpec, default_fleet_dir, fleet_up
from offload.fleet.manager import _locked
from offload.fleet.records import FleetState, MemberRecord
from offload.fleet.spec import (
    ForcedCommand,
    authorized_keys,
    check_host,
    check_programs,
    client_argv,
    home_to_replace,
    known_hosts_line,
    machines_line,
    member_argv,
    nix_conf,
    speed_text,
    ssh_config,
    sshd_config,
    validate_specs,
)
from offload.procfs import parse_proc_stat

PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIkIuWcCIc92gnUe1CJgB04zoIh42sk/GpRXgorrOQ6q x@y"


@pytest.mark.parametrize(
    ("text", "name", "speed", "jobs"),
    [
        ("fast:4:2", "fast", 4.0, 2),
        ("m-1:1.5", "m-1", 1.5, 1),
        ("solo", "solo", 1.0, 1),
        ("b2:0.25:16", "b2", 0.25, 16),
    ],
)
def test_parse_member_spec(text, name, speed, jobs):
    spec = MemberSpec.parse(text)
    assert (spec.name, spec.speed, spec.jobs) == (name, speed, jobs)
    assert MemberSpec.parse(spec.text) == spec


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":4:2",
        "Fast:1:1",
        "local",
        "localhost:2:2",
        "a_b",
        "-a",
        "a-",
        "a.b",
        "a" * 64,
        "x:fast",
        "x:0",
        "x:-1",
        "x:nan",
        "x:inf",
        "x:1:0",
        "x:1:4294967296",  # past Nix's max-jobs: refused once its sshd ran
        "x:1:1.5",
        "x:1:two",
        "x:1:2:3",
        "x:1:2:bash",
        "x:1:2:serve@pam",
        "x:1:2:serve:5",
    ],
)
def test_invalid_member_specs_are_refused(text):
    with pytest.raises(FleetError) as raised:
        MemberSpec.parse(text)
    assert raised.value.hint, raised.value.message  # `x:0`, `x:1:0`, ... had none


def test_default_members():
    assert [s.text for s in DEFAULT_SPECS] == ["fast:4:2", "medium:2:2", "slow:1:2"]


def test_specs_must_be_unique_and_non_empty():
    with pytest.raises(FleetError, match="twice") as twice:
        validate_specs([MemberSpec("a"), MemberSpec("b"), MemberSpec("a", 2)])
    with pytest.raises(FleetError) as none:
        validate_specs([])
    assert twice.value.hint
    assert none.value.hint


@pytest.mark.parametrize(("speed", "expected"), [(0.2, 1), (1.0, 1), (1.5, 2), (2.4, 2), (4.0, 4)])
def test_nix_speed_is_a_positive_integer(speed, expected):
    assert MemberSpec("m", speed).nix_speed == expected


def test_speed_file_text_reads_as_the_speed():
    for speed in (4.0, 1.5, 0.25):
        assert float(speed_text(speed)) == speed
    assert speed_text(4.0) == "4"  # a shell builder can use it as an integer


def test_check_host_needs_root_on_linux():
    check_host(0, "linux")
    with pytest.raises(FleetError) as info:
        check_host(1000, "linux")
    assert info.value.hint is not None
    assert "root" in info.value.hint
    with pytest.raises(FleetError, match="Linux"):
        check_host(0, "darwin")


def test_a_nix_inside_nix_or_no_sshd_is_said_before_anything_is_made(tmp_path):
    # A member mounts its own store over /nix: NixOS's or the installer's Nix is not there.
    check_programs()  # this host's: Debian's nix-bin and openssh-server
    link = tmp_path / "nix-store"
    link.symlink_to("/nix/store/0000-nix-2.24/bin/nix-store")
    with pytest.raises(FleetError, match=r"this Nix lives in it \(/nix/store/0000-nix-2\.24/"):
        check_programs(find=lambda _: str(link))
    with pytest.raises(FleetError, match="no nix-store is on PATH"):
        check_programs(find=lambda _: None)
    with pytest.raises(FleetError, match="OpenSSH's server at /nonexistent/sshd"):
        check_programs(sshd="/nonexistent/sshd")


def test_up_as_non_root_creates_nothing(tmp_path):
    target = tmp_path / "fleet"
    with pytest.raises(FleetError, match="root"):
        fleet_up(target, DEFAULT_SPECS, euid=1000)
    with pytest.raises(FleetError, match="Linux"):
        fleet_up(target, DEFAULT_SPECS, euid=0, platform="darwin")
    assert not target.exists()


@pytest.mark.parametrize("name", ["with space", "a#b", "q?x", "amp&x", "pct%20"])
def test_a_fleet_dir_its_machines_line_cannot_carry_creates_nothing(tmp_path, name):
    target = tmp_path / name
    with pytest.raises(FleetError, match="machines line") as info:
        fleet_up(target, DEFAULT_SPECS, euid=0, platform="linux")
    assert info.value.hint is not None
    assert not target.exists()


def test_default_fleet_dir_order():
    home = Path("/home/u")
    env = {"OFFLOAD_FLEET_DIR": "/f", "XDG_STATE_HOME": "/s"}
    assert default_fleet_dir(env, home) == Path("/f")
    assert default_fleet_dir({"XDG_STATE_HOME": "/s"}, home) == Path("/s/offload/fleet")
    assert default_fleet_dir({"XDG_STATE_HOME": ""}, home) == home / ".local/state/offload/fleet"


def test_machines_line_has_nix_28_columns():
    spec = MemberSpec("medium", 1.5, 3)
    line = machines_line(spec, "x86_64-linux", Path("/f/client_key"), PUB)
    fields = line.split()
    assert line.endswith("\n")
    assert len(fields) == 8
    uri, systems, key, jobs, speed, features, mandatory, host_key = fields
    # The fleet's own key in the URI: two fleets' members of one name never share slot locks.
    assert uri == "ssh://medium?ssh-key=/f/client_key"
    assert systems == "x86_64-linux"
    assert key == "/f/client_key"
    assert int(jobs) == 3
    assert int(speed) == 2  # Nix 2.8 rejects "1.5"
    assert "big-parallel" in features.split(",")
    assert mandatory == "-"
    decoded = base64.b64decode(host_key, validate=True).decode()
    assert decoded.split() == PUB.split()[:2]


def test_known_hosts_line_is_pinned_to_the_alias():
    assert known_hosts_line("fast", PUB).split() == ["fast", *PUB.split()[:2]]
    with pytest.raises(FleetError):
        known_hosts_line("fast", "garbage")


def test_ssh_config_has_an_alias_per_member_and_checks_host_keys():
    text = ssh_config(Path("/f"), {"fast": 2201, "slow": 2202})
    blocks = {}
    for block in text.split("Host ")[1:]:
        lines = block.strip().splitlines()
        blocks[lines[0]] = dict(line.split(None, 1) for line in lines[1:])
    assert set(blocks) == {"fast", "slow"}
    assert blocks["slow"]["Port"] == "2202"
    assert blocks["fast"]["HostName"] == "127.0.0.1"
    assert blocks["fast"]["HostKeyAlias"] == "fast"
    assert blocks["fast"]["UserKnownHostsFile"] == "/f/known_hosts"
    assert blocks["fast"]["StrictHostKeyChecking"] == "yes"


def test_nix_conf_settings():
    settings = {}
    for line in nix_conf(MemberSpec("m", 2, 5)).splitlines():
        key, _, value = line.partition("=")
        settings[key.strip()] = value.strip()
    assert settings["build-users-group"] == ""
    assert settings["substituters"] == ""
    assert settings["max-jobs"] == "5"


def test_member_argv_quotes_paths():
    root = Path("/tmp/a b/m")
    argv = member_argv(root, root / "sshd_config")
    assert argv[:4] == ["unshare", "-m", "--propagation", "private"]
    words = shlex.split(argv[-1])
    assert "/tmp/a b/m/nix" in words
    assert "/tmp/a b/m/etc-nix" in words
    assert words[-4:] == ["-D", "-e", "-f", "/tmp/a b/m/sshd_config"]
    assert "exec" in words
    assert "/tmp/a b/m/home" not in words


def test_client_argv_mounts_its_own_current_load_and_passes_the_program_on_unchanged():
    argv = client_argv(Path("/tmp/a b/load"), ["offload", "build", "x y.nix"])
    assert argv[:4] == ["unshare", "-m", "--propagation", "private"]
    script = argv[argv.index("-c") + 1]
    assert shlex.split(script)[:4] == [
        "mount",
        "--bind",
        "/tmp/a b/load",
        "/nix/var/nix/current-load",
    ]
    # The program's words are arguments of the shell, never parsed by it.
    assert argv[-4:] == ["sh", "offload", "build", "x y.nix"]


def test_a_clean_home_is_mounted_unless_the_fleet_lives_in_the_login_home():
    assert home_to_replace(Path("/root"), Path("/tmp/fleet")) == Path("/root")
    # The default fleet (~/.local/state/offload/fleet) must stay visible to its own sshd.
    assert home_to_replace(Path("/root"), Path("/root/.local/state/offload/fleet")) is None
    assert home_to_replace(Path("/root"), Path("/root")) is None
    assert home_to_replace(Path("/"), Path("/tmp/fleet")) is None
    assert home_to_replace(Path("/root"), Path("/rootless/fleet")) == Path("/root")


def test_member_argv_mounts_its_own_home_over_the_login_home():
    root = Path("/tmp/a b/m")
    words = shlex.split(member_argv(root, root / "sshd_config", home=Path("/h o/me"))[-1])
    at = words.index("/tmp/a b/m/home")
    assert words[at - 2 : at + 2] == ["mount", "--bind", "/tmp/a b/m/home", "/h o/me"]
    assert at < words.index("exec")


def test_parse_proc_stat_counts_fields_after_the_command_name():
    fields = [str(n) for n in range(4, 53)]
    fields[22 - 4] = "987654"
    text = "4242 (evil) name (x)) S " + " ".join(fields) + "\n"
    assert parse_proc_stat(text) == ("S", 987654)


def test_state_round_trip_and_malformed_state():
    state = FleetState(
        "x86_64-linux",
        (MemberRecord(MemberSpec("fast", 4, 2), 2201, 123, 456, "mnt:[4026532178]"),),
    )
    assert FleetState.from_json(state.to_json()) == state
    with pytest.raises(FleetError):
        FleetState.from_json("{")
    with pytest.raises(FleetError):
        FleetState.from_json('{"version": 99, "system": "x", "members": []}')
    with pytest.raises(FleetError):
        FleetState.from_json('{"version": 1, "system": "x", "members": [{"name": "a"}]}')
    # A pid of Infinity: "internal error: OverflowError" in fleet status and fleet down.
    damaged = json.loads(state.to_json())
    for number in ("Infinity", "1e999"):
        text = json.dumps(damaged).replace('"pid": 123', f'"pid": {number}')
        assert number in text
        with pytest.raises(FleetError, match="is malformed"):
            FleetState.from_json(text)


@pytest.mark.parametrize(
    ("text", "command", "where"),
    [
        ("h:1:1:serve", "nix-store --serve --write", "keys"),
        ("h:1:1:serve@keys", "nix-store --serve --write", "keys"),
        ("h:2:3:serve@sshd", "nix-store --serve --write", "sshd"),
        ("h:1:1:daemon", "nix-daemon --stdio", "keys"),
    ],
)
def test_a_member_may_be_restricted_to_one_command(text, command, where):
    spec = MemberSpec.parse(text)
    assert spec.forced == ForcedCommand(command, where)
    assert MemberSpec.parse(spec.text) == spec
    keys = authorized_keys(spec, PUB + "\n")
    config = sshd_config(Path("/m"), 2200, spec)
    if where == "keys":
        assert keys == f'restrict,command="{command}" {PUB}\n'
        assert "ForceCommand" not in config
    else:
        assert keys == PUB + "\n"
        assert config.startswith(f"ForceCommand {command}\n")


def test_an_unrestricted_member_gets_the_bare_key():
    spec = MemberSpec.parse("h:1:1")
    assert spec.forced is None
    assert authorized_keys(spec, PUB + "\n") == PUB + "\n"
    assert "ForceCommand" not in sshd_config(Path("/m"), 2200, spec)


@pytest.mark.parametrize("command", ['nix-store "x"', "a\nb", "", "x\\y"])
def test_a_forced_command_that_would_break_its_line_is_refused(command):
    with pytest.raises(FleetError):
        ForcedCommand(command)


def test_a_restricted_member_survives_the_state_file():
    spec = MemberSpec.parse("h:1:1:serve@sshd")
    state = FleetState("x86_64-linux", (MemberRecord(spec, 2201, 1, 2, "mnt:[1]"),))
    assert FleetState.from_json(state.to_json()).members[0].spec == spec


@pytest.mark.parametrize(
    ("forced", "scheme"),
    [
        (None, "ssh"),
        ("serve", "ssh"),
        ("serve@sshd", "ssh"),
        ("daemon", "ssh-ng"),
        ("daemon@sshd", "ssh-ng"),
    ],
)
def test_a_member_forced_to_the_daemon_is_listed_as_ssh_ng(forced: str | None, scheme: str) -> None:
    text = "m:1:1" if forced is None else f"m:1:1:{forced}"
    line = machines_line(MemberSpec.parse(text), "x86_64-linux", Path("/f/client_key"), PUB)
    assert line.startswith(f"{scheme}://m?ssh-key=/f/client_key ")


def test_an_untrusted_member_stores_through_a_daemon_that_trusts_nobody():
    spec = MemberSpec.parse("bare:1:1:untrusted")
    assert spec.untrusted
    assert spec.forced is None
    assert spec.text == "bare:1:1:untrusted"
    assert "trusted-users =\n" in nix_conf(spec)
    assert "trusted-users = root\n" in nix_conf(MemberSpec("plain"))
    assert "SetEnv NIX_REMOTE=daemon\n" in sshd_config(Path("/m"), 2200, spec)
    assert "NIX_REMOTE" not in sshd_config(Path("/m"), 2200, MemberSpec("plain"))
    script = member_argv(Path("/m"), Path("/m/c"), daemon=True)[-1]
    assert script.index("nix-daemon") < script.index("exec /usr/sbin/sshd")
    assert "nix-daemon" not in member_argv(Path("/m"), Path("/m/c"))[-1]
    record = MemberRecord(spec, 2200, 1, 2, "mnt:[1]")
    assert MemberRecord.from_dict(record.as_dict()) == record


def test_a_failed_start_stops_every_member_it_started_even_past_one_that_will_not_stop(
    tmp_path, monkeypatch, caplog
):
    from offload.errors import FleetError
    from offload.fleet import manager
    from offload.fleet.records import MemberRecord

    tried: list[str] = []

    def stop_member(fleet_dir, record):
        tried.append(record.spec.name)
        if record.spec.name == "a":
            raise FleetError("processes 1 of fleet member a did not stop")

    monkeypatch.setattr(manager, "stop_member", stop_member)
    records = [
        MemberRecord(MemberSpec.parse(f"{n}:1:1"), 2200 + i, 100 + i, 1, "mnt:[1]")
        for i, n in enumerate("ab")
    ]
    manager._stop_started(tmp_path, records)
    assert tried == ["a", "b"]  # b is stopped although a would not
    assert "fleet member a did not stop" in caplog.text


@pytest.mark.parametrize("command", [["fleet", "up"], ["fleet", "status"], ["demo"]])
def test_the_dir_help_names_the_state_directory_the_default_fleet_follows(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`offload demo` put its fleet in $OFFLOAD_STATE_DIR/fleet while `--dir`'s help named only
    $OFFLOAD_FLEET_DIR and $XDG_STATE_HOME: the fleet was not where the help said."""
    assert default_fleet_dir({"OFFLOAD_STATE_DIR": "/st"}, Path("/home/u")) == Path("/st/fleet")
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "$OFFLOAD_FLEET_DIR, else the state directory's: $OFFLOAD_STATE_DIR/fleet" in help_text


def test_a_lock_on_a_fleet_directory_removed_meanwhile_is_let_go(tmp_path):
    # `down --purge` removes the directory it holds: an `up` waiting on it held a lock on a
    # removed directory, and a third one took the path's new directory alongside it.
    fleet_dir = tmp_path / "f"
    holding, done = threading.Event(), threading.Event()

    def up() -> None:
        with _locked(fleet_dir):
            holding.set()
            done.wait(30)

    with _locked(fleet_dir):
        number = f":{fleet_dir.stat().st_ino} "
        waiting = threading.Thread(target=up)
        waiting.start()
        # Until it waits on the lock: /proc/locks shows a blocked flock as "-> FLOCK".
        deadline = time.monotonic() + 30
        while not any("->" in line and number in line for line in _proc_locks()):
            assert waiting.is_alive()
            assert time.monotonic() < deadline, "the waiter never waited on the lock"
        shutil.rmtree(fleet_dir)
        fleet_dir.mkdir()  # what another up makes meanwhile
    assert holding.wait(30)
    third = os.open(fleet_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BlockingIOError):  # the waiter holds the new directory's lock
            fcntl.flock(third, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(third)
        done.set()
        waiting.join(timeout=30)


def _proc_locks() -> list[str]:
    with open("/proc/locks") as locks:  # noqa: PTH123
        return locks.read().splitlines()
