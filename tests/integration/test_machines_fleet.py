import base64
import json
import subprocess
import sys

from tests.helpers.fleets import member_line


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
