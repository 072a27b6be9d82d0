"""The line a slot's holder writes, and what a reader makes of it (offload.slot_holders)."""

import os

from offload.procfs import pid_namespace
from offload.slot_holders import LINE_BYTES, SlotHolder, holder_line, read_holder_line
from offload.slots import SlotLocks


def _read(line: bytes, *, same_namespace: bool = True) -> SlotHolder:
    return read_holder_line(line.decode().strip(), same_namespace=same_namespace)


def test_a_line_says_its_holder_its_end_its_program_and_its_derivation():
    line = holder_line(4242, "pid:[1]", 1700000000.5, "hook", "hello-2.12")
    assert len(line) == LINE_BYTES
    assert line.endswith(b"\n")
    assert _read(line) == SlotHolder(4242, 1700000000.5, "hook", "hello-2.12")


def test_every_line_is_as_long_so_a_file_is_rewritten_in_place():
    lengths = {
        len(holder_line(1, "pid:[1]", None, None, None)),
        len(holder_line(4_194_304, "pid:[4026531836]", 1e10, "build", "x" * 211)),
    }
    assert lengths == {LINE_BYTES}


def test_a_name_too_long_for_the_line_is_cut_and_said_cut():
    name = "python3.11-" + "a" * 200 + "-1.0"
    said = _read(holder_line(4242, "pid:[4026531836]", 1e9, "build", name))
    assert said.drv is not None
    assert said.drv.endswith("...")
    assert name.startswith(said.drv[:-3])
    assert said.until == 1e9


def test_an_equals_sign_in_a_name_is_part_of_it():
    said = _read(holder_line(7, "pid:[1]", None, "build", "a=b-1.0"))
    assert (said.drv, said.until) == ("a=b-1.0", None)


def test_an_older_offloads_lines_are_read_without_program_or_derivation():
    assert _read(b"offload pid=12 ns=pid:[1] until=99.5\n") == SlotHolder(12, 99.5)
    assert _read(b"99.5\n") == SlotHolder(None, 99.5)  # an older hook's bare time
    assert _read(b"") == SlotHolder(None, None)  # Nix's own hook's empty file


def test_a_program_a_newer_offload_names_is_not_taken_for_one_known():
    said = _read(b"offload pid=12 until=1 by=daemon drv=x-1\n")
    assert (said.program, said.drv) == (None, "x-1")


def test_a_pid_from_another_namespace_is_no_pid_here():
    said = _read(holder_line(12, "pid:[2]", 5.0, "hook", "x-1"), same_namespace=False)
    assert said == SlotHolder(None, 5.0, "hook", "x-1")


def test_a_probe_says_who_holds_each_slot(tmp_path):
    hook = SlotLocks(tmp_path, program="hook")
    build = SlotLocks(tmp_path, program="build")
    first = hook.try_acquire("ssh:__b", 3, until=1234.5, drv="hello-2.12")
    second = build.try_acquire("ssh:__b", 3, drv="zlib-1.3")
    assert first is not None
    assert second is not None
    try:
        probe = SlotLocks(tmp_path, make=False).probe("ssh:__b", 3)
    finally:
        os.close(first)
        os.close(second)
    pid = os.getpid()
    assert probe.free == 1
    assert probe.holders == (
        SlotHolder(pid, 1234.5, "hook", "hello-2.12"),
        SlotHolder(pid, None, "build", "zlib-1.3"),
    )
    assert pid_namespace() in (tmp_path / "ssh:__b-0").read_text()
