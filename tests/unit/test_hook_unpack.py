"""Small NARs unpacked in Python: the same tree as `nix-store --restore` makes, or nothing."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from offload.errors import StoreError
from offload.hook.unpack import unpack_nar
from offload.protocol.wire import encode_str
from offload.store.nar import dump_nar


def _tree(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "hello").chmod(0o755)
    (root / "share").mkdir()
    (root / "share" / "empty").write_bytes(b"")
    (root / "share" / "data").write_bytes(bytes(range(256)) * 3)
    (root / "link").symlink_to("bin/hello")


def _listing(root: Path) -> list[tuple[str, str, bool, bytes]]:
    out = []
    for path in sorted([root, *root.rglob("*")]):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out.append((rel, "link", False, str(path.readlink()).encode()))
        elif path.is_dir():
            out.append((rel, "dir", False, b""))
        else:
            out.append((rel, "file", bool(path.stat().st_mode & 0o100), path.read_bytes()))
    return out


def test_the_tree_is_what_nix_store_restore_makes(tmp_path: Path) -> None:
    _tree(tmp_path / "src")
    nar = dump_nar(tmp_path / "src")
    unpack_nar(nar, tmp_path / "ours")
    subprocess.run(["nix-store", "--restore", str(tmp_path / "nix")], input=nar, check=True)
    assert _listing(tmp_path / "ours") == _listing(tmp_path / "nix")
    assert _listing(tmp_path / "ours") == _listing(tmp_path / "src")


def test_a_single_file_and_a_single_symlink(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("out")
    unpack_nar(dump_nar(tmp_path / "f"), tmp_path / "g")
    assert (tmp_path / "g").read_text() == "out"
    (tmp_path / "l").symlink_to("/nix/store/x")
    unpack_nar(dump_nar(tmp_path / "l"), tmp_path / "m")
    assert str((tmp_path / "m").readlink()) == "/nix/store/x"


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda nar: nar[:-8], "ends"),
        (lambda nar: nar + b"\0" * 8, "after its end"),
        (lambda nar: nar.replace(b"nix-archive-1", b"nix-archive-2"), "expected"),
        (lambda nar: nar.replace(b"hello\0\0\0", b"../x\0\0\0\0", 1), "not a file name"),
        (lambda nar: nar.replace(b"share\0\0\0", b"alpha\0\0\0", 1), "not after"),
    ],
    ids=["cut", "trailing", "magic", "dotdot", "order"],
)
def test_a_damaged_nar_is_refused(
    tmp_path: Path, damage: Callable[[bytes], bytes], says: str
) -> None:
    _tree(tmp_path / "src")
    nar = damage(dump_nar(tmp_path / "src"))
    with pytest.raises(StoreError, match=says):
        unpack_nar(nar, tmp_path / "out")


@pytest.mark.parametrize(
    "tokens",
    [
        [b"(", b"type", b"directory", b"entry", b"(", b"name", b"n" * 300, b"node",
         b"(", b"type", b"regular", b"contents", b"x", b")", b")", b")"],
        [b"(", b"type", b"symlink", b"target", b"t" * 5000, b")"],
    ],
    ids=["name", "target"],
)  # fmt: skip
def test_a_name_the_file_system_refuses_is_a_store_error(
    tmp_path: Path, tokens: list[bytes]
) -> None:
    nar = b"".join(encode_str(t) for t in [b"nix-archive-1", *tokens])
    with pytest.raises(StoreError, match="File name too long") as raised:
        unpack_nar(nar, tmp_path / "out")
    assert "\n" not in raised.value.message
