"""Where kept ssh masters live (``offload.transport.persist``): a usable directory or none."""

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.transport.persist import kept, kept_dir, location
from offload.transport.ssh import SshTarget
from tests.helpers.users import as_another_user


@pytest.fixture
def short() -> Iterator[Path]:
    """A directory short enough for a socket path: a long one moves them to /tmp."""
    made = Path(tempfile.mkdtemp(prefix="ofp", dir="/tmp"))
    yield made
    shutil.rmtree(made)


def test_the_state_directory_holds_the_sockets_made_private(short: Path) -> None:
    made = kept_dir(short / "state")
    assert made == location(short / "state") == short / "state" / "ssh"
    assert stat.S_IMODE(made.stat().st_mode) == 0o700


def test_no_kept_masters_where_the_directory_is_not_one(short: Path) -> None:
    (short / "state").mkdir()
    (short / "state" / "ssh").write_text("not a directory")
    assert kept_dir(short / "state") is None


def test_another_users_view_of_roots_kept_masters_is_none_not_an_error(short: Path) -> None:
    # `offload status` run by a user reads the nix-daemon's state too when it can (root's,
    # /var/lib/offload, readable), whose ssh directory is root's alone.
    state = short / "state"
    kept_dir(state)  # made 0700, root's: the tests run as root (README)
    short.chmod(0o755)
    state.chmod(0o755)
    answer = as_another_user(lambda: str(kept(state, SshTarget("b"), "", [])))
    assert answer == "False"


def test_a_long_state_and_a_long_tmpdir_still_give_a_short_enough_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ssh refuses a control socket past 108 bytes: a TMPDIR as long as pytest's own (or a
    # CI's) made every session fail with "too long for Unix domain socket".
    deep = tmp_path / ("d" * 60)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    place = location(deep / "state")
    assert place.parent == Path("/tmp")
    assert place.name.startswith(f"offload-ssh-{os.getuid()}-")
    short_tmp = Path("/tmp/ofx")
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    assert location(deep / "state") == short_tmp / place.name
    # Each state directory its own, as <state>/ssh is: two fleets' runs never share masters
    # (every state too long for a socket there shared /tmp/offload-ssh-<uid>).
    assert location(deep / "other") != location(deep / "state")
