"""Where `offload fleet up` may keep a fleet: never in a directory that holds files of its
own (nothing is started: the refusal comes first)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from offload.errors import FleetError
from offload.fleet import MemberSpec, fleet_down, fleet_up
from offload.fleet.files import prepare_dir
from offload.fleet.spec import CLIENT_KEY


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


def test_a_purge_cut_short_leaves_a_directory_the_next_purge_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Ctrl-C while a member's large store was removed: the fleet's own files had gone
    # first (directory order), and the next purge refused the rest as no fleet's.
    fleet = tmp_path / "fleet"
    (fleet / "a" / "store").mkdir(parents=True)
    (fleet / "a" / "store" / "path").write_text("x")
    (fleet / CLIENT_KEY).write_text("key")
    (fleet / f"{CLIENT_KEY}.pub").write_text("key.pub")
    real = shutil.rmtree

    def cut_short(path: Path) -> None:
        """rmtree as a Ctrl-C finds it: what comes first in the directory (here the fleet's
        own files) gone, then stopped in a member's store."""
        for entry in Path(path).iterdir():
            if entry.is_file():
                entry.unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", cut_short)
    with pytest.raises(KeyboardInterrupt):
        fleet_down(fleet, purge=True)
    monkeypatch.setattr(shutil, "rmtree", real)
    assert (fleet / CLIENT_KEY).exists()
    fleet_down(fleet, purge=True)
    assert not fleet.exists()


def test_a_key_pair_left_half_made_is_made_again(tmp_path: Path) -> None:
    # ssh-keygen on a full disk left client_key and an empty client_key.pub: every later
    # `fleet up` took it, and its members refused the key ("Permission denied (publickey)").
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / CLIENT_KEY).write_text("half\n")
    (fleet / f"{CLIENT_KEY}.pub").write_text("")
    prepare_dir(fleet)
    assert (fleet / CLIENT_KEY).read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (fleet / f"{CLIENT_KEY}.pub").read_text().startswith("ssh-ed25519 ")
    assert stat.S_IMODE((fleet / CLIENT_KEY).stat().st_mode) == 0o600
    assert sorted(p.name for p in fleet.iterdir()) == [CLIENT_KEY, f"{CLIENT_KEY}.pub"]
    made = (fleet / CLIENT_KEY).read_text()
    prepare_dir(fleet)  # a whole pair is kept
    assert (fleet / CLIENT_KEY).read_text() == made
