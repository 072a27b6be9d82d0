"""``Evaluation``: Nix evaluates from the moment offload knows what to build, against Nix 2.8.

The expressions read a FIFO, so the test can tell when nix-instantiate runs without timing it:
opening a FIFO for writing returns only once a reader has it open."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest

from offload.errors import NixError
from offload.nix import Evaluation, Installables

WAIT = 30.0  # generous for a loaded machine; reached only when the behaviour is broken


def _expr(fifo: Path, marker: str) -> str:
    return (
        f'derivation {{ name = "early-{marker}"; system = builtins.currentSystem; '
        f'builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; '
        f"value = builtins.readFile {fifo}; }}"
    )


def _write_when_read(fifo: Path, text: str) -> threading.Thread:
    def write() -> None:
        with fifo.open("w") as sink:  # blocks until Nix opens the FIFO
            sink.write(text)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


def _release(fifo: Path) -> None:
    """Unblock a writer no evaluator came for (the failure path), so the thread ends."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    os.close(fd)


def _children() -> set[int]:
    """This process's children, from their stat lines (a child's cmdline may still read empty
    just after it is started)."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(entry.name))
    return found


def test_nix_is_evaluating_before_the_roots_are_asked_for(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    marker = uuid.uuid4().hex
    with Evaluation(Installables(files=(_expr(fifo, marker),), expr=True)) as evaluation:
        writer = _write_when_read(fifo, "x")
        writer.join(WAIT)
        if writer.is_alive():
            _release(fifo)
            pytest.fail("nix-instantiate had not started before roots() was called")
        ((drv, output),) = evaluation.roots()
    assert drv.endswith(f"-early-{marker}.drv")
    assert output == "out"


def test_an_evaluation_given_up_on_leaves_no_evaluator_behind(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = _children()
    with Evaluation(Installables(files=(_expr(fifo, uuid.uuid4().hex),), expr=True)):
        # Nix blocks on the FIFO no one writes: it is still evaluating when the block ends.
        evaluators = _children() - before
        assert len(evaluators) == 1
    (pid,) = evaluators
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped


def test_a_failed_early_evaluation_is_nix_error_with_nix_words() -> None:
    evaluation = Evaluation(Installables(files=('throw "no such thing"',), expr=True))
    with evaluation, pytest.raises(NixError) as caught:
        evaluation.roots()
    assert "no such thing" in caught.value.message
