import base64
import json
import subprocess
import sys

from tests.helpers.fleets import member_line
from tests.helpers.nix_files import nix_file, out_path
from tests.helpers.offload_run import built_on, offload


def test_machines_json_lists_every_fleet_member_with_its_pinned_key(fleet, tmp_path):
    argv = [sys.executable, "-m", "offload", "machines", "--json"]
    done = subprocess.run(
        [*argv, "--builders", f"@{fleet.machines_file}"],
        capture_output=True,
        text=True,
        env={**fleet.env(), "OFFLOAD_STATE_DIR": str(tmp_path)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listed = {entry["name"]: entry for entry in json.loads(done.stdout) if entry["name"] != "local"}
    assert set(listed) == {member.name for member in fleet.members}
    for member in fleet.members:
        entry = listed[member.name]
        host_key = (member.root / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        assert entry["host_key_pinned"] is True
        assert entry["public_host_key"].split()[:2] == host_key
        assert entry["max_jobs"] == member.spec.jobs
        # The machines file carries the key base64-encoded, as Nix's column 8 does.
        line = member_line(fleet, member.name)
        assert base64.b64decode(line.split()[7]).decode().split()[:2] == host_key


def test_two_members_on_one_host_by_port_are_two_builders(fleet, tmp_path):
    # The fleet's members are sshds on 127.0.0.1: listed by address and port, as two containers
    # on one server would be, each line is a builder of its own name (it was one name, refused).
    names, lines = [], []
    for member in ("fast", "medium"):
        port = fleet.member(member).port
        fields = member_line(fleet, member).split()
        fields[0] = f"ssh://root@127.0.0.1:{port}?ssh-key={fleet.client_key}"
        lines.append(" ".join(fields))
        names.append(f"127.0.0.1:{port}")
    machines = tmp_path / "machines"
    machines.write_text("\n".join(lines) + "\n")
    env = {**fleet.env(), "OFFLOAD_STATE_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "offload", "machines", "--json", "--builders", f"@{machines}"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert [entry["name"] for entry in json.loads(done.stdout)] == ["local", *names]
    file = nix_file(tmp_path, 'rec { top = mk "top" "echo top-${salt} > $out" {}; }')
    built = offload(
        fleet, tmp_path, file, "-A", "top", "--builders", f"@{machines}", "--on", names[1],
        "-j", "0", "--json",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert built_on(built.stdout) == {"top": names[1]}
    assert fleet.store_has("medium", out_path(file, "top"))
    assert not fleet.store_has("fast", out_path(file, "top"))
