"""Every file a user names is read bounded in size and time, as an ``@`` machines file is: a DAG
file (``offload simulate``, ``demo --graph``), an offload.toml (``--config``) and a public key
(``setup builder --key @FILE``). ``/dev/zero`` or a FIFO nobody writes to is a one-line error
naming the file, not a command that never ends.

Each reader runs in a child process with its memory capped and a deadline: one that reads
without bound fails the test instead of hanging it (or filling the machine's memory).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

_CHILD = """
import sys
from pathlib import Path
from offload.config.machines import files
files._TIMEOUT = 0.2  # a FIFO's wait, short for the test
from offload.errors import ConfigError
from offload.dagfile import load_dag
from offload.config.toml import load_offload_toml
from offload.cli.setup import _public_key
reader, name = sys.argv[1], sys.argv[2]
calls = {
    "dag": lambda: load_dag(Path(name)),
    "toml": lambda: load_offload_toml(Path(name), {}),
    "key": lambda: _public_key("@" + name),
}
try:
    calls[reader]()
except ConfigError as exc:
    print(exc.message)
else:
    print("read")
"""


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("reader", ["dag", "toml", "key"])
@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
def test_a_file_a_user_names_is_read_bounded(
    reader: str, kind: str, fifo: Path, tmp_path: Path
) -> None:
    name = {"device": "/dev/zero", "fifo": str(fifo), "directory": str(tmp_path)}[kind]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, reader, name],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_memory,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    said = done.stdout.strip()
    what = {"dag": "DAG file", "toml": "offload.toml", "key": "public key file"}[reader]
    expected = {
        "device": f"{what} /dev/zero is larger than 4 MiB; not read",
        "fifo": f"{what} {fifo} gave no end of file within 0.2 s; not read",
        "directory": f"cannot read {what} {tmp_path}: Is a directory",
    }[kind]
    assert said == expected
