"""A derivation the hook cannot carry is declined before any builder sees it, with one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from offload.hook.context import load_context
from offload.hook.keep import Keep
from offload.hook.wire import HookIO, TryRequest


def test_a_derivation_that_cannot_be_read_here_is_left_to_nix(tmp_path: Path) -> None:
    # Accepted, it failed at once after the accept (read_derivation), where Nix could build
    # it: a newer Nix's format (dynamic derivations' DrvWithVersion), or a .drv gone.
    said: list[bytes] = []
    context = load_context(
        {"max-jobs": "0", "system": "x86_64-linux", "builders": "ssh://m x86_64-linux - 1 1"},
        state=tmp_path, verbosity=1, env={}, io=HookIO(said.append, lambda _b: None),
        parent=os.getpid(), keep=Keep(tmp_path),
    )  # fmt: skip
    drv = f"/nix/store/{'0' * 32}-absent.drv"
    assert context.left_to_nix(TryRequest(False, "x86_64-linux", drv, frozenset()))
    text = b"".join(said).decode()
    assert "# decline\n" in text
    (line,) = [x for x in text.splitlines() if x.startswith("@nix ")]
    message = json.loads(line.removeprefix("@nix "))["msg"]
    assert message.startswith(f"offload-hook: '{drv}' is left to Nix: offload-hook cannot read")
