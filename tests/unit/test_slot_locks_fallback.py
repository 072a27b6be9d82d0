"""A run whose state directory cannot hold its slot locks (a user's, read-only to it) holds
them under the temporary directory its hooks keep state in, said once, and builds."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from offload.cli.build_keep import slot_locks
from tests.helpers.users import as_another_user


def test_slots_go_to_the_spare_state_where_the_state_cannot_hold_them(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # "error: cannot use .../state/current-load: Read-only file system": the run stopped.
    shared = Path(tempfile.mkdtemp(prefix="ofl-slots-"))
    try:
        shared.chmod(0o1777)  # a /tmp of its own: nobody makes its directory there
        state = shared / "state"
        state.mkdir(mode=0o755)  # root's: the user reads it, cannot write it
        monkeypatch.setenv("TMPDIR", str(shared))

        def held_in() -> str:
            slots = slot_locks(state)
            fd = slots.try_acquire("local", 1)
            assert fd is not None
            os.close(fd)
            return str(slots.directory)

        said = as_another_user(held_in)
        assert said == f"{shared}/offload-hook-65534/state/current-load"
        err = capfd.readouterr().err
        assert f"warning: {state}/current-load: cannot hold build slots there" in err
    finally:
        shutil.rmtree(shared)
