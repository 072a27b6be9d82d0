"""A hook started the way nixpkgs wraps Python programs starts its coordinator.

nixpkgs' wrapper puts offload and its dependencies on the import path from inside the hook's
script (``site.addsitedir``), not in the environment; the coordinator is started as
``python -m`` with the hook's interpreter, the store's bare one. Here the bare interpreter is
the one this virtual environment was made from, and the script adds the environment's site
directory as the wrapper would.
"""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

from tests.helpers.offload_run import stop_coordinators

_WRAPPED = """
import site, sys
site.addsitedir(sys.argv[2])  # what nixpkgs' wrapper writes at the top of the script
from offload.hook import rendezvous
state = sys.argv[1]
sock = rendezvous.coordinator(state, rendezvous.socket_path(state))
sock.close()
print("connected")
"""


def test_a_hook_wrapped_as_nixpkgs_wraps_it_starts_its_coordinator(tmp_path: Path) -> None:
    bare = getattr(sys, "_base_executable", sys.executable)
    plain = subprocess.run([bare, "-c", "import offload"], capture_output=True, check=False)
    assert plain.returncode != 0  # offload is not on the bare interpreter's own path
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    try:
        done = subprocess.run(
            [bare, "-c", _WRAPPED, str(state), site.getsitepackages()[0]],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        # It said: no coordinator (... No module named 'offload' ...); every hook then
        # decided alone, without the queue, the loads or the kept sessions.
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "connected"
    finally:
        stop_coordinators(state)
