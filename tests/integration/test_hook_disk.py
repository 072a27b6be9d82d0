"""offload-hook under real Nix 2.8 when its state directory is full (a tmpfs of its own,
filled, in a mount namespace the test makes): every derivation is declined with one line and
Nix builds it itself, instead of the whole nix-build failing on the hook's missing reply. The
history database there says to free space, not to check its files."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.nix_files import nix_file, valid_locally

HOOK = str(Path(sys.executable).parent / "offload-hook")


def test_a_full_state_directory_leaves_the_builds_to_nix(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    file = nix_file(
        tmp_path, '[ (mk "full-a" "echo a > $out" {}) (mk "full-b" "echo b > $out" {}) ]\n'
    )
    # A builder for another system: asked about, never contacted.
    build = [
        "nix-build", str(file), "--no-out-link", "--option", "build-hook", HOOK,
        "--option", "substituters", "", "--builders", "ssh://127.0.0.1 aarch64-linux - 1 1",
        "-j1",
    ]  # fmt: skip
    script = (
        f"mount -t tmpfs -o size=64k none {shlex.quote(str(state))} && "
        f"(dd if=/dev/zero of={shlex.quote(str(state / 'fill'))} bs=1k count=64 2>/dev/null; "
        f"exec {shlex.join(build)})"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OFFLOAD_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    outputs = done.stdout.split()
    assert len(outputs) == 2
    assert all(valid_locally(path) for path in outputs)
    assert "No space left on device" in done.stderr
    assert "unexpected EOF" not in done.stderr


_OPEN_HISTORY = """
import sys
from pathlib import Path
from offload.errors import OffloadError
from offload.history.db import History
try:
    History(Path(sys.argv[1]) / "history.sqlite")
except OffloadError as exc:
    print(exc.message)
    print(exc.hint)
"""


def test_a_history_on_a_full_disk_says_to_free_space(tmp_path: Path) -> None:
    # Real SQLite on a full tmpfs (in a mount namespace of the test's): its hint told to check
    # the files' owner and mode, which are fine, so a user went looking in the wrong place.
    state = tmp_path / "state"
    state.mkdir()
    script = (
        f"mount -t tmpfs -o size=64k none {shlex.quote(str(state))} && "
        f"(dd if=/dev/zero of={shlex.quote(str(state / 'fill'))} bs=1k count=64 2>/dev/null; "
        f'exec "$0" -c "$1" "$2")'
    )
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    done = subprocess.run(
        [*argv, sys.executable, _OPEN_HISTORY, str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    message, hint = done.stdout.splitlines()
    assert (
        message
        == f"{state}/history.sqlite: cannot use the history database: database or disk is full"
    )
    assert hint == f"free space on the file system that holds {state} (df shows it)"


def test_a_builders_full_disk_is_the_builders_fault_not_the_derivations(tmp_path: Path) -> None:
    # Nix's answer when the builder's store filled up: the hook reported the derivation as
    # failed (exit 100), the builder was not backed off, and the next one went there again.
    import asyncio

    from offload.errors import TransportError
    from offload.hook.remote import build_remote
    from offload.hook.wire import Accepted, HookIO, TryRequest
    from offload.protocol.serve import BuildOptions, BuildResult, BuildStatus

    file = nix_file(tmp_path, '{ big = mk "big" "echo > $out" {}; }\n')
    drv = subprocess.run(
        ["nix-instantiate", str(file), "-A", "big"], capture_output=True, text=True, check=True
    ).stdout.strip()
    note = (
        f"builder for '{drv}' failed with exit code 1\n"
        "note: build failure may have been caused by lack of free disk space"
    )

    class Builder:
        async def build_derivation(self, *_: object, **__: object) -> BuildResult:
            return BuildResult(status=BuildStatus.TRANSIENT_FAILURE, error_msg=note)

    said: list[bytes] = []
    request = TryRequest(True, "x86_64-linux", drv, frozenset())
    with pytest.raises(TransportError) as raised:
        asyncio.run(
            build_remote(
                HookIO(said.append, lambda _data: None),
                request,
                Accepted((), ("out",)),
                local=object(),  # type: ignore[arg-type] # nothing to send: no inputs
                remote=Builder(),  # type: ignore[arg-type]
                machine="fast",
                options=BuildOptions(),
            )
        )
    assert raised.value.peer == "fast"  # the builder's: backed off, the build placed again
    assert raised.value.message.startswith("fast's disk is full (Nix: note: build failure")
