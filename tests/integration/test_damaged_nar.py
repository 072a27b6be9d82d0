"""offload build and a builder whose store holds an output whose bytes are not those its
database says (a disk's damage, a hand's edit): under real Nix 2.8 and a fleet member. The
member's `nix-store --serve` says the path's narHash and sends other bytes; this host's Nix,
importing them, hashes what arrives and registers that, so the builder's word was never held
against its bytes. offload now compares them as they pass: the path is refused before its
trailer goes (nothing registered), the builder is left out of the run as one down, said with
why, and the output is built here."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from tests.helpers.fleets import member_line, private_fleet_fixture
from tests.helpers.nix_files import nix_file, out_path
from tests.helpers.offload_run import built_on, offload

damaged_fleet = private_fleet_fixture([MemberSpec("dn1", 1.0, 1)], "odn", scope="module")


def _on_member(fleet: Fleet, *argv: str) -> str:
    done = subprocess.run(
        fleet.ssh_argv("dn1", *argv), capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


@pytest.fixture
def damaged(damaged_fleet: Fleet, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A Nix file whose ``top`` the member holds, registered with the hash of "there\\n",
    its bytes since changed to "damaged\\n" (the same length); yields the file and top."""
    file = nix_file(tmp_path, '{ top = mk "top" "echo here > $out" {}; }\n')
    top = out_path(file, "top")
    register = 'echo there > "$1" && printf "%s\\n\\n0\\n" "$1" | nix-store --register-validity'
    _on_member(damaged_fleet, "sh", "-c", f'{register} && echo damage > "$1"', "sh", top)
    yield file, top
    subprocess.run(["nix-store", "--delete", top], capture_output=True, check=False)


def test_a_nar_other_than_said_is_refused_the_builder_left_out_and_the_output_built_here(
    damaged_fleet: Fleet, tmp_path: Path, damaged: tuple[Path, str]
) -> None:
    file, top = damaged
    line = member_line(damaged_fleet, "dn1")
    done = offload(damaged_fleet, tmp_path, file, "-A", "top", "--builders", line, "--json")
    assert done.returncode == 0, done.stderr
    assert built_on(done.stdout) == {"top": "local"}
    assert Path(top).read_text() == "here\n"  # built here: not the member's damaged bytes
    downs = [
        event
        for event in map(json.loads, done.stdout.splitlines())
        if event.get("event") == "machine" and event.get("state") == "down"
    ]
    assert [event["machine"] for event in downs] == ["dn1"]
    assert f"{top} arrived as another NAR than said" in downs[0]["message"], downs
