"""offload-hook and offload build, and a builder whose closure of a derivation's outputs names
a path that is no output of it and is missing here, under real Nix 2.8 and a fleet member. Nix
made the inputs valid here before it asked, so only a builder that says more than Nix
guarantees names one: the member's store here says it, by the output registered there with a
reference to a path only it has, so the build there is already done. Brought home, that path
would be one of the builder's choosing made valid in this host's store, as root under the
daemon: the hook refuses it before a byte is read, the build fails naming it, and nothing is
registered, as Nix's own hook fails such a build when it registers the output. ``offload
build``, finding the output already there, would fetch it rather than build it: it refuses the
path too, leaves the builder out of the run as one down (said, with why) and builds the output
here."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from tests.helpers.fleets import member_line, private_fleet_fixture
from tests.helpers.hook_runs import start_nix_build
from tests.helpers.nix_files import nix_file, out_path, valid_locally
from tests.helpers.offload_run import built_on, offload
from tests.helpers.processes import stop

strays_fleet = private_fleet_fixture([MemberSpec("hl1", 1.0, 1)], "ohl", scope="module")

pytestmark = pytest.mark.usefixtures("coordinators_stopped")


def _on_member(fleet: Fleet, *argv: str) -> str:
    done = subprocess.run(
        fleet.ssh_argv("hl1", *argv), capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


@pytest.fixture
def claimed(strays_fleet: Fleet, tmp_path: Path) -> Iterator[tuple[Path, str, str, str]]:
    """A Nix file whose ``top`` the member has already built, with a reference to a path
    ``dep`` it alone has; yields the file, top's path, dep's path and dep's content."""
    file = nix_file(tmp_path, '{ top = mk "top" "echo here > $out" {}; }\n')
    top = out_path(file, "top")
    whole = f"{uuid.uuid4()}\n"
    source = tmp_path / "offload-stray-dep"
    source.write_text(whole)
    dep = _on_member(strays_fleet, "nix-store", "--add", str(source))
    register = (
        'echo there > "$1" && printf "%s\\n\\n1\\n%s\\n" "$1" "$2" | nix-store --register-validity'
    )
    _on_member(strays_fleet, "sh", "-c", register, "sh", top, dep)
    yield file, top, dep, whole
    subprocess.run(["nix-store", "--delete", top, dep], capture_output=True, check=False)
    Path(dep).unlink(missing_ok=True)
    Path(f"{dep}.lock").unlink(missing_ok=True)


def test_a_path_that_is_no_output_is_refused_and_nothing_registered(
    strays_fleet: Fleet, tmp_path: Path, claimed: tuple[Path, str, str, str]
) -> None:
    file, top, dep, _ = claimed
    build = start_nix_build(strays_fleet, tmp_path, file, "-A", "top", "-j0")
    try:
        out, err = build.communicate(timeout=120)
    finally:
        stop(build)
    assert build.returncode != 0, out
    assert "builder 'hl1' says the outputs of '" in err
    assert "refer to '" + dep + "', which is no output of it and is not valid here" in err, err
    assert "nothing was brought home" in err
    assert not valid_locally(dep)
    assert not valid_locally(top)
    assert not Path(dep).exists()
    backoff = tmp_path / "state" / "backoff.json"  # the builder is sound: not backed off
    assert "hl1" not in (json.loads(backoff.read_text() or "{}") if backoff.exists() else {})


def test_offload_build_refuses_it_leaves_the_builder_out_and_builds_here(
    strays_fleet: Fleet, tmp_path: Path, claimed: tuple[Path, str, str, str]
) -> None:
    file, top, dep, _ = claimed
    line = member_line(strays_fleet, "hl1")
    done = offload(strays_fleet, tmp_path, file, "-A", "top", "--builders", line, "--json")
    assert done.returncode == 0, done.stderr
    assert built_on(done.stdout) == {"top": "local"}
    assert Path(top).read_text() == "here\n"  # not the builder's "there"
    assert not valid_locally(dep)
    assert not Path(dep).exists()
    said = f"refer to '{dep}', which is made by no derivation of this run and is not valid here"
    downs = [
        event
        for event in map(json.loads, done.stdout.splitlines())
        if event.get("event") == "machine" and event.get("state") == "down"
    ]
    assert [event["machine"] for event in downs] == ["hl1"]
    assert said in downs[0]["message"], downs
    assert said in done.stderr
