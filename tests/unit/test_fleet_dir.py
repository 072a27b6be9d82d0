"""Where `offload fleet up` may keep a fleet: never in a directory that holds files of its
own (nothing is started: the refusal comes first)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from offload.errors import FleetError
from offload.fleet import MemberSpec, fleet_up


def test_a_directory_with_files_of_its_own_is_not_taken_for_a_fleet(tmp_path: Path) -> None:
    # `fleet up --dir /tmp`: the directory was made 0700, and `fleet down --purge` removed it
    # whole with the user's files.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    (shared / "userfile").write_text("keep\n")
    with pytest.raises(FleetError, match="holds files of its own: it is not a fleet directory"):
        fleet_up(shared, [MemberSpec.parse("a:1:1")], euid=0, platform="linux")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert sorted(p.name for p in shared.iterdir()) == ["userfile"]
