"""`offload build` end to end: the CLI as a subprocess, real Nix, the real local fleet.

Every test writes its own Nix file with a fresh salt (tests/helpers/nix_files.py says how its
builders behave). Which machine built what is read from ``--json`` events and proved by the
output's content: each output records the builder's speed file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from tests.helpers.fleets import (
    drop_member,
    host_of,
    machines_lines,
    member_processes,
    private_fleet_fixture,
    speed_of,
)
from tests.helpers.nix_files import SPEED, marker_script, nix_file, out_path, salt_of, valid_locally
from tests.helpers.offload_run import (
    built_on,
    finished,
    offload,
    offload_env,
    peak_running,
    run_outputs,
    start_offload,
    wait_for,
    wait_for_marker,
)
from tests.helpers.processes import stop

own_fleet = private_fleet_fixture(
    [MemberSpec.parse("a:2:1"), MemberSpec.parse("b:1:1")],
    "ofk",
    doc="A private two-member fleet (a: speed 2, b: speed 1, one slot each) for destructive tests.",
)


# -- issue 2: a derivation with inputs, built on a named member ----------------------------------


def test_builds_on_the_named_member_and_registers_the_output_locally(fleet, tmp_path):
    file = nix_file(
        tmp_path,
        """rec {
  dep = mk "dep" "echo dep-${salt} > $out" {};
  top = mk "top" "/bin/cat $dep > $out; SPEED >> $out" { inherit dep; };
}
""".replace("SPEED", SPEED),
    )
    done = offload(
        fleet,
        tmp_path,
        file,
        "-A",
        "top",
        "--builders",
        f"@{fleet.machines_file}",
        "--on",
        "medium",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert built_on(done.stdout) == {"dep": "medium", "top": "medium"}
    (top,) = run_outputs(done.stdout)
    dep = out_path(file, "dep")
    salt = salt_of(file)
    assert valid_locally(top)
    assert Path(top).read_text() == f"dep-{salt}\n{speed_of(fleet, 'medium')}\n"
    assert (tmp_path / "result").readlink() == Path(top)
    # Each member has its own store: only the one that built it has it.
    assert fleet.store_has("medium", top)
    assert fleet.store_has("medium", dep)
    assert not fleet.store_has("fast", top)
    assert not fleet.store_has("slow", top)
    assert not fleet.store_has("fast", dep)


def test_out_link_and_no_out_link_behave_like_nix_build(fleet, tmp_path):
    file = nix_file(
        tmp_path,
        """{
  one = mk "one" "echo one-${salt} > $out" {};
  two = mk "two" "echo two-${salt} > $out" {};
}
""",
    )
    builders = ("--builders", f"@{fleet.machines_file}", "--on", "fast")
    named = offload(fleet, tmp_path, file, "-A", "one", *builders, "-o", "mylink")
    assert named.returncode == 0, named.stderr
    one = out_path(file, "one")
    # Without --json the output paths are stdout, one per line, and nothing else.
    assert named.stdout.splitlines() == [one]
    assert (tmp_path / "mylink").readlink() == Path(one)
    assert not (tmp_path / "result").exists()

    unlinked = offload(fleet, tmp_path, file, "-A", "two", *builders, "--no-out-link")
    assert unlinked.returncode == 0, unlinked.stderr
    two = out_path(file, "two")
    assert unlinked.stdout.splitlines() == [two]
    assert valid_locally(two)
    assert Path(two).read_text() == f"two-{salt_of(file)}\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_symlink()) == ["mylink"]


# -- issue 4: whole-graph scheduling over the pool -----------------------------------------------


def _independent(count: int, sleep: float = 0, extra: str = "{}") -> str:
    return f"""builtins.genList (i: mk "w${{toString i}}"
  "/bin/sleep {sleep}; {SPEED} > $out" {extra}) {count}
"""


def _check_contents(fleet: Fleet, file: Path, stdout: str) -> None:
    """Every built output is valid here and says it was made where the events say."""
    for name, machine in built_on(stdout).items():
        index = int(name.removeprefix("w"))
        path = (
            subprocess.run(
                [
                    "nix-instantiate",
                    "--eval",
                    "-E",
                    f"(builtins.elemAt (import {file}) {index}).outPath",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .strip('"')
        )
        assert valid_locally(path)
        expected = "local" if machine == "local" else speed_of(fleet, machine)
        assert Path(path).read_text().strip() == expected, name


def test_a_graph_is_split_across_local_and_remote_members(fleet, tmp_path):
    file = nix_file(tmp_path, _independent(6, sleep=1))
    done = offload(
        fleet,
        tmp_path,
        file,
        "--builders",
        f"@{fleet.machines_file}",
        "--exclude",
        "medium,fast",
        "-j",
        "1",
        "--json",
        "--no-out-link",
    )
    assert done.returncode == 0, done.stderr
    where = built_on(done.stdout)
    assert len(where) == 6
    assert "local" in where.values()
    assert "slow" in where.values()
    _check_contents(fleet, file, done.stdout)


@pytest.mark.parametrize(
    ("selection", "allowed"),
    [
        (("--on", "fast"), {"fast"}),
        (("--exclude", "fast,medium", "-j", "1"), {"local", "slow"}),
        (("-j", "0"), {"fast", "medium", "slow"}),
    ],
    ids=["on-fast", "exclude-fast-medium", "j0"],
)
def test_machine_selection_is_honoured(fleet, tmp_path, selection, allowed):
    file = nix_file(tmp_path, _independent(5))
    done = offload(
        fleet,
        tmp_path,
        file,
        "--builders",
        f"@{fleet.machines_file}",
        *selection,
        "--json",
        "--no-out-link",
    )
    assert done.returncode == 0, done.stderr
    where = built_on(done.stdout)
    assert len(where) == 5
    assert set(where.values()) <= allowed
    _check_contents(fleet, file, done.stdout)


def test_a_mandatory_feature_machine_gets_only_matching_work(fleet, tmp_path):
    # fast demands `benchmark`; the others no longer offer it. The fastest machine is the one
    # every plain build would prefer, so plain work landing there would show.
    lines = []
    for columns in machines_lines(fleet):
        name = host_of(columns[0])
        features = columns[5].split(",")
        if name == "fast":
            columns[6] = "benchmark"
        else:
            columns[5] = ",".join(f for f in features if f != "benchmark")
        lines.append(" ".join(columns))
    machines = tmp_path / "machines"
    machines.write_text("\n".join(lines) + "\n")
    file = nix_file(
        tmp_path,
        f"""{{
  bench = builtins.genList (i: mk "bench${{toString i}}" "{SPEED} > $out"
    {{ requiredSystemFeatures = [ "benchmark" ]; }}) 2;
  plain = builtins.genList (i: mk "plain${{toString i}}" "{SPEED} > $out" {{}}) 4;
}}
""",
    )
    done = offload(
        fleet,
        tmp_path,
        file,
        "-A",
        "bench",
        "-A",
        "plain",
        "--builders",
        f"@{machines}",
        "-j",
        "0",
        "--json",
        "--no-out-link",
    )
    assert done.returncode == 0, done.stderr
    where = built_on(done.stdout)
    assert sorted(where) == ["bench0", "bench1", "plain0", "plain1", "plain2", "plain3"]
    assert {where["bench0"], where["bench1"]} == {"fast"}
    assert "fast" not in {where[f"plain{i}"] for i in range(4)}


def test_an_output_already_on_a_builder_is_fetched_not_rebuilt(fleet, tmp_path):
    counter = tmp_path / "counter"
    file = nix_file(
        tmp_path, f'{{ x = mk "x" "echo run >> {counter}; echo x-${{salt}} > $out" {{}}; }}\n'
    )
    builders = ("--builders", f"@{fleet.machines_file}", "-j", "0")
    first = offload(fleet, tmp_path, file, "-A", "x", *builders, "--on", "fast", "--no-out-link")
    assert first.returncode == 0, first.stderr
    x = out_path(file, "x")
    assert counter.read_text() == "run\n"
    deleted = subprocess.run(
        ["nix-store", "--delete", x], capture_output=True, text=True, check=False
    )
    assert deleted.returncode == 0, deleted.stderr
    assert not valid_locally(x)
    assert fleet.store_has("fast", x)

    # slow is in the pool too: a rebuild could go there; fetching can only come from fast.
    again = offload(
        fleet, tmp_path, file, "-A", "x", *builders, "--on", "fast,slow", "--no-out-link", "--json"
    )
    assert again.returncode == 0, again.stderr
    assert valid_locally(x)
    assert counter.read_text() == "run\n"  # the builder did not run again anywhere
    assert [(e["name"], e["machine"], e["status"]) for e in finished(again.stdout)] == [
        ("x", "fast", "fetched")
    ]


def test_a_member_killed_mid_build_is_replaced_and_the_run_succeeds(own_fleet, tmp_path):
    marker = tmp_path / "marker"
    # The first copy to start sleeps (long enough to be killed); a retry elsewhere is quick.
    script = marker_script(marker, "/bin/sleep 60")
    file = nix_file(
        tmp_path,
        f'{{ x = mk "x" "if [ -e {marker} ]; then :; else {script}; fi; {SPEED} > $out" {{}}; }}\n',
    )
    speeds = {speed_of(own_fleet, m.name): m.name for m in own_fleet.members}
    proc = start_offload(
        own_fleet,
        tmp_path,
        file,
        "-A",
        "x",
        "--builders",
        f"@{own_fleet.machines_file}",
        "-j",
        "0",
        "--json",
        "--no-out-link",
    )
    try:
        victim = speeds[wait_for_marker(marker, proc)]
        (survivor,) = set(speeds.values()) - {victim}
        drop_member(own_fleet.member(victim))
        out, err = proc.communicate(timeout=45)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    statuses = [(e["machine"], e["status"]) for e in finished(out)]
    assert (victim, "lost") in statuses
    assert statuses[-1] == (survivor, "built")
    x = out_path(file, "x")
    assert valid_locally(x)
    assert Path(x).read_text().strip() == speed_of(own_fleet, survivor)


def test_builds_with_keep_going_continue_past_a_failure(fleet, tmp_path):
    file = nix_file(
        tmp_path,
        """rec {
  bad = mk "bad" "echo broken >&2; exit 3" {};
  after-bad = mk "after-bad" "/bin/cat $bad > $out" { inherit bad; };
  first = mk "first" "/bin/sleep 1; echo first > $out" {};
  after-first = mk "after-first" "/bin/cat $first > $out" { inherit first; };
  alone = mk "alone" "echo alone > $out" {};
}
""",
    )
    attrs = ["-A", "after-bad", "-A", "after-first", "-A", "alone"]
    done = offload(
        fleet,
        tmp_path,
        file,
        *attrs,
        "--builders",
        f"@{fleet.machines_file}",
        "--on",
        "medium",
        "-j",
        "0",
        "-k",
        "--json",
        "--no-out-link",
    )
    assert done.returncode == 100, done.stderr
    status = {e["name"]: e["status"] for e in finished(done.stdout)}
    assert status == {
        "bad": "failed",
        "after-bad": "skipped",
        "first": "built",
        "after-first": "built",
        "alone": "built",
    }
    for attr in ("after-first", "alone"):
        assert valid_locally(out_path(file, attr))
    # first was built, and stays on medium: only requested outputs come home.
    assert fleet.store_has("medium", out_path(file, "first"))
    for attr in ("bad", "after-bad"):
        assert not valid_locally(out_path(file, attr))


def test_concurrent_runs_never_exceed_a_members_slots(fleet, tmp_path):
    log = tmp_path / "log"
    stamp = "$(/bin/date +%s.%N)"
    procs = []
    try:
        for run in ("r1", "r2"):
            file = nix_file(
                tmp_path,
                f"""builtins.genList (i: mk "{run}-${{toString i}}"
  "echo start {stamp} >> {log}; /bin/sleep 1; echo end {stamp} >> {log}; echo > $out" {{}}) 4
""",
                name=f"{run}.nix",
            )
            procs.append(
                start_offload(
                    fleet,
                    tmp_path,
                    file,
                    "--builders",
                    f"@{fleet.machines_file}",
                    "--on",
                    "slow",
                    "-j",
                    "0",
                    "--no-out-link",
                )
            )
        results = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            stop(proc)
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    stamps, peak = peak_running(log)
    assert stamps == 16
    assert peak <= fleet.member("slow").spec.jobs


# -- issue 5: transfers and cancellation -----------------------------------------------------------


def test_a_path_already_on_the_member_is_not_sent_again(fleet, tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(uuid.uuid4().bytes * 4096)  # 64 KiB, fresh to every store
    body = f'{{ top = mk "top" "/bin/cat $src > $out" {{ src = {blob}; }}; }}\n'
    sent: list[int] = []
    for run, member in (("one", "medium"), ("two", "medium"), ("three", "slow")):
        # A new salt each time: a new derivation with the same input source.
        file = nix_file(tmp_path, body, name=f"{run}.nix")
        done = offload(
            fleet,
            tmp_path,
            file,
            "-A",
            "top",
            "--builders",
            f"@{fleet.machines_file}",
            "--on",
            member,
            "--json",
            "--no-out-link",
        )
        assert done.returncode == 0, done.stderr
        (event,) = finished(done.stdout)
        assert (event["machine"], event["status"]) == (member, "built")
        sent.append(event["bytes_sent"])
    assert sent[0] > blob.stat().st_size  # the source went to medium (as a NAR)
    assert sent[1] == 0  # medium had it already
    assert sent[2] > blob.stat().st_size  # slow did not


def test_ctrl_c_stops_the_remote_build(fleet, tmp_path):
    marker = tmp_path / "marker"
    file = nix_file(
        tmp_path,
        f'{{ x = mk "x" "{marker_script(marker, "/bin/sleep 60")}; echo > $out" {{}}; }}\n',
    )
    medium = fleet.member("medium")
    proc = start_offload(
        fleet,
        tmp_path,
        file,
        "-A",
        "x",
        "--builders",
        f"@{fleet.machines_file}",
        "--on",
        "medium",
        "--no-out-link",
    )
    try:
        wait_for_marker(marker, proc)
        assert any("sleep 60" in cmd for _, cmd in member_processes(medium))
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        took = time.monotonic() - interrupted
    finally:
        stop(proc)
    assert proc.returncode != 0
    assert took < 10, err
    assert "Traceback" not in err

    def builder_gone() -> bool:
        return not [
            cmd for _, cmd in member_processes(medium) if "nix-store" in cmd or "sleep" in cmd
        ]

    wait_for(builder_gone, 10, "the build's processes on medium to stop")
    assert not valid_locally(out_path(file, "x"))


PROXY = """
import os, socket, sys, threading

host, port, marker, direction, limit = sys.argv[1:6]
sock = socket.create_connection((host, int(port)))
armed = not os.path.exists(marker)


def count(total, here):
    if here == direction and armed and total > int(limit):
        open(marker, "w").close()
        os._exit(1)


def up():
    total = 0
    while data := os.read(0, 65536):
        sock.sendall(data)
        total += len(data)
        count(total, "up")
    sock.shutdown(socket.SHUT_WR)


threading.Thread(target=up, daemon=True).start()
total = 0
while data := sock.recv(65536):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
    total += len(data)
    count(total, "down")
os._exit(0)
"""


def _proxied_config(fleet: Fleet, tmp_path: Path, name: str, direction: str) -> Path:
    """The fleet's ssh config with ``name`` reached through a proxy that drops the connection
    once, after a megabyte has passed in ``direction`` ("up" to the member, "down" from it)."""
    proxy = tmp_path / "proxy.py"
    proxy.write_text(PROXY)
    member = fleet.member(name)
    command = f"ProxyCommand {sys.executable} {proxy} 127.0.0.1 {member.port} "
    command += f"{tmp_path / 'dropped'} {direction} 1000000"
    text = fleet.ssh_config.read_text().replace(f"Host {name}\n", f"Host {name}\n  {command}\n")
    assert command in text
    config = tmp_path / "ssh_config"
    config.write_text(text)
    return config


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_dropped_connection_mid_transfer_leaves_no_partial_path(fleet, tmp_path, direction):
    blob = tmp_path / "blob"
    if direction == "up":  # 8 MiB of input source going to the member
        blob.write_bytes(os.urandom(8 << 20))
        script = f"/bin/head -c 16 $src > $out; echo >> $out; {SPEED} >> $out"
    else:  # 8 MiB of output coming back from it
        blob.write_bytes(uuid.uuid4().bytes)
        script = "/bin/cat $src > $out; /bin/head -c 8388608 /dev/urandom >> $out; echo >> $out"
        script += f"; {SPEED} >> $out"
    file = nix_file(tmp_path, f'{{ x = mk "x" "{script}" {{ src = {blob}; }}; }}\n')
    config = _proxied_config(fleet, tmp_path, "medium", direction)
    env = offload_env(fleet, tmp_path, NIX_SSHOPTS=f"-F {config}")
    done = offload(
        fleet,
        tmp_path,
        file,
        "-A",
        "x",
        "--builders",
        f"@{fleet.machines_file}",
        "--on",
        "medium,slow",
        "-j",
        "0",
        "--json",
        "--no-out-link",
        env=env,
    )
    assert (tmp_path / "dropped").exists(), "the proxy never dropped the connection"
    assert done.returncode == 0, done.stderr
    statuses = [(e["machine"], e["status"]) for e in finished(done.stdout)]
    assert statuses == [("medium", "lost"), ("slow", "built")]
    x = out_path(file, "x")
    # Locally the output is whole (its hash checks out) and is slow's, not a piece of medium's.
    verify = subprocess.run(
        ["nix-store", "--verify-path", x], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert Path(x).read_bytes().endswith(f"\n{speed_of(fleet, 'slow')}\n".encode())
    # On medium, the path whose transfer was cut is either whole and valid, or not there at all.
    src = subprocess.run(
        ["nix-store", "--add", str(blob)], capture_output=True, text=True, check=True
    ).stdout.strip()
    cut = src if direction == "up" else x
    if fleet.store_has("medium", cut):
        check = subprocess.run(
            fleet.ssh_argv("medium", "nix-store", "--verify-path", cut),
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stderr
    else:
        on_disk = fleet.member("medium").root / "nix" / "store" / Path(cut).name
        assert not on_disk.exists(), f"{cut}: left on medium's disk, not valid"


def test_an_output_cut_off_on_its_way_back_leaves_nothing_locally(fleet, tmp_path):
    # medium is the only machine: nothing replaces the cut output, so whatever of it arrived
    # here would still be on disk afterwards.
    script = f"/bin/head -c 8388608 /dev/urandom > $out; echo >> $out; {SPEED} >> $out"
    file = nix_file(tmp_path, f'{{ x = mk "x" "{script}" {{}}; }}\n')
    config = _proxied_config(fleet, tmp_path, "medium", "down")
    env = offload_env(fleet, tmp_path, NIX_SSHOPTS=f"-F {config}")
    done = offload(
        fleet,
        tmp_path,
        file,
        "-A",
        "x",
        "--builders",
        f"@{fleet.machines_file}",
        "--on",
        "medium",
        "--no-out-link",
        env=env,
        timeout=30,
    )
    assert (tmp_path / "dropped").exists(), "the proxy never dropped the connection"
    assert done.returncode != 0
    x = out_path(file, "x")
    assert not valid_locally(x)
    assert not Path(x).exists(), f"{x}: left on the local disk, not valid"
