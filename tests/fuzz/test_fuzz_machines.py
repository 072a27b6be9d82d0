"""Machines specs and ``@`` includes: what Nix's machines format takes from outside.

Contract (``config.machines``): ``read_machines`` never raises; it returns machines, one-line
warnings and one-line ``ConfigError``s (each naming ``file:line``). ``parse_machines`` raises the
first of those. ``read_text_file`` returns the text or ``None`` (missing file), or raises a
one-line ``ConfigError``; it reads at most 4 MiB, and from a pipe for its timeout at most.
Nothing a machine is named or shown as carries control characters.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.config.machines import (
    Machine,
    decode_host_key,
    encode_host_key,
    machine_problems,
    parse_machines,
    parse_store_uri,
    read_machines,
    read_text_file,
)
from offload.config.machines.files import MAX_BYTES
from offload.errors import ConfigError
from tests.fuzz.support import FUZZ, one_line, outcome

PIECES = [
    "ssh://", "ssh-ng://", "http://", "unix://", "local", "auto", "daemon", "root@", "@", "@@",
    "host", "h.example", ":22", ":0", ":99999", "[::1]", "[", "]", "?", "=", "&", "%zz", "%0a",
    "ssh-key=", "base64-ssh-public-host-key=", "x86_64-linux", ",", "-", " ", "\t", "\n", "\r",
    ";", "#", "0", "8", "+8", "1.5", "1e40", "inf", "nan", "-1", "4294967296", "kvm,big",
    "c3NoLWVkMjU1MTkgQUFBQQ==", "AAAA", "=", "\x00", "\x1b[31m", "\udcff", "\u2028", "é", "/",
    "@/i/a", "@a", "@/i/b", "@/nonexistent", "@/i/loop",
]  # fmt: skip

specs = st.lists(st.sampled_from(PIECES) | st.text(max_size=6), max_size=40).map("".join)
any_text = st.text(max_size=300)


def _files(a: str, b: str) -> dict[str, str | None]:
    return {"/i/a": a, "/i/b": b, "/i/loop": "@/i/loop\n", "/i/gone": None}


def _check_reading(text: str, files: dict[str, str | None]) -> None:
    def read_file(path: str) -> str | None:
        if path == "/i/bad":
            raise ConfigError(f"cannot read machines file {path}: Permission denied")
        return files.get(path)

    reading = read_machines(
        text, source="/etc/nix/machines", system="x86_64-linux", read_file=read_file,
        base_dir=Path("/i"),
    )  # fmt: skip
    for error in reading.errors:
        one_line(error, ConfigError)
    for line in reading.warnings:
        assert "\n" not in line, repr(line)
    for note in reading.compat:
        assert "\n" not in note.message((2, 8)), repr(note)
    for machine in reading.machines:
        _check_machine(machine)
    result = outcome(
        lambda: parse_machines(
            text, source="--builders", system="x86_64-linux", read_file=read_file,
            base_dir=Path("/i"),
        ),
        ConfigError,
    )  # fmt: skip
    assert isinstance(result, ConfigError) == bool(reading.errors)


def _check_machine(machine: Machine) -> None:
    assert machine.name, machine
    assert machine.name.isprintable(), repr(machine.name)
    assert machine.max_jobs >= 0
    assert machine.speed_factor > 0
    for problem in machine_problems(machine, lambda _: False):
        assert "\n" not in problem, repr(problem)


@FUZZ
@given(specs, specs, specs)
def test_machines_spec_pieces(text: str, a: str, b: str) -> None:
    _check_reading(text, _files(a, b))


@FUZZ
@given(any_text, any_text)
def test_machines_spec_any_text(text: str, a: str) -> None:
    _check_reading(text, _files(a, "@/i/a"))


@FUZZ
@given(st.binary(max_size=300))
def test_machines_spec_from_bytes(data: bytes) -> None:
    # What read_text_file hands on for a file that is not UTF-8.
    _check_reading(data.decode(errors="surrogateescape"), {})


@FUZZ
@given(specs)
def test_store_uri(raw: str) -> None:
    # Contract: a StoreUri, or ValueError with a one-line reason.
    try:
        uri = parse_store_uri(raw)
    except ValueError as exc:
        reason = str(exc)
    else:
        reason = ""
        assert uri.scheme
    assert "\n" not in reason, repr(reason)


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=150).map(lambda b: encode_host_key(b.hex())))
def test_host_key(text: str) -> None:
    # Contract: the key line, or ValueError with a one-line reason.
    try:
        line = decode_host_key(text)
    except ValueError as exc:
        line = str(exc)
    assert line.isprintable(), repr(line)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("machines")


@FUZZ
@given(data=st.binary(max_size=4096))
def test_include_file_bytes(scratch: Path, data: bytes) -> None:
    path = scratch / "machines"
    path.write_bytes(data)
    text = read_text_file(str(path))
    assert text is not None
    assert text.encode(errors="surrogateescape") == data
    _check_reading(text, {})


def test_include_of_an_endless_device_is_refused_early() -> None:
    # @/dev/zero: a character device that never ends; read up to the bound and no further.
    result = outcome(lambda: read_text_file("/dev/zero"), ConfigError)
    assert isinstance(result, ConfigError)
    assert "larger than 4 MiB" in result.message


def test_include_of_an_endless_pipe_is_refused_at_the_bound(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    stop = threading.Event()

    def writer() -> None:
        with fifo.open("wb") as out:
            chunk = b"host x86_64-linux\n" * 4096
            written = 0
            while not stop.is_set() and written <= 2 * MAX_BYTES:
                try:
                    out.write(chunk)
                except BrokenPipeError:
                    return
                written += len(chunk)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = outcome(lambda: read_text_file(str(fifo)), ConfigError)
    finally:
        stop.set()
        thread.join()
    assert isinstance(result, ConfigError)
    assert "larger than 4 MiB" in result.message


def test_include_of_a_silent_pipe_ends_at_the_timeout(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # a writer that never writes nor closes
    try:
        result = outcome(lambda: read_text_file(str(fifo), timeout=0.2), ConfigError)
    finally:
        os.close(fd)
    assert isinstance(result, ConfigError)
    assert "no end of file within 0.2 s" in result.message
