"""preferLocalBuild on the fleet: such a derivation is built on the local machine whenever the
local machine can build it, as Nix does (it never asks its hook for one), even with faster
builders free and its input on one of them; with -j 0 the builders build it (Nix since 2.4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.nix_files import SPEED, nix_file, out_path
from tests.helpers.offload_run import built_on, offload

BODY = f"""rec {{
  input = mk "input" "{SPEED} > $out" {{}};
  env = mk "env" "/bin/cat ${{input}} > $out; {SPEED} >> $out" {{ preferLocalBuild = true; }};
  plain = mk "plain" "/bin/cat ${{input}} > $out; {SPEED} >> $out" {{}};
  all = mk "all" "/bin/cat ${{env}} ${{plain}} > $out" {{ preferLocalBuild = true; }};
}}
"""


@pytest.mark.parametrize(("jobs", "local"), [("1", True), ("0", False)], ids=["j1", "j0"])
def test_prefer_local_build_goes_to_the_local_machine_when_it_has_slots(
    fleet, tmp_path: Path, jobs: str, local: bool
) -> None:
    file = nix_file(tmp_path, BODY)
    done = offload(
        fleet,
        tmp_path,
        file,
        "-A",
        "all",
        "--builders",
        f"@{fleet.machines_file}",
        "-j",
        jobs,
        "--json",
        "--no-out-link",
    )
    assert done.returncode == 0, done.stderr
    where = built_on(done.stdout)
    # Without the attribute a build goes where it ends first: a builder, the fastest free one.
    assert where["input"] != "local"
    assert where["plain"] != "local"
    assert (where["env"] == "local") is local
    assert (where["all"] == "local") is local
    # all = env's lines (input's maker, env's) then plain's: the outputs say where, too.
    lines = Path(out_path(file, "all")).read_text().split()
    assert len(lines) == 4
    assert (lines[1] == "local") is local
    assert lines[3] != "local"
