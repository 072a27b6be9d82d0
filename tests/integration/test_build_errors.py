"""`offload build` failing: a broken builder, a build timed out, and bad input reported in one
line.

A failure must say what went wrong on stderr, exit non-zero (100 for a failed build, 101 for one
that timed out, 1 for an output Nix rejected, as nix-build), and leave nothing of the failed
work registered in the local store.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from offload.backoff import Health, load_backoff, save_backoff
from tests.helpers.fleets import member_line
from tests.helpers.nix_files import nix_file, out_path, salt_of, valid_locally
from tests.helpers.offload_run import offload, offload_env

GRAPH = """rec {
  dep = mk "dep" "echo dep-${salt} > $out" {};
  top = mk "top" "/bin/cat $dep > $out" { inherit dep; };
  bad = mk "bad" "echo it-broke-${salt} >&2; echo more >&2; exit 3" { inherit dep; };
  silent = mk "silent" "/bin/sleep 30; echo > $out" { inherit dep; };
  noout = mk "noout" "echo > $out" { outputs = [ "out" "dev" ]; };
}
"""


SILENCE_1S = ("--option", "max-silent-time", "1")


def assert_one_line_error(stderr: str) -> None:
    """One error line and at most a hint; warnings about the input may come before them."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    while lines and lines[0].startswith("warning: "):
        lines.pop(0)
    assert lines, "no error shown"
    assert lines[0].startswith("error: "), stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), stderr


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_failing_builder_exits_100_with_its_log_and_registers_nothing(fleet, tmp_path):
    file = nix_file(tmp_path, GRAPH)
    salt = salt_of(file)
    done = offload(
        fleet,
        tmp_path,
        file,
        "-A",
        "bad",
        "--builders",
        f"@{fleet.machines_file}",
        "--on",
        "medium",
    )
    assert done.returncode == 100, done.stderr
    # Its log, once: shown as it ran, and not again as a tail (nix-build shows none then).
    assert done.stderr.count(f"it-broke-{salt}") == 1
    assert "log lines of" not in done.stderr
    assert "error: " in done.stderr
    assert done.stdout == ""
    assert not valid_locally(out_path(file, "bad"))
    assert not (tmp_path / "result").exists()
    hidden = offload(fleet, tmp_path, file, "-A", "bad", "--builders", "", "-Q")
    assert hidden.returncode == 100, hidden.stderr
    # -Q: the log was not shown, so its tail is, as nix-build -Q shows it.
    assert "last 2 log lines of bad:" in hidden.stderr
    assert hidden.stderr.count(f"it-broke-{salt}") == 1


@pytest.mark.parametrize("where", [("--on", "medium"), ("--on", "local", "-j", "1")])
def test_a_silent_build_past_max_silent_time_exits_101(fleet, tmp_path, where):
    # Nix's own setting, given as nix-build takes it; the builder (or the local store) ends
    # the build after a second of silence instead of letting it sleep for 30.
    file = nix_file(tmp_path, GRAPH)
    builders = ("--builders", f"@{fleet.machines_file}")
    done = offload(fleet, tmp_path, file, "-A", "silent", *builders, *where, *SILENCE_1S)
    assert done.returncode == 101, done.stderr
    assert "timed out" in done.stderr.splitlines()[-2], done.stderr  # the error line
    assert not valid_locally(out_path(file, "silent"))


def test_a_missing_output_on_a_builder_exits_1_as_nix_build(fleet, tmp_path):
    # Nix's OutputRejected sets none of nix-build's exit bits (a hash mismatch alone: 102).
    file = nix_file(tmp_path, GRAPH)
    builders = ("--builders", f"@{fleet.machines_file}", "--on", "medium")
    done = offload(fleet, tmp_path, file, "-A", "noout", *builders)
    assert done.returncode == 1, done.stderr
    assert "failed to produce output path for output 'dev'" in done.stderr
    assert not valid_locally(out_path(file, "noout"))


def test_a_missing_file_is_a_one_line_error(fleet, tmp_path):
    done = offload(
        fleet,
        tmp_path,
        tmp_path / "absent.nix",
        "-A",
        "top",
        "--builders",
        f"@{fleet.machines_file}",
    )
    assert done.returncode != 0
    assert_one_line_error(done.stderr)
    assert "absent.nix" in done.stderr


def test_an_unknown_on_name_is_a_one_line_error(fleet, tmp_path):
    file = nix_file(tmp_path, GRAPH)
    done = offload(
        fleet,
        tmp_path,
        file,
        "-A",
        "top",
        "--builders",
        f"@{fleet.machines_file}",
        "--on",
        "nosuch",
    )
    assert done.returncode != 0
    assert_one_line_error(done.stderr)
    assert "nosuch" in done.stderr
    assert not valid_locally(out_path(file, "top"))
    assert not valid_locally(out_path(file, "dep"))


NO_MACHINE = [
    (("--exclude", "local"), "--on/--exclude left out the local machine and every builder"),
    (("-j", "0"), "the local machine takes no jobs and no builder is set"),
    (("-j", "0", "--exclude", "local"), "the local machine takes no jobs"),
    # Builders offload does not connect to were said "no builder is set".
    (
        ("-j", "0", "--builders", "ssh://nx-k.invalid x86_64-linux - 1 1 - - JUNK"),
        (
            "the local machine takes no jobs, and offload does not connect to nx-k.invalid (its"
            " host key is base64 of no ssh key)\nhint: --builders: nx-k.invalid: the host key is"
            " base64 of no ssh public key"
        ),
    ),
    (
        ("-j", "0", "--builders", "ssh://nx$x.invalid x86_64-linux - 1 1"),
        (
            "the local machine takes no jobs, and offload does not connect to nx$x.invalid (its"
            " host name holds '$', which a shell acts on)\nhint: --builders: nx$x.invalid: the"
            " host name 'nx$x.invalid' holds '$'"
        ),
    ),
]


@pytest.mark.parametrize(("picked", "said"), NO_MACHINE)
def test_no_machine_to_build_on_says_why(fleet, tmp_path, picked, said):
    # `--exclude local` with no builders said the local machine takes no jobs (max-jobs is 1).
    file = nix_file(tmp_path, GRAPH)
    done = offload(fleet, tmp_path, file, "-A", "dep", "--builders", "", *picked)
    assert done.returncode == 1
    assert_one_line_error(done.stderr)
    assert f"error: no machine to build on: {said}" in done.stderr
    assert not valid_locally(out_path(file, "dep"))


@pytest.mark.parametrize(("picked", "said"), NO_MACHINE)
def test_machines_says_no_machine_takes_jobs_as_a_build_does(fleet, tmp_path, picked, said):
    # `offload machines -j 0 --builders ''` printed the table's header and nothing else.
    argv = [sys.executable, "-m", "offload", "machines", "--builders", "", *picked]
    env = offload_env(fleet, tmp_path)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0  # Nix takes the spec: a build fails, not the listing
    assert f"warning: no machine to build on: {said}" in done.stderr
    assert "hint: " in done.stderr


J0_ON = "the local machine could, but -j 0 and --on leave it out"


@pytest.mark.parametrize(
    ("fast", "picked", "told"),
    [
        (False, ("-j", "0"), ("the local machine could, but -j 0 leaves it out", "pass -j N")),
        (
            False,
            ("--exclude", "local"),
            (
                "the local machine could, but --exclude local leaves it out",
                "drop --exclude local",
            ),
        ),
        (
            True,
            ("-j", "0", "--on", "nx-arm.invalid"),
            (
                f"{J0_ON}; 'fast' could, but --on/--exclude leaves it out",
                "pass -j N and name `local` with --on; or --on fast, or drop --on/--exclude",
            ),
        ),
    ],
)
def test_a_derivation_only_a_machine_left_out_could_build_says_that_machine(
    fleet, tmp_path, fast, picked, told
):
    # A tester: "add a builder with that system and features" where the one that could was
    # left out by -j 0, --on or --exclude. The pool: a builder of another system (and fast).
    machines = tmp_path / "machines"
    lines = ["ssh://nx-arm.invalid aarch64-linux - 1 1", *([member_line(fleet, "fast")] * fast)]
    machines.write_text("\n".join(lines) + "\n")
    file = nix_file(tmp_path, GRAPH)
    done = offload(fleet, tmp_path, file, "-A", "dep", "--builders", f"@{machines}", *picked)
    assert done.returncode == 1, done.stderr
    error = next(line for line in done.stderr.splitlines() if line.startswith("error: "))
    assert error.startswith("error: no machine can build "), done.stderr
    assert error.endswith(f"; {told[0]}"), done.stderr
    assert f"hint: {told[1]}" in done.stderr
    assert not valid_locally(out_path(file, "dep"))


IDLE = "ssh://nx-idle.invalid - - 0"  # a builder with maxJobs 0: kept, but takes no job


@pytest.mark.parametrize(
    ("picked", "local"),
    [
        (("--on", "nx-idle.invalid"), "--on/--exclude left out the local machine"),
        (("-j", "0"), "the local machine takes no jobs"),
    ],
)
def test_a_builder_with_no_jobs_is_said_as_such(fleet, tmp_path, picked, local):
    # It was said as "--on/--exclude left out ... every builder" (with -j 0: "no builder is
    # set"), as if the builder named were not there.
    said = f"{local}, and nx-idle.invalid takes no jobs (its maxJobs is 0: --builders)"
    file = nix_file(tmp_path, GRAPH)
    done = offload(fleet, tmp_path, file, "-A", "dep", "--builders", IDLE, *picked)
    assert done.returncode == 1
    assert_one_line_error(done.stderr)
    assert f"error: no machine to build on: {said}" in done.stderr
    assert "hint: give it jobs (maxJobs" in done.stderr
    dry = offload(fleet, tmp_path, file, "-A", "dep", "--builders", IDLE, *picked, "--dry-run")
    assert dry.returncode == 0
    assert f"no machine could build it: {said}" in dry.stderr


def test_a_report_on_standard_output_is_refused_before_building(fleet, tmp_path):
    # stdout carries the output paths (or --json's events): the page would be mixed in.
    file = nix_file(tmp_path, GRAPH)
    done = offload(
        fleet, tmp_path, file, "-A", "top", "--builders", f"@{fleet.machines_file}", "--report", "-"
    )
    assert done.returncode == 1
    assert_one_line_error(done.stderr)
    assert "standard output carries the build's output paths" in done.stderr.splitlines()[0]
    assert done.stdout == ""
    assert not (tmp_path / "-").exists()
    assert not valid_locally(out_path(file, "top"))


@pytest.mark.parametrize("form", ["uri-port", "ssh-alias"])
def test_an_unreachable_member_is_a_one_line_error(fleet, tmp_path, closed_port, form):
    file = nix_file(tmp_path, GRAPH)
    env = offload_env(fleet, tmp_path)
    if form == "uri-port":
        uri = f"ssh://root@127.0.0.1:{closed_port}"
    else:
        config = tmp_path / "ssh_config"
        config.write_text(
            f"Host ghost\n  HostName 127.0.0.1\n  Port {closed_port}\n  User root\n"
            f"  IdentityFile {fleet.client_key}\n  BatchMode yes\n  ConnectTimeout 5\n"
        )
        env["NIX_SSHOPTS"] = f"-F {config}"
        uri = "ssh://ghost"
    machines = tmp_path / "machines"
    machines.write_text(f"{uri} {fleet.system} {fleet.client_key} 1 1\n")
    done = offload(
        fleet,
        tmp_path,
        file,
        "-A",
        "top",
        "--builders",
        f"@{machines}",
        "-j",
        "0",
        env=env,
        timeout=30,
    )
    assert done.returncode != 0
    assert_one_line_error(done.stderr)
    assert not valid_locally(out_path(file, "top"))
    assert not valid_locally(out_path(file, "dep"))
    # --json says it down, with why, though the run never opened; stderr is still one line.
    done = offload(
        fleet, tmp_path, file, "-A", "top", "--builders", f"@{machines}", "-j", "0", "--json",
        env=env, timeout=30,
    )  # fmt: skip
    assert done.returncode != 0
    assert_one_line_error(done.stderr)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    name = "ghost" if form == "ssh-alias" else f"127.0.0.1:{closed_port}"
    (down,) = [e for e in events if e["event"] == "machine" and e["state"] == "down"]
    assert down["machine"] == name
    assert "connection refused" in down["message"]
    assert not any(e["event"] == "run_started" for e in events)


def test_a_builder_an_earlier_run_backed_off_is_tried_when_nothing_else_can_build(fleet, tmp_path):
    # Backed off by an earlier run (its fleet down then, up again since): with -j 0 the run
    # stopped at once, "no machine can take them (medium: connection refused ...)".
    machines = tmp_path / "machines"
    machines.write_text(member_line(fleet, "medium") + "\n")
    backoff = tmp_path / "state" / "backoff.json"
    old = "connection refused by 127.0.0.1:22: is sshd running and listening there?"
    save_backoff(backoff, {"medium": Health(2, time.time() + 600, old)}, time.time())
    file = nix_file(tmp_path, GRAPH)
    done = offload(fleet, tmp_path, file, "-A", "dep", "-j0", "--builders", f"@{machines}")
    assert done.returncode == 0, done.stderr
    assert valid_locally(out_path(file, "dep"))
    said = [line for line in done.stderr.splitlines() if "medium" in line]
    assert any(f"backed off after 2 failure(s) in earlier runs: {old}" in line for line in said)
    assert any("tried again before its backoff ends" in line for line in said), done.stderr
    assert load_backoff(backoff, time.time()) == {}  # it built: forgotten


def test_a_backoff_file_that_cannot_be_written_says_so_and_the_run_is_kept(fleet, tmp_path):
    # A directory where backoff.json goes: "the run is not kept: [Errno 21] ..." with no hint,
    # though the run was in the history all the same.
    (tmp_path / "state" / "backoff.json").mkdir(parents=True)
    file = nix_file(tmp_path, GRAPH)
    done = offload(fleet, tmp_path, file, "-A", "dep", "--builders", "")
    assert done.returncode == 0, done.stderr
    backoff = tmp_path / "state" / "backoff.json"
    said = f"warning: {backoff}: the builders' backoff is not kept: Is a directory (hint: "
    assert said in done.stderr
    assert "the run is not kept" not in done.stderr
    env = offload_env(fleet, tmp_path)
    listed = subprocess.run(
        [sys.executable, "-m", "offload", "history", "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)["runs"]) == 1
