"""Builds that start together on one builder send an input they share once (real Nix, real
sshd): each copy asked the builder what it lacked before the other's import ended, and both
sent it (a tester: a 3 MB input sent once per build, as many times as the builder's slots).

A private fleet of one member with three slots; three derivations read one 40 MB input built
here first, built with ``-j 0`` so that all three start on the member at once.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from offload.fleet import Fleet, MemberSpec
from tests.helpers.fleets import private_fleet_fixture
from tests.helpers.nix_files import nix_file, out_path
from tests.helpers.offload_run import finished, offload

SIZE = 40_000_000

share_fleet = private_fleet_fixture(
    [MemberSpec.parse("share:1:3")], "oflsh", doc="One member with three slots."
)

BODY = f"""rec {{
  big = mk "big" "/bin/head -c {SIZE} /dev/zero > $out" {{}};
  use = n: mk "use-${{n}}" "/usr/bin/wc -c ${{big}} > $out" {{}};
  all = [ (use "1") (use "2") (use "3") ];
}}
"""


def test_an_input_three_builds_need_at_once_is_sent_once(
    share_fleet: Fleet, tmp_path: Path
) -> None:
    file = nix_file(tmp_path, BODY)
    subprocess.run(
        ["nix-build", str(file), "-A", "big", "--no-out-link", "--option", "substituters", ""],
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    machines = f"@{share_fleet.machines_file}"
    argv: list[str | Path] = [file, "-A", "all", "--no-out-link", "-j", "0"]
    argv += ["--builders", machines, "--json"]
    done = offload(share_fleet, tmp_path, *argv)
    assert done.returncode == 0, done.stderr
    jobs = [j for j in finished(done.stdout) if j["name"].startswith("use-")]
    assert [j["status"] for j in jobs] == ["built"] * 3
    assert {j["machine"] for j in jobs} == {"share"}
    sent = sum(j["bytes_sent"] for j in jobs)
    assert SIZE < sent < 2 * SIZE, sent  # the NAR once, not once a build
    assert share_fleet.store_has("share", out_path(file, "big"))
