"""Every builder left out of a run is seen: why, on stderr, in ``--json`` and in the summary.

Builders next to the shared fleet's real members that cannot be used, each for another reason:
nothing listens on its port (refused); its host name does not resolve; it does not accept the
client's key; the key file the machines line names does not exist, or others may read it (ssh
ignores it; both said too when ssh logs in with another key); it answers with a host key
other than the one pinned for it in the machines file, or than the one the user's own
known_hosts holds for it (a possible man-in-the-middle); the program it is to run is not on its
PATH (said once, naming the builder once); it accepts TCP and then says nothing.
The run still builds everything on the good members and exits 0; the silent one costs it at
most a few seconds.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offload.backoff import reason_line
from offload.build.run import SLOW_GRACE
from offload.fleet import Fleet
from tests.helpers import processes
from tests.helpers.fleets import host_of, machines_lines, member_line
from tests.helpers.nix_files import nix_file, out_path, valid_locally
from tests.helpers.offload_run import events, offload, offload_env, start_offload

GRAPH = """rec {
  dep = mk "dep" "echo dep-${salt} > $out" {};
  top = mk "top" "/bin/cat $dep > $out" { inherit dep; };
}
"""

# A name ssh cannot resolve, found out here, never asking a DNS server (the tests contact only
# loopback addresses): an IPv6 address where only IPv4 is allowed fails in getaddrinfo itself
# ("Could not resolve hostname ::1: Address family for hostname not supported").
_UNRESOLVED = "Host nores\n  HostName ::1\n  AddressFamily inet\n  BatchMode yes\n"

# The target of issue 14: a builder that never answers delays the run at most this much.
SILENT_COST = 3.0
# Closing a run beside such a builder: half the 4 s it once took (2 s for ssh to leave its
# handshake, 2 s more for its readers), with room for a loaded machine.
SILENT_CLOSE = 2.0


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose connections the kernel accepts and nobody ever speaks on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def _host(name: str, port: int, key: Path, known_hosts: Path | None = None) -> str:
    return (
        f"Host {name}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {key}\n"
        f"  IdentitiesOnly yes\n  HostKeyAlias {name}\n  BatchMode yes\n  LogLevel ERROR\n"
        + (
            f"  UserKnownHostsFile {known_hosts}\n  StrictHostKeyChecking yes\n"
            if known_hosts
            else ""
        )
    )


def _pinned(fleet: Fleet, member: str) -> str:
    """The base64 host key column of ``member``'s machines line."""
    return next(cols[7] for cols in machines_lines(fleet) if host_of(cols[0]) == member)


def _setup(fleet: Fleet, tmp_path: Path, closed: int) -> tuple[dict[str, str], Path, Path]:
    """(env, machines file, user known_hosts): fast as it is, and seven broken builders."""
    stranger_key = tmp_path / "stranger_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger_key)], check=True
    )
    port = {m: fleet.member(m).port for m in ("fast", "medium", "slow")}
    slow_key = base64.b64decode(_pinned(fleet, "slow")).decode().strip()
    known_hosts = tmp_path / "user_known_hosts"
    known_hosts.write_text(f"swapped {slow_key}\n")  # the user trusted slow's key for it
    config = tmp_path / "ssh_config"
    config.write_text(
        fleet.ssh_config.read_text()
        + "\n"
        + _host("refused", closed, fleet.client_key)
        + _host("stranger", port["fast"], stranger_key)
        + _host("impostor", port["medium"], fleet.client_key)
        + _host("swapped", port["medium"], fleet.client_key, known_hosts)
        + _host("nokey", port["fast"], tmp_path / "nosuchkey")
        + _host("nonix", port["fast"], fleet.client_key)
        + _UNRESOLVED
    )
    fast = member_line(fleet, "fast")
    system = fleet.system
    machines = tmp_path / "machines"
    machines.write_text(
        f"{fast}\n"
        f"ssh://refused {system} {fleet.client_key} 1 1\n"
        f"ssh://stranger {system} {stranger_key} 1 1 - - {_pinned(fleet, 'fast')}\n"
        # medium answers, with its own key, where slow's is pinned: as a man in the middle would.
        f"ssh://impostor {system} {fleet.client_key} 1 1 - - {_pinned(fleet, 'slow')}\n"
        f"ssh://swapped {system} {fleet.client_key} 1 1\n"
        f"ssh://nokey {system} {tmp_path / 'nosuchkey'} 1 1 - - {_pinned(fleet, 'fast')}\n"
        f"ssh://nores {system} {fleet.client_key} 1 1\n"
        # fast itself, asked to run a program its PATH does not have (as one without Nix).
        f"ssh://nonix?remote-program=nix-store-missing {system} {fleet.client_key} 1 1 - -"
        f" {_pinned(fleet, 'fast')}\n"
    )
    env = offload_env(fleet, tmp_path)
    env["NIX_SSHOPTS"] = f"-F {config}"
    return env, machines, known_hosts


def _down_lines(stderr: str) -> dict[str, str]:
    """Each ``warning: builder 'NAME' is down: WHY`` line, by NAME."""
    found = {}
    for line in stderr.splitlines():
        if line.startswith("warning: builder '") and "' is down: " in line:
            name, _, why = line.removeprefix("warning: builder '").partition("' is down: ")
            found[name] = why
    return found


def _check_reasons(why: dict[str, str], machines: Path, known_hosts: Path) -> None:
    broken = {"refused", "stranger", "impostor", "swapped", "nokey", "nores", "nonix"}
    assert set(why) == broken, why
    assert "connection refused" in why["refused"]
    assert why["refused"].endswith(f"(check {machines}:2, or leave it out with --exclude refused)")
    assert why["nores"].startswith("host name ::1, the ssh config's HostName for nores, does not")
    assert why["nores"].endswith(
        f"(check the ssh config and {machines}:7, or leave it out with --exclude nores)"
    )
    assert "refused the ssh key" in why["stranger"]
    assert "stranger_key.pub" in why["stranger"]
    # A key file that is not there is said to be missing, not refused, with its line.
    assert why["nokey"].startswith(f"ssh key file {machines.parent}/nosuchkey does not exist")
    assert why["nokey"].endswith(f"column 3 of {machines}:6"), why["nokey"]
    for name in ("impostor", "swapped"):
        assert "HOST KEY CHANGED" in why[name]
        assert "man-in-the-middle" in why[name]
    # The fix names the file the user edits, never the one offload made for the run.
    assert f"column 8 of {machines}:4" in why["impostor"]
    assert f"{known_hosts} line 1" in why["swapped"]
    # Said once, naming the builder once: it was "nonix: cannot start ...: nonix closed the
    # connection during the handshake; stderr: ...".
    # The program remote-program= names, not the one it stands for, and the line to mend,
    # not "install Nix ... or name the program with ?remote-program=" (ssh-ng tester).
    assert why["nonix"].startswith(
        f"remote-program=nix-store-missing in {machines}:8 names a program the builder has not ("
    ), why["nonix"]
    assert "nix-store-missing: not found)" in why["nonix"]
    assert why["nonix"].endswith("(`command -v` on the builder)")
    assert "nonix" not in why["nonix"]
    for text in why.values():
        assert "/tmp/ofl-" not in text


def _run_with_broken(
    fleet: Fleet, tmp_path: Path, closed: int, *how: str
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """``offload build`` (with ``how``) on fast and the seven broken builders: it succeeds."""
    file = nix_file(tmp_path, GRAPH)
    env, machines, known_hosts = _setup(fleet, tmp_path, closed)
    args: tuple[str | Path, ...] = (
        file,
        "-A",
        "top",
        "--builders",
        f"@{machines}",
        "-j",
        "0",
        "--no-out-link",
        *how,
    )
    done = offload(fleet, tmp_path, *args, env=env, timeout=90)
    assert done.returncode == 0, done.stderr
    assert valid_locally(out_path(file, "top"))
    return done, machines, known_hosts


def test_builders_left_out_are_told_in_json_and_on_stderr(fleet, tmp_path, closed_port):
    done, machines, known_hosts = _run_with_broken(fleet, tmp_path, closed_port, "--json")
    down = {
        e["machine"]: e["message"]
        for e in events(done.stdout)
        if e["event"] == "machine" and e["state"] == "down"
    }
    _check_reasons(down, machines, known_hosts)
    assert _down_lines(done.stderr) == down
    assert events(done.stdout)[0]["event"] == "run_started"  # who is down follows it
    # Each is remembered backed off with why, and `offload status` says it to the next user.
    status = subprocess.run(
        [sys.executable, "-m", "offload", "status", "--json", "--builders", f"@{machines}"],
        env=offload_env(fleet, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    said = {
        m["name"]: m["backoff"]["reason"]
        for m in json.loads(status.stdout)["machines"]
        if m["backoff"] is not None
    }
    assert said == {name: reason_line(message) for name, message in down.items()}


def test_builders_left_out_are_in_the_plain_lines_and_the_summary(fleet, tmp_path, closed_port):
    done, machines, known_hosts = _run_with_broken(fleet, tmp_path, closed_port)
    lines = done.stderr.splitlines()
    title = lines.index("machines down (7):")
    listed = dict(line.strip().split(": ", 1) for line in lines[title + 1 : title + 8])
    _check_reasons(listed, machines, known_hosts)
    for name in listed:  # and each was told as it happened, by the plain renderer
        assert any(f"] {name}: down until " in line for line in lines[:title]), name


def _first_build_after(
    fleet: Fleet, tmp_path: Path, machines: Path, env: dict[str, str]
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Seconds from starting ``offload build --json`` to its first build starting (on fast),
    and the finished run."""
    file = nix_file(tmp_path, GRAPH, name=f"{machines.name}.nix")
    args = (file, "-A", "top", "--builders", f"@{machines}", "-j", "0", "--json", "--no-out-link")
    started = time.time()
    done = offload(fleet, tmp_path, *args, env=env, timeout=90)
    assert done.returncode == 0, done.stderr
    assert valid_locally(out_path(file, "top"))
    building = [
        e for e in events(done.stdout) if e["event"] == "job_phase" and e["phase"] == "building"
    ]
    assert building[0]["machine"] == "fast"
    return float(building[0]["time"]) - started, done


def _with_silent(fleet: Fleet, tmp_path: Path, port: int) -> tuple[Path, Path, dict[str, str]]:
    """Machines files of fast alone and of fast and ``silent`` (``port``, which never speaks),
    and the environment whose ssh config names it."""
    config = tmp_path / "ssh_config"
    config.write_text(fleet.ssh_config.read_text() + "\n" + _host("silent", port, fleet.client_key))
    fast = member_line(fleet, "fast")
    alone, with_silent = tmp_path / "alone", tmp_path / "with_silent"
    alone.write_text(f"{fast}\n")
    with_silent.write_text(f"{fast}\nssh://silent {fleet.system} {fleet.client_key} 4 8\n")
    env = offload_env(fleet, tmp_path)
    env["NIX_SSHOPTS"] = f"-F {config}"
    return alone, with_silent, env


def test_a_builder_that_never_answers_costs_the_run_seconds(fleet, tmp_path, silent_port):
    alone, with_silent, env = _with_silent(fleet, tmp_path, silent_port)
    baseline, _ = _first_build_after(fleet, tmp_path, alone, env)
    delayed, done = _first_build_after(fleet, tmp_path, with_silent, env)
    # Without waiting for it, the run would have waited out ssh's 10 s connect timeout.
    assert delayed - baseline < SILENT_COST, (baseline, delayed)
    told = [e for e in events(done.stdout) if e["event"] == "machine" and e["machine"] == "silent"]
    assert [e["state"] for e in told] == ["slow"], told
    # The run's first event opens it, though "slow" was known before the executor started.
    assert events(done.stdout)[0]["event"] == "run_started", done.stdout
    assert "warning: builder 'silent' is slow to answer" in done.stderr
    # Closing its connection, still in ssh's handshake, does not wait for it (it once took 4 s).
    assert _closing(done) < SILENT_CLOSE, _closing(done)


def test_a_run_with_nothing_to_build_waits_for_no_builder(
    fleet, tmp_path, silent_port, closed_port
):
    # As nix-build says nothing of its builders then: a no-op run with a builder away (a laptop
    # off the home network) waited out the grace and warned that it was slow to answer, and
    # one that refused it, or was backed off by an earlier run, was said down (a tester: six
    # long lines on every no-op).
    _, machines, env = _with_silent(fleet, tmp_path, silent_port)
    config = Path(env["NIX_SSHOPTS"].removeprefix("-F "))
    config.write_text(config.read_text() + _host("refused", closed_port, fleet.client_key))
    machines.write_text(machines.read_text() + f"ssh://refused {fleet.system} - 1 1\n")
    file = nix_file(tmp_path, GRAPH)
    args = (file, "-A", "top", "--builders", f"@{machines}", "-j", "0", "--json", "--no-out-link")
    built = offload(fleet, tmp_path, *args, env=env, timeout=90)  # refused backed off
    assert built.returncode == 0, built.stderr
    backoff = tmp_path / "state" / "backoff.json"
    assert "refused" in backoff.read_text()
    done = offload(fleet, tmp_path, *args, env=env, timeout=90)
    assert done.returncode == 0, done.stderr
    assert valid_locally(out_path(file, "top"))
    assert not [e for e in events(done.stdout) if e["event"] == "machine"]
    assert "silent" not in done.stderr, done.stderr
    assert "refused" not in done.stderr, done.stderr
    assert not [e for e in events(done.stdout) if e["event"] == "job_phase"]  # nothing built
    (timing,) = [e for e in events(done.stdout) if e["event"] == "timing"]
    marks = dict(timing["marks"])
    assert marks["answered"] - marks["evaluated"] < SLOW_GRACE  # not waited out, only unsaid
    assert "refused" in backoff.read_text()  # kept as it was, for the next run that builds
    reset = [sys.executable, "-m", "offload", "machines", "--builders", f"@{machines}"]
    subprocess.run([*reset, "--reset", "refused"], env=env, check=True, capture_output=True)
    again = offload(fleet, tmp_path, *args, env=env, timeout=90)  # refused asked, and refuses
    assert again.returncode == 0, again.stderr
    assert not [e for e in events(again.stdout) if e["event"] == "machine"]
    assert "refused" not in backoff.read_text()  # not backed off by a run that needed none


def test_a_run_with_nothing_to_build_says_nothing_of_a_builder_that_refused_at_once(
    fleet, tmp_path, closed_port
):
    # Failing before the roots were evaluated, it was never waited for, and the question
    # "anything to build?" was never asked: said down and backed off (a review).
    config = tmp_path / "ssh_config"
    config.write_text(
        fleet.ssh_config.read_text() + "\n" + _host("refused", closed_port, fleet.client_key)
    )
    env = offload_env(fleet, tmp_path)
    env["NIX_SSHOPTS"] = f"-F {config}"
    alone, with_refused = tmp_path / "alone", tmp_path / "with_refused"
    alone.write_text(member_line(fleet, "fast") + "\n")
    with_refused.write_text(f"{alone.read_text()}ssh://refused {fleet.system} - 1 1\n")
    file = nix_file(tmp_path, GRAPH)
    for machines in (alone, with_refused):
        args = (file, "-A", "top", "--builders", f"@{machines}", "-j", "0", "--json")
        done = offload(fleet, tmp_path, *args, "--no-out-link", env=env, timeout=90)
        assert done.returncode == 0, done.stderr
    assert not [e for e in events(done.stdout) if e["event"] == "machine"], done.stdout
    assert "refused" not in done.stderr, done.stderr
    backoff = tmp_path / "state" / "backoff.json"
    assert not backoff.exists() or "refused" not in backoff.read_text()


def _closing(done: subprocess.CompletedProcess[str]) -> float:
    """Seconds from the run's last build ending to its sessions and connections closed."""
    seen = events(done.stdout)
    (timing,) = [e for e in seen if e["event"] == "timing"]
    return float(dict(timing["marks"])["closed"]) - max(
        float(e["finished"]) for e in seen if e["event"] == "job_finished"
    )


def _naming_key(fleet, tmp_path, key):
    """A machines file of the fleet's member fast whose line names ``key`` (column 3)."""
    fields = member_line(fleet, "fast").split()
    fields[2] = str(key)
    machines = tmp_path / "machines"
    machines.write_text(" ".join(fields) + "\n")
    return machines


def _warned_once(fleet, tmp_path, machines, said):
    """A --json run with ``machines`` builds, says ``said`` of fast in one warning line on
    stderr, and as a ``key`` machine event."""
    file = nix_file(tmp_path, GRAPH)
    done = offload(fleet, tmp_path, file, "-A", "top", "--builders", f"@{machines}", "-j", "0",
                   "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"warning: builder 'fast': {said}"]
    told = [e for e in events(done.stdout) if e["event"] == "machine"]
    assert [(e["machine"], e["state"], e["message"]) for e in told] == [("fast", "key", said)]
    assert valid_locally(out_path(file, "top"))


def _plain_run(fleet, tmp_path, machines):
    file = nix_file(tmp_path, GRAPH)
    done = offload(fleet, tmp_path, file, "-A", "top", "--builders", f"@{machines}", "-j", "0")
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_a_missing_key_file_is_said_when_ssh_logs_in_with_another(fleet, tmp_path):
    # The fleet's ssh config names a key of its own: ssh took that one without a word, and so
    # did offload, while the key file the machines line names was not there.
    missing = tmp_path / "nosuchkey"
    machines = _naming_key(fleet, tmp_path, missing)
    said = (
        f"ssh key file {missing} does not exist, so ssh logged in with another key (your ssh"
        " config's IdentityFile, an ssh agent's or its default); name an existing private key"
        f" file in column 3 of {machines}:1"
    )
    _warned_once(fleet, tmp_path, machines, said)
    stderr = _plain_run(fleet, tmp_path, machines)  # without --json: one line among the run's
    # As the README says it, a warning: line (a timed line of the run's, with no "warning:",
    # went unseen by a CI log's grep).
    assert [line for line in stderr.splitlines() if said in line] == [
        f"warning: builder 'fast': {said}"
    ], stderr


def test_a_key_file_others_may_read_is_said_when_ssh_logs_in_with_another(fleet, tmp_path):
    # ssh ignores a key file of one's own that others may read and, the fleet's ssh config
    # naming a key of its own, logged in with that one: offload said nothing, doctor a warning.
    key = tmp_path / "open_key"
    key.write_bytes(fleet.client_key.read_bytes())
    key.chmod(0o644)
    machines = _naming_key(fleet, tmp_path, key)
    said = (
        f"ssh key file {key} is readable by others, so ssh ignores it: ssh logged in with another"
        f" key (your ssh config's IdentityFile, an ssh agent's or its default); chmod 600 {key}"
    )
    _warned_once(fleet, tmp_path, machines, said)
    key.chmod(0o600)  # the fix: the run says nothing more
    stderr = _plain_run(fleet, tmp_path, machines)
    assert "warning" not in stderr, stderr


def test_a_pin_ssh_looks_up_under_the_alias_s_host_name_is_said_with_the_alias_fix(fleet, tmp_path):
    # An ssh config alias without HostKeyAlias: ssh looks fast's pinned key up as
    # [127.0.0.1]:PORT, finds nothing and refuses. The run said HOST KEY CHANGED, a possible
    # man-in-the-middle, and to pin the new key; no key would have done.
    config = tmp_path / "ssh_config"
    lines = fleet.ssh_config.read_text().splitlines()
    config.write_text("".join(f"{line}\n" for line in lines if "HostKeyAlias" not in line))
    machines = tmp_path / "machines"
    machines.write_text(member_line(fleet, "fast") + "\n")
    env = offload_env(fleet, tmp_path, NIX_SSHOPTS=f"-F {config}")
    file = nix_file(tmp_path, GRAPH)
    done = offload(fleet, tmp_path, file, "-A", "top", "--builders", f"@{machines}", "-j", "1",
                   env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    port = fleet.member("fast").port
    said = f"so ssh looks its key up as [127.0.0.1]:{port}, while Nix and offload pin it as fast"
    assert said in done.stderr, done.stderr
    assert "HOST KEY CHANGED" not in done.stderr
    alias = done.stderr.split("add `")[1].split("`")[0]
    config.write_text(config.read_text().replace("Host fast\n", f"Host fast\n  {alias}\n"))
    file = nix_file(tmp_path, GRAPH)
    done = offload(fleet, tmp_path, file, "-A", "top", "--builders", f"@{machines}", "-j", "0",
                   "--on", "fast", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, done.stderr


# ssh's ProxyCommand to a member that lets the connection through only once the test opens the
# FIFO (argv 1) for writing: until then the member is a builder slow to answer.
GATED = """
import os, socket, sys, threading
with open(sys.argv[1], "rb") as gate:
    gate.read()
sock = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
def up():
    while data := os.read(0, 65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := sock.recv(65536):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
os._exit(0)
"""


def test_a_missing_key_file_is_said_of_a_builder_that_answers_late(fleet, tmp_path):
    # A builder slow to answer (past the 1.5 s the run waits) took work once it answered, and
    # the key file its line names, missing, was never said: it was looked for as the run
    # started, among the builders that had answered by then.
    gate, proxy = tmp_path / "gate", tmp_path / "gated.py"
    os.mkfifo(gate)
    proxy.write_text(GATED)
    command = f"ProxyCommand {sys.executable} {proxy} {gate} {fleet.member('fast').port}"
    config = tmp_path / "ssh_config"
    config.write_text(
        fleet.ssh_config.read_text().replace("Host fast\n", f"Host fast\n  {command}\n")
    )
    assert command in config.read_text()
    missing = tmp_path / "nosuchkey"
    fields = member_line(fleet, "fast").split()
    fields[2] = str(missing)
    machines = tmp_path / "machines"
    machines.write_text(" ".join(fields) + "\n")
    file = nix_file(tmp_path, GRAPH)
    env = offload_env(fleet, tmp_path, NIX_SSHOPTS=f"-F {config}")
    argv: list[str | Path] = [file, "-A", "top", "--builders", f"@{machines}", "-j", "0", "--json"]
    proc = start_offload(fleet, tmp_path, *argv, env=env)
    try:
        assert proc.stdout is not None
        seen: list[dict[str, Any]] = []
        while not seen or (seen[-1]["event"], seen[-1].get("state")) != ("machine", "slow"):
            line = proc.stdout.readline()
            assert line, f"the run ended before fast was slow: {seen}"
            seen.append(json.loads(line))
        # The proxy waits on the FIFO: opening it cannot block (ENXIO if no proxy waits, ssh
        # never having reached for fast), and lets fast answer.
        os.close(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))
        out, err = proc.communicate(timeout=60)
    finally:
        processes.stop(proc)
    assert proc.returncode == 0, err
    told = [e for e in [*seen, *events(out)] if e["event"] == "machine"]
    assert [(e["machine"], e["state"]) for e in told] == [
        ("fast", "slow"),
        ("fast", "key"),
        ("fast", "up"),
    ]
    assert f"warning: builder 'fast': ssh key file {missing} does not exist" in err
    assert valid_locally(out_path(file, "top"))


@pytest.mark.parametrize(("quiet", "said"), [(1, True), (2, True), (3, False)])
def test_quiet_keeps_a_builders_warning_as_nix_build_keeps_its_warnings(
    fleet, tmp_path, closed_port, quiet, said
):
    # nix-build --quiet (a CI script's) leaves out Nix's progress lines, not its warnings (a
    # third --quiet does). offload --quiet said nothing at all of a builder down, or of a key
    # file missing: its plain renderer writes none of offload's lines then, and no summary.
    config = tmp_path / "ssh_config"
    config.write_text(
        fleet.ssh_config.read_text() + "\n" + _host("shut", closed_port, fleet.client_key)
    )
    file = nix_file(tmp_path, GRAPH)
    env = offload_env(fleet, tmp_path, NIX_SSHOPTS=f"-F {config}")
    line = f"ssh://shut {fleet.system} {fleet.client_key} 2"
    done = offload(
        fleet, tmp_path, file, "-A", "top", "--builders", line, *["--quiet"] * quiet, env=env
    )
    assert done.returncode == 0, done.stderr
    assert ("warning: builder 'shut' is down" in done.stderr) == said, done.stderr
    assert valid_locally(out_path(file, "top"))


@pytest.mark.parametrize("bad", ["-o Foo=bar", "-p notaport", "-Z"])
def test_nix_sshopts_ssh_refuses_is_this_hosts_fault_kept_against_no_builder(fleet, tmp_path, bad):
    # One typo in NIX_SSHOPTS backed every builder off for later runs (and offload-hook's),
    # each said with its machines line to check (interrupts tester).
    file = nix_file(tmp_path, f'mk "sshopts-{uuid.uuid4().hex[:8]}" "echo > $out" {{}}\n')
    env = offload_env(fleet, tmp_path)
    env["NIX_SSHOPTS"] = f"{env.get('NIX_SSHOPTS', '')} {bad}".strip()
    builders = f"@{fleet.machines_file}"
    done = offload(
        fleet, tmp_path, file, "-j1", "--builders", builders, "--no-out-link", "--json", env=env
    )
    assert done.returncode == 0, done.stderr
    down = {
        e["machine"]: e["message"]
        for e in events(done.stdout)
        if e["event"] == "machine" and e["state"] == "down"
    }
    assert down.keys() == {member.name for member in fleet.members}, done.stderr
    assert all(m.startswith("ssh refuses NIX_SSHOPTS (") for m in down.values()), down
    assert all("(check " not in m for m in down.values()), down
    backoff = tmp_path / "state" / "backoff.json"
    assert not backoff.exists() or json.loads(backoff.read_text()) == {}
