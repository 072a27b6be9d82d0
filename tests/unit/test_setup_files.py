"""`offload setup`'s files: printed under headers, or written into a directory all or none."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from offload.errors import ConfigError
from offload.setup.files import render, write_files


def test_files_are_written_all_or_none_and_never_over_old_ones(tmp_path: Path) -> None:
    files = [("a.nix", "A\n"), ("b.sh", "B\n")]
    written = write_files(tmp_path / "out", files)
    assert [(w.path.read_text(), w.new) for w in written] == [("A\n", True), ("B\n", True)]
    assert (tmp_path / "out" / "b.sh").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "a.nix").stat().st_mode & 0o777 == 0o644
    other = tmp_path / "other"
    other.mkdir()
    (other / "b.sh").write_text("mine\n")
    with pytest.raises(ConfigError, match="already exists"):
        write_files(other, files)
    assert sorted(p.name for p in other.iterdir()) == ["b.sh"]
    assert (other / "b.sh").read_text() == "mine\n"


def test_each_file_is_on_disk_whole_before_it_takes_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Linked in unsynced, a crash could leave an empty nix.conf or machines file.
    synced: list[tuple[bytes, list[str]]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        there = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
        synced.append((Path(f"/proc/self/fd/{fd}").read_bytes(), there))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_files(tmp_path / "out", [("a.nix", "A\n"), ("b.sh", "B\n")])
    assert synced == [(b"A\n", []), (b"B\n", ["a.nix"])]


def test_printed_files_come_under_their_headers() -> None:
    text = render([("a", "1\n"), ("b", "2\n")], {"a": "here"})
    assert text == "# ==> a: here <==\n1\n\n# ==> b <==\n2\n"


def test_written_files_get_the_mode_the_umask_allows(tmp_path: Path) -> None:
    before = os.umask(0o077)
    try:
        write_files(tmp_path / "out", [("a.nix", "A\n"), ("b.sh", "B\n")])
    finally:
        os.umask(before)
    assert (tmp_path / "out" / "a.nix").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "out" / "b.sh").stat().st_mode & 0o777 == 0o700


def test_a_directory_made_for_the_files_is_at_most_0755_and_goes_if_they_fail(
    tmp_path: Path,
) -> None:
    # Under umask 000 it was 0777, holding the script root runs on the builder; a write that
    # failed left it behind, empty.
    before = os.umask(0)
    try:
        write_files(tmp_path / "out", [("a.nix", "A\n")])
        write_files(tmp_path / "up" / "out", [("a.nix", "A\n")])  # the one above too
        with pytest.raises(ConfigError, match=r"^cannot write in .*new"):
            # The second file's name makes its scratch file fail: the first goes, and so
            # do the directories made for them.
            write_files(tmp_path / "new" / "er", [("a.nix", "A\n"), ("sub/b.sh", "B\n")])
    finally:
        os.umask(before)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "up").stat().st_mode & 0o777 == 0o755
    assert not (tmp_path / "new").exists()


def test_files_already_there_with_the_same_text_are_left_and_said_unchanged(
    tmp_path: Path,
) -> None:
    # The same `setup client --write DIR` run again was refused for its own files.
    files = [("a.nix", "A\n"), ("b.sh", "B\n")]
    first = write_files(tmp_path, files[:1])
    before = (tmp_path / "a.nix").stat()
    again = write_files(tmp_path, files)
    assert [(w.path.name, w.new) for w in first] == [("a.nix", True)]
    assert [(w.path.name, w.new) for w in again] == [("a.nix", False), ("b.sh", True)]
    assert (tmp_path / "a.nix").stat().st_ino == before.st_ino
    assert (tmp_path / "b.sh").read_text() == "B\n"


@pytest.mark.parametrize("there", ["A\nmore\n", None])
def test_a_name_taken_by_other_text_or_a_link_refuses_every_file(
    tmp_path: Path, there: str | None
) -> None:
    if there is None:
        (tmp_path / "a.nix").symlink_to(tmp_path / "elsewhere")
    else:
        (tmp_path / "a.nix").write_text(there)
    with pytest.raises(ConfigError, match="already exists with other contents"):
        write_files(tmp_path, [("b.sh", "B\n"), ("a.nix", "A\n")])
    assert not (tmp_path / "b.sh").exists()
