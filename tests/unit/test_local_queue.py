"""The hook's record of what it declined to each Nix process (``offload.hook.local_queue``):
local slots busy until the declines are expected done, and the files of ended Nix processes
removed."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from offload.hook.context import load_context
from offload.hook.keep import Keep
from offload.hook.local_queue import LocalQueue
from offload.hook.wire import HookIO, TryRequest


def test_a_local_slot_frees_once_the_declines_before_it_are_expected_done(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path, os.getpid())
    assert queue.start("/nix/store/a.drv", 1, now=0.0) == 0.0
    queue.add("/nix/store/a.drv", 10.0)
    assert queue.start("/nix/store/b.drv", 1, now=1.0) == 10.0
    assert queue.start("/nix/store/b.drv", 2, now=1.0) == 1.0  # a second slot is free
    assert queue.start("/nix/store/a.drv", 1, now=1.0) == 1.0  # asked again: still waiting
    assert queue.start("/nix/store/b.drv", 1, now=11.0) == 11.0  # past its end


@pytest.mark.parametrize(
    "text", ["[]", '{"/nix/store/x.drv": Infinity}', '{"/nix/store/x.drv": NaN}', "1" * 400, "{"]
)
def test_a_damaged_queue_file_is_an_empty_queue(tmp_path: Path, text: str) -> None:
    # "[]" raised AttributeError in the hook; Infinity held a local slot for ever; a 400-digit
    # number overflowed.
    queue = LocalQueue(tmp_path, os.getpid())
    queue.path.parent.mkdir(parents=True)
    queue.path.write_text(text, encoding="utf-8")
    assert queue.start("/nix/store/b.drv", 1, now=5.0) == 5.0
    queue.add("/nix/store/b.drv", 9.0)
    assert queue.start("/nix/store/c.drv", 1, now=6.0) == 9.0


def test_the_files_of_ended_nix_processes_go_when_a_new_one_is_made(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is free now (reaped)
    LocalQueue(tmp_path, gone.pid).add("/nix/store/a.drv", 5.0)
    LocalQueue(tmp_path, os.getpid()).add("/nix/store/b.drv", 5.0)  # alive: kept
    assert sorted(p.name for p in (tmp_path / "local-queue").iterdir()) == [f"{os.getpid()}.json"]
    assert LocalQueue(tmp_path, os.getpid()).start("/nix/store/c.drv", 1, now=1.0) == 5.0


def test_a_decline_asked_about_again_while_local_slots_are_full_holds_no_slot(
    tmp_path: Path,
) -> None:
    # Nix built none of a declined derivation (its own slots were full) and asks again: the
    # entry goes, or the local slot would look busy until the derivation's expected end.
    said: list[bytes] = []
    context = load_context(
        {"max-jobs": "1", "system": "x86_64-linux", "builders": ""},
        state=tmp_path, verbosity=0, env={}, io=HookIO(said.append, said.append),
        parent=os.getpid(), keep=Keep(tmp_path),
    )  # fmt: skip

    def ask(name: str, *, willing: bool = True) -> TryRequest:
        drv = f"/nix/store/{'a' * 32}-{name}.drv"
        return TryRequest(willing, "x86_64-linux", drv, frozenset())

    now = time.time()
    assert context.local_offer(ask("d"), now).start == now
    context.declined(ask("d"), now + 60)
    assert context.local_offer(ask("e"), now).start == now + 60  # d holds the one slot
    assert context.local_offer(ask("d", willing=False), now).later
    assert context.local_offer(ask("e"), now).start == now
    # Nix's slots all busy: when one frees is known from the builds declined to it, and not
    # known where they do not fill its slots (Nix started one unasked).
    context.declined(ask("f"), now + 90)
    assert context.local_offer(ask("g", willing=False), now).start == now + 90
    assert context.local_offer(ask("f", willing=False), now).start is None
