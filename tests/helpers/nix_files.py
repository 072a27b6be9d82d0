"""Nix files written by tests, and what Nix says about their outputs.

Every file gets a fresh salt, so every output is new to every store. Builders run without a
sandbox and with an empty PATH: they call programs by full path, and the ones that only run on
fleet members (which share /tmp with the host, root builds) leave markers and counters under the
test's ``tmp_path``. Each output can record the builder's speed file (``SPEED``), which proves
where it was built.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

# The builder's speed file, or "local" where there is none (the local machine).
SPEED = "(/bin/cat /etc/nix/offload-speed 2>/dev/null || echo local)"
PREAMBLE = """let
  salt = "{salt}";
  mk = name: script: extra: derivation ({{
    inherit name salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  }} // extra);
in
"""


def nix_file(tmp_path: Path, body: str, name: str = "default.nix") -> Path:
    """A Nix file of ``mk NAME SCRIPT EXTRA`` derivations with a fresh salt."""
    path = tmp_path / name
    path.write_text(PREAMBLE.format(salt=uuid.uuid4().hex) + body)
    return path


def salt_of(file: Path) -> str:
    """The salt ``nix_file`` wrote into ``file``."""
    return file.read_text().split('"')[1]


def marker_script(marker: Path, then: str) -> str:
    """Shell (inside a Nix string): write the builder's speed to ``marker`` atomically, ``then``."""
    return f"{SPEED} > {marker}.tmp; /bin/mv {marker}.tmp {marker}; {then}"


def out_path(file: Path, attr: str) -> str:
    """The ``out`` path of ``attr`` in ``file``, without building it."""
    drv = subprocess.run(
        ["nix-instantiate", str(file), "-A", attr],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return subprocess.run(
        ["nix-store", "-q", "--outputs", drv], capture_output=True, text=True, check=True
    ).stdout.split()[0]


def valid_locally(path: str) -> bool:
    done = subprocess.run(["nix-store", "--check-validity", path], capture_output=True, check=False)
    return done.returncode == 0
