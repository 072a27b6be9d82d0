"""`offload build` end to end, transfers and cancellation (issue 5): a path the member has is not
sent again, Ctrl-C stops the remote build, and a connection dropped mid-transfer leaves no partial
path on either side. The CLI as a subprocess, real Nix, the real local fleet.

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

from offload.backoff import load_backoff
from offload.fleet import Fleet
from tests.helpers.fleets import member_processes, speed_of
from tests.helpers.nix_files import SPEED, marker_script, nix_file, out_path, valid_locally
from tests.helpers.offload_run import (
    finished,
    offload,
    offload_env,
    start_offload,
    wait_for,
    wait_for_marker,
)
from tests.helpers.processes import stop

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
        "--report",
        tmp_path / "run.html",
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
    # Its --report page is not written: said, with the command that writes it from history.
    assert not (tmp_path / "run.html").exists()
    assert f"warning: the run's report was not written to {tmp_path / 'run.html'}: the run" in err
    assert f"offload report -o {tmp_path / 'run.html'}" in err

    def builder_gone() -> bool:
        return not [
            cmd for _, cmd in member_processes(medium) if "nix-store" in cmd or "sleep" in cmd
        ]

    wait_for(builder_gone, 10, "the build's processes on medium to stop")
    assert not valid_locally(out_path(file, "x"))
    # Stopped by offload, the build's "interrupted by the user" backs medium off for no run.
    assert load_backoff(tmp_path / "state" / "backoff.json", time.time()) == {}


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
    # Lost with its connection, built again: on slow at once, or on medium once reconnected
    # (a copy there too, the one that lost stopped).
    assert statuses[0] == ("medium", "lost"), statuses
    (built,) = [machine for machine, status in statuses if status == "built"]
    assert {status for _, status in statuses[1:]} <= {"built", "cancelled"}, statuses
    x = out_path(file, "x")
    # Locally the output is whole (its hash checks out) and is the builder's, not a piece of
    # the copy whose connection dropped.
    verify = subprocess.run(
        ["nix-store", "--verify-path", x], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert Path(x).read_bytes().endswith(f"\n{speed_of(fleet, built)}\n".encode())
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
