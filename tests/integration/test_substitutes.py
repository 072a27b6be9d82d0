"""builders-use-substitutes: a builder fetches inputs from its own binary cache, not from us."""

from __future__ import annotations

import json
import os
import subprocess

from offload.fleet import MemberSpec
from tests.helpers.fleets import private_fleet_fixture
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import finished, offload_argv, offload_env

cache_fleet = private_fleet_fixture(
    [MemberSpec.parse("cached:1:1")], "ofs", doc="One member, whose binary cache a test sets."
)


def test_a_builder_with_a_cache_substitutes_the_input_instead_of_receiving_it(
    cache_fleet, tmp_path
):
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(2 * 1024 * 1024))
    source = subprocess.run(
        ["nix-store", "--add", str(blob)], capture_output=True, text=True, check=True
    ).stdout.strip()
    cache = tmp_path / "cache"
    nix = ["nix", "--extra-experimental-features", "nix-command"]
    subprocess.run(
        [*nix, "copy", "--to", f"file://{cache}", source],
        check=True,
        capture_output=True,
    )
    member = cache_fleet.member("cached")
    conf = member.root / "etc-nix" / "nix.conf"
    conf.write_text(
        conf.read_text().replace("substituters =", f"substituters = file://{cache}")
        + "require-sigs = false\n"
    )
    script = f"/bin/sha256sum ${{builtins.storePath {json.dumps(source)}}} > $out"
    file = nix_file(tmp_path, f'{{ x = mk "uses-blob" "{script}" {{}}; }}\n')
    env = offload_env(cache_fleet, tmp_path)
    common = ["-A", "x", "--builders", f"@{cache_fleet.machines_file}", "-j", "0", "--json"]
    done = subprocess.run(
        [*offload_argv(file, *common), "--option", "builders-use-substitutes", "true"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (job,) = [e for e in finished(done.stdout) if e["name"] == "uses-blob"]
    assert job["status"] == "built"
    assert job["bytes_sent"] < 100_000  # the 2 MiB input came from the cache, not from us
    assert cache_fleet.store_has("cached", source)
