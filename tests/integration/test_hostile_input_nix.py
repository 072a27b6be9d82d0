"""Input from outside that real Nix passes through to offload (issue #14): never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_an_evaluation_error_in_latin1_is_one_error_line(tmp_path: Path) -> None:
    file = tmp_path / "latin1.nix"
    file.write_bytes(b'let x = "caf\xe9"; in throw "bad ${x}"')
    done = subprocess.run(
        [sys.executable, "-m", "offload", "build", str(file), "--no-out-link"],
        capture_output=True,
        check=False,
    )
    err = done.stderr.decode("utf-8")  # offload's own stderr is UTF-8 whatever Nix printed
    assert done.returncode == 1, err
    assert "Traceback" not in err
    # Nix's own message comes through whole, its Latin-1 byte replaced.
    assert "error: bad caf\ufffd" in err
