"""The local fleet against real sshd, ssh and Nix 2.8."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload import process
from offload.errors import FleetError
from offload.fleet import Fleet, MemberSpec, fleet_down, fleet_status, fleet_up, open_fleet, sshd
from offload.process import spawn
from offload.procfs import running
from offload.protocol.wire import encode_int, read_int
from tests.helpers import processes

SERVE_MAGIC_1 = 0x390C9DEB
SERVE_MAGIC_2 = 0x5452EECB
_DOWN_SCRIPT = "import sys, pathlib, offload.fleet as f; f.fleet_down(pathlib.Path(sys.argv[1]))"


def _ssh(fleet: Fleet, name: str, *remote: str, stdin: str | None = None):
    return subprocess.run(
        fleet.ssh_argv(name, *remote),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _pids_in_namespace(ns: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if str((entry / "ns" / "mnt").readlink()) == ns and running(int(entry.name)):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@contextlib.contextmanager
def _namespace_held(pid: int, ns: str) -> Iterator[None]:
    """Keep ``ns``, the mount namespace of the live ``pid``, in existence within the block.

    A namespace's id is freed with it, and the next namespace made anywhere on this host (the
    lowest free id) takes it: a fleet member of another test run was once found in "our" id just
    after ``down``. An open descriptor keeps the namespace, and so its id, until it is closed,
    so a process seen in ``ns`` within the block really is one that was left in it.
    """
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    try:
        assert str(Path(f"/proc/self/fd/{fd}").readlink()) == ns
        yield
    finally:
        os.close(fd)


def test_members_answer_the_serve_handshake(fleet):
    async def handshake(name: str) -> tuple[int, int]:
        async with spawn(fleet.ssh_argv(name, "nix-store", "--serve", "--write")) as proc:
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.write(encode_int(SERVE_MAGIC_1))
            await proc.stdin.drain()
            magic = await asyncio.wait_for(read_int(proc.stdout), 30)
            version = await read_int(proc.stdout)
            return magic, version

    for member in fleet.members:
        magic, version = asyncio.run(handshake(member.name))
        assert magic == SERVE_MAGIC_2
        assert version & 0xFF00 == 0x200


def test_each_member_has_its_own_store(fleet, tmp_path):
    source = tmp_path / f"ofl-{uuid.uuid4().hex}"
    source.write_text(f"{uuid.uuid4()}\n")
    added = _ssh(fleet, "medium", "nix-store", "--add", str(source))
    assert added.returncode == 0, added.stderr
    path = added.stdout.strip()
    assert path.startswith("/nix/store/")
    assert fleet.store_has("medium", path)
    assert not fleet.store_has("fast", path)
    assert not fleet.store_has("slow", path)
    local = subprocess.run(
        ["nix-store", "--check-validity", path], capture_output=True, check=False
    )
    assert local.returncode != 0
    assert not Path(path).exists()
    assert (fleet.member("medium").root / path.removeprefix("/")).exists()


def test_each_member_sees_its_own_speed_and_nix_conf(fleet):
    for member in fleet.members:
        speed = _ssh(fleet, member.name, "cat", "/etc/nix/offload-speed")
        assert speed.returncode == 0, speed.stderr
        assert float(speed.stdout) == member.spec.speed
        shown = _ssh(
            fleet,
            member.name,
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "show-config",
        )
        assert shown.returncode == 0, shown.stderr
        config = {
            k.strip(): v.strip()
            for k, _, v in (line.partition("=") for line in shown.stdout.splitlines())
        }
        assert config["max-jobs"] == str(member.spec.jobs)
        assert config["build-users-group"] == ""
        assert config["substituters"] == ""
    assert not Path("/etc/nix/offload-speed").exists()


def test_stock_nix_builds_on_the_fleet_through_the_machines_file(fleet, tmp_path):
    salt = uuid.uuid4().hex[:12]
    expr = tmp_path / "default.nix"
    expr.write_text(
        "derivation {\n"
        f'  name = "ofl-fleet-{salt}";\n'
        "  system = builtins.currentSystem;\n"
        '  builder = "/bin/sh";\n'
        '  args = [ "-c" "read s < /etc/nix/offload-speed; echo $s > $out" ];\n'
        "}\n"
    )
    done = subprocess.run(
        [
            "nix-build",
            str(expr),
            "--no-out-link",
            "--builders",
            f"@{fleet.machines_file}",
            "--max-jobs",
            "0",
            "--option",
            "substituters",
            "",
        ],
        env=fleet.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip()
    try:
        where = re.search(r"on 'ssh://([a-z0-9-]+)[?']", done.stderr)
        assert where is not None, done.stderr
        name = where.group(1)
        valid = subprocess.run(
            ["nix-store", "--check-validity", out], capture_output=True, check=False
        )
        assert valid.returncode == 0
        assert fleet.store_has(name, out)
        # The builder ran inside that member: it read that member's speed file.
        assert float(Path(out).read_text()) == fleet.member(name).spec.speed
    finally:
        subprocess.run(["nix-store", "--delete", out], capture_output=True, check=False)


def test_each_member_logs_in_to_a_clean_home_of_its_own(fleet):
    # This host's shell start-up files (and whatever they cost) stay out of the members.
    marker = f"offload-home-{uuid.uuid4().hex}"
    homes = set()
    for member in fleet.members:
        script = f"cd && pwd && ls -A && echo {marker} > {marker}"
        shown = _ssh(fleet, member.name, "sh", "-c", script)
        assert shown.returncode == 0, shown.stderr
        home, *entries = shown.stdout.splitlines()
        assert marker not in entries  # no other member's file, no file of this host's home
        assert not {".bashrc", ".profile"} & set(entries)
        homes.add(home)
        assert (fleet.dir / member.name / "home" / marker).exists()
    assert homes == {str(Path.home())}
    assert not (Path.home() / marker).exists()


def test_a_fleet_inside_the_login_home_keeps_that_home():
    # The default fleet lives in ~/.local/state/offload/fleet: mounting a clean home over the
    # login home would hide the member's own sshd_config from it.
    target = Path(tempfile.mkdtemp(prefix=".offload-test-fleet-", dir=Path.home()))
    try:
        fleet = fleet_up(target / "f", [MemberSpec("solo", 1, 1)])
        shown = _ssh(fleet, "solo", "sh", "-c", "cd && pwd && test -d " + str(target))
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.strip() == str(Path.home())
    finally:
        fleet_down(target / "f", purge=True)
        target.rmdir()


def test_a_fleet_started_under_umask_000_keeps_its_private_files_private(tmp_path):
    # sshd.log was written under the umask (0666 here) and sshd wrote its pid file 0644.
    before = os.umask(0)
    try:
        fleet = fleet_up(tmp_path / "f", [MemberSpec("modes", 1, 1)])
    finally:
        os.umask(before)
    try:
        root = fleet.member("modes").root
        for private in ("sshd.log", "sshd_config", "ssh_host_ed25519_key"):
            assert (root / private).stat().st_mode & 0o777 == 0o600, private
        for directory in (fleet.dir, root, root / "home"):
            assert directory.stat().st_mode & 0o777 == 0o700, directory
        assert not (root / "sshd.pid").exists()  # nothing reads it
    finally:
        fleet_down(tmp_path / "f", purge=True)


def test_host_keys_are_pinned(fleet, tmp_path):
    # A known_hosts that pins "fast" to medium's key: ssh must refuse to talk to fast.
    medium_key = (fleet.member("medium").root / "ssh_host_ed25519_key.pub").read_text().split()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"fast {medium_key[0]} {medium_key[1]}\n")
    config = tmp_path / "ssh_config"
    config.write_text(fleet.ssh_config.read_text().replace(str(fleet.known_hosts), str(wrong)))
    argv = ["ssh", "-F", str(config), "fast", "--", "echo", "reached"]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode == 255
    assert "reached" not in refused.stdout
    assert "host key" in refused.stderr.lower()
    # The same config with the fleet's own known_hosts works, so the key was the reason.
    ok = _ssh(fleet, "fast", "echo", "reached")
    assert ok.stdout.strip() == "reached"


def test_up_is_idempotent_and_restarts_dead_members(tmp_path):
    target = tmp_path / "f"
    specs = [MemberSpec("solo", 1, 1)]
    try:
        first = fleet_up(target, specs)
        again = fleet_up(target, specs)
        assert again.members == first.members
        assert running(first.member("solo").pid)
        with pytest.raises(FleetError, match="running") as info:
            fleet_up(target, [MemberSpec("solo", 2, 1)])
        assert info.value.hint is not None
        assert "down" in info.value.hint
        # Kill the member behind the fleet's back: the next `up` starts it again.
        old = first.member("solo")
        fleet_down(target)
        assert not running(old.pid)
        assert [s.running for s in fleet_status(target)] == [False]
        revived = fleet_up(target, specs)
        assert revived.member("solo").pid != old.pid
        assert [s.running for s in fleet_status(target)] == [True]
        assert _ssh(revived, "solo", "echo", "hi").stdout.strip() == "hi"
    finally:
        fleet_down(target, purge=True)
    assert not target.exists()


def test_down_from_a_fresh_process_stops_everything(tmp_path):
    target = tmp_path / "f"
    try:
        started = fleet_up(target, [MemberSpec("solo", 1, 1)]).member("solo")
        del started  # only the directory is left, as after a crash
        fleet = open_fleet(target)
        member = fleet.member("solo")
        # A live session inside the member: a per-connection sshd and a command under it.
        session = processes.start(
            fleet.ssh_argv("solo", "sleep", "600"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            # The session's own ssh handshake may still be running: wait for its sleep to start
            # in the member's namespace (pgrep there would also see other tests' sleeps).
            deadline = time.monotonic() + 20
            while not any(_comm(pid) == "sleep" for pid in _pids_in_namespace(member.mnt_ns)):
                assert time.monotonic() < deadline, "the session's sleep never started"
                assert session.poll() is None, "the session ended before its sleep started"
            assert len(_pids_in_namespace(member.mnt_ns)) >= 3  # sshd, session sshd, sleep
            with _namespace_held(member.pid, member.mnt_ns):
                down = subprocess.run(
                    [sys.executable, "-c", _DOWN_SCRIPT, str(target)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                assert down.returncode == 0, down.stderr
                assert _pids_in_namespace(member.mnt_ns) == []
            assert not running(member.pid)
            session.wait(timeout=30)
        finally:
            processes.stop(session)
    finally:
        fleet_down(target, purge=True)


def test_a_member_that_cannot_start_is_reported_and_nothing_is_left(tmp_path):
    target = tmp_path / "f"
    good = target / "good"
    bad = target / "bad"
    for member in (good, bad):
        member.mkdir(parents=True)
    # An unusable host key for "bad": its sshd exits at once.
    (bad / "ssh_host_ed25519_key").write_text("not a key\n")
    (bad / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAAnotakey bad\n")
    (bad / "ssh_host_ed25519_key").chmod(0o600)
    try:
        with pytest.raises(FleetError, match="bad") as info:
            fleet_up(target, [MemberSpec("good"), MemberSpec("bad")])
        assert "key" in info.value.message.lower()  # the tail of bad's sshd log
        assert fleet_status(target) == ()
        for log in (good / "sshd.log", bad / "sshd.log"):
            assert log.exists()
        assert not any(
            "sshd" in _cmdline(pid) and str(target) in _cmdline(pid) for pid in _all_running_pids()
        )
    finally:
        fleet_down(target, purge=True)


def test_ctrl_c_as_a_member_starts_leaves_nothing_running(tmp_path, monkeypatch):
    # The Ctrl-C arrives as the second member's sshd has been forked: Python raised it as the
    # fork returned, before anyone knew the pid, and that sshd ran on, recorded nowhere.
    target = tmp_path / "f"
    real = process.start_detached

    def interrupted(*args, **kwargs):
        pid = real(*args, **kwargs)
        if kwargs["log"].parent.name == "b":
            signal.raise_signal(signal.SIGINT)
        return pid

    monkeypatch.setattr(sshd, "start_detached", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            fleet_up(target, [MemberSpec("a"), MemberSpec("b"), MemberSpec("c")])
        assert fleet_status(target) == ()
        assert not any(
            "sshd" in _cmdline(pid) and str(target) in _cmdline(pid) for pid in _all_running_pids()
        )
    finally:
        fleet_down(target, purge=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _all_running_pids() -> list[int]:
    return [
        int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and running(int(e.name))
    ]


def test_down_on_a_never_started_dir(tmp_path):
    fleet_down(tmp_path / "never")
    fleet_down(tmp_path / "never", purge=True)
    assert fleet_status(tmp_path / "never") == ()


def _offload(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offload", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_up_status_machines_env_down(tmp_path):
    target = tmp_path / "f"
    d = str(target)
    try:
        up = _offload("fleet", "up", "--dir", d, "--member", "solo:1.5:3")
        assert up.returncode == 0, up.stderr
        assert "solo" in up.stderr

        table = _offload("fleet", "status", "--dir", d)
        assert table.returncode == 0, table.stderr
        header, row = (line.split() for line in table.stdout.splitlines())
        assert header == ["NAME", "PORT", "SPEED", "JOBS", "PID", "STATE"]
        assert (row[0], row[2], row[3], row[5]) == ("solo", "1.5", "3", "running")

        status = _offload("fleet", "status", "--dir", d, "--json")
        assert status.returncode == 0, status.stderr
        (row,) = json.loads(status.stdout)
        assert (row["name"], row["speed"], row["jobs"], row["running"]) == ("solo", 1.5, 3, True)
        assert running(row["pid"])

        machines = _offload("fleet", "machines", "--dir", d)
        assert machines.returncode == 0, machines.stderr
        fields = machines.stdout.split()
        assert fields[0] == f"ssh://solo?ssh-key={target / 'client_key'}"
        assert (fields[3], fields[4]) == ("3", "2")
        host_pub = (target / "solo" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        assert base64.b64decode(fields[7]).decode().split() == host_pub

        env = _offload("fleet", "env", "--dir", d)
        assert env.returncode == 0, env.stderr
        script = env.stdout + 'ssh $NIX_SSHOPTS solo -- echo "$OFFLOAD_FLEET_DIR"\n'
        reached = subprocess.run(
            ["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30, check=False
        )
        assert reached.stdout.strip() == d, reached.stderr

        bad = _offload("fleet", "up", "--dir", d, "--member", "Solo")
        assert bad.returncode == 1
        assert bad.stderr.startswith("error: invalid fleet member name")

        down = _offload("fleet", "down", "--dir", d, "--purge")
        assert down.returncode == 0, down.stderr
        # It said nothing (README tester): how many it stopped, and what is left.
        assert down.stderr.startswith("fleet stopped: 1 of 1 members were running;")
        assert not target.exists()
        assert not running(row["pid"])
        again = _offload("fleet", "down", "--dir", d)
        assert again.returncode == 0
        assert again.stderr.startswith("no fleet in ")
    finally:
        fleet_down(target, purge=True)


def _sleepers_in(member_nix: Path) -> list[int]:
    """`sleep 300` processes that see ``member_nix`` at /nix."""
    want = member_nix.stat()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            seen = (entry / "root" / "nix").stat()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (
            cmdline[:2] == [b"/bin/sleep", b"300"]
            and state != "Z"
            and (seen.st_dev, seen.st_ino) == (want.st_dev, want.st_ino)
        ):
            found.append(int(entry.name))
    return found


def test_down_stops_processes_in_mount_namespaces_nested_in_a_member(tmp_path):
    # nix-store unshares a mount namespace of its own, so its builders are not in the member's;
    # `down` must stop them all the same. `unshare -m` stands in for it here.
    root = Path(tempfile.mkdtemp(prefix="ofn", dir="/tmp"))
    client = None
    try:
        fleet = fleet_up(root, [MemberSpec.parse("nest:1:1")])
        nix_dir = fleet.member("nest").root / "nix"
        client = processes.start(
            fleet.ssh_argv("nest", "unshare", "-m", "/bin/sleep", "300"),
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not _sleepers_in(nix_dir):
            assert time.monotonic() < deadline, "the nested sleep never started"
            assert client.poll() is None, "ssh ended before the sleep started"
            time.sleep(0.05)
        fleet_down(root)
        assert _sleepers_in(nix_dir) == []
    finally:
        if client is not None:
            processes.stop(client)
        fleet_down(root, purge=True)
