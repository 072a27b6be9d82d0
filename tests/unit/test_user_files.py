"""Every file a user names is read bounded in size and time, as an ``@`` machines file is: a DAG
file (``offload simulate``, ``demo --graph``), an offload.toml (``--config``) and a public key
(``setup builder --key @FILE``), and the fleet.json of a fleet directory (``--dir``).
``/dev/zero`` or a FIFO nobody writes to is a one-line error
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
files._NAMED_TIMEOUT = float(sys.argv[3])  # one named on the command line: as the test says
from offload.errors import OffloadError
from offload.dagfile import load_dag
from offload.config.toml import load_offload_toml
from offload.cli.setup import _public_key
from offload.fleet.state import load_state
reader, name = sys.argv[1], sys.argv[2]
calls = {
    "dag": lambda: load_dag(Path(name)),
    "toml": lambda: load_offload_toml(Path(name), {}),
    "key": lambda: _public_key(["@" + name]),
    "fleet": lambda: load_state(Path(name).parent),
}
try:
    calls[reader]()
except OffloadError as exc:
    print(exc.message)
else:
    print("read")
"""


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def _read_in_child(reader: str, name: Path, named_timeout: float = 0.2) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, reader, str(name), str(named_timeout)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_memory,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.parametrize("reader", ["dag", "toml", "key", "fleet"])
@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
def test_a_file_a_user_names_is_read_bounded(reader: str, kind: str, tmp_path: Path) -> None:
    name = tmp_path / "fleet.json"  # the name load_state reads in the directory
    if kind == "device":
        name.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(name)
    else:
        name.mkdir()
    what = {
        "dag": "DAG file",
        "toml": "offload.toml",
        "key": "public key file",
        "fleet": "fleet state file",
    }[reader]
    expected = {
        "device": f"{what} {name} is larger than {64 if reader == 'dag' else 4} MiB; not read",
        "fifo": f"{what} {name} gave no end of file within 0.2 s; not read",
        "directory": f"cannot read {what} {name}: Is a directory",
    }[kind]
    assert _read_in_child(reader, name) == expected


@pytest.mark.parametrize("reader", ["dag", "toml", "key"])
def test_a_pipe_named_on_the_command_line_may_take_its_time(reader: str, tmp_path: Path) -> None:
    # `--key @<(ssh host cat key.pub)`: the producer logs in first, and offload gave up on it
    # after the 10 s an @ include of a machines file gets (0.2 s here): now it waits longer.
    source = tmp_path / "source"
    if reader == "key":
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", source], check=True)
        source = source.with_suffix(".pub")
    else:
        source.write_text('{"nodes": []}' if reader == "dag" else "")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # A slow producer: it writes 5 times the short wait after the reader opened the pipe.
    producer = subprocess.Popen(["sh", "-c", 'sleep 1; cat "$1" > "$2"', "sh", source, fifo])
    try:
        assert _read_in_child(reader, fifo, named_timeout=60) == "read"
    finally:
        producer.kill()
        producer.wait()


def test_a_fleet_state_nested_too_deeply_is_malformed(tmp_path: Path) -> None:
    (tmp_path / "fleet.json").write_text("[" * 100_000)
    said = _read_in_child("fleet", tmp_path / "fleet.json")
    assert said.startswith(f"{tmp_path}/fleet.json is malformed: maximum recursion depth"), said


def test_a_file_that_cannot_be_read_says_what_to_check(tmp_path: Path) -> None:
    from offload.dagfile import load_dag
    from offload.errors import OffloadError
    from offload.fleet.state import load_state

    (tmp_path / "file").write_text("")
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / "fleet.json").write_text('{"version": 99}')
    calls = {  # the errors had no hint line
        "DAG file": lambda: load_dag(tmp_path / "file" / "g.json"),
        "fleet state file": lambda: load_state(tmp_path / "file"),
        "state version": lambda: load_state(tmp_path / "fleet"),
    }
    for what, call in calls.items():
        with pytest.raises(OffloadError, match=what) as raised:
            call()
        assert raised.value.hint, (what, raised.value.message)


def test_a_hint_names_the_file_with_its_article(tmp_path: Path) -> None:
    # The hints said "name a offload.toml" and "that it is a offload.toml this user may read".
    from offload.config.toml import load_offload_toml
    from offload.errors import OffloadError

    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    hints = {}
    for name in ("dir", "file/offload.toml"):
        with pytest.raises(OffloadError) as raised:
            load_offload_toml(tmp_path / name, {})
        hints[name] = raised.value.hint
    assert hints == {
        "dir": "name an offload.toml, not a directory",
        "file/offload.toml": "check the path, and that it is an offload.toml this user may read",
    }
