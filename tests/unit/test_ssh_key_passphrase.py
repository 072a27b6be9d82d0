"""A key with a passphrase, told from its file (keys ssh-keygen makes in each format), and said
as such by doctor's login row and by ``offload build``, where ssh alone only says the builder
refused (it skips such a key without a word when no terminal asks: BatchMode, the nix-daemon)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from offload.build.faults import explain
from offload.config.machines import parse_machines
from offload.doctor.model import Verdict
from offload.doctor.reach import ssh_check
from offload.transport.ssh_keys import encrypted_key, has_passphrase, passphrase_fix

DENIED = "root@127.0.0.1: Permission denied (publickey).\r\n"


def keygen(path: Path, kind: str, passphrase: str, form: str | None = None) -> Path:
    extra = ["-m", form] if form else []
    if kind == "rsa":  # the smallest RSA key ssh-keygen makes: the file's format is the same,
        extra += ["-b", "1024"]  # and 3072 bits took 1-2 s a key on a slow machine
    argv = ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-f", str(path), *extra]
    subprocess.run(argv, check=True, capture_output=True)
    return path


@pytest.mark.parametrize(
    ("kind", "form"),
    [("ed25519", None), ("rsa", None), ("rsa", "PEM"), ("ecdsa", "PEM"), ("rsa", "PKCS8")],
)
def test_a_key_file_says_whether_it_has_a_passphrase(tmp_path: Path, kind: str, form: str) -> None:
    assert has_passphrase(str(keygen(tmp_path / "locked", kind, "a secret", form)))
    assert not has_passphrase(str(keygen(tmp_path / "open", kind, "", form)))
    assert not has_passphrase(str(tmp_path / "open.pub"))


def test_what_is_no_key_file_has_no_passphrase(tmp_path: Path) -> None:
    assert not has_passphrase(str(tmp_path / "missing"))
    assert not has_passphrase(str(tmp_path))  # a directory
    os.mkfifo(tmp_path / "fifo")
    assert not has_passphrase(str(tmp_path / "fifo"))  # not read: no writer would ever come
    assert not has_passphrase(None)
    head = b"-----BEGIN OPENSSH PRIVATE KEY-----\n"
    for body in (b"", b"!!!not base64\n", b"b3BlbnNzaC1rZXktdjEA\n", b"AAAA\n"):
        assert not encrypted_key(head + body + b"-----END OPENSSH PRIVATE KEY-----\n")


def test_doctor_says_the_passphrase_where_ssh_says_only_denied() -> None:
    def login(code: int, key_place: str | None) -> tuple[Verdict, str, str | None]:
        check = ssh_check(
            code, DENIED if code else "", key="/k/id", pinned=True, destination="root@b",
            seconds=0.1, key_place=key_place, passphrase=True,
        )  # fmt: skip
        return check.verdict, check.detail, check.fix

    verdict, detail, fix = login(255, "column 3 of m:1")
    assert verdict is Verdict.FAIL
    assert detail.startswith("ssh key /k/id has a passphrase: the nix-daemon cannot type it")
    assert "does not accept" not in detail
    assert fix == passphrase_fix("/k/id", "column 3 of m:1")[1]
    assert fix.startswith("use a key without one: `offload setup key` makes one")
    assert "`ssh-keygen -p -f /k/id`" in fix
    # In through an agent or another key: builds the nix-daemon starts still cannot use it.
    verdict, detail, _ = login(0, "column 3 of m:1")
    assert verdict is Verdict.WARN
    assert "has a passphrase" in detail
    assert login(0, None)[0] is Verdict.OK  # the ssh config's key, for this user's own runs


def test_offload_build_says_the_passphrase_not_a_refused_key(tmp_path: Path) -> None:
    key = keygen(tmp_path / "locked", "ed25519", "a secret")
    found, _ = parse_machines(f"ssh://b x86_64-linux {key} 1 1\n", source="m", system="x")
    why = explain(found[0], f"cannot connect to builder 'b' (b): {DENIED.strip()}")
    assert why.startswith(f"ssh key {key} has a passphrase: the nix-daemon cannot type it")
    assert "refused" not in why
    assert "name it in column 3 of m:1)" in why
