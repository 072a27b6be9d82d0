"""A key file ssh could not use, found in ssh's own words (OpenSSH 9.2, recorded), and the fix
named where the machines file gives the key; and what ``offload build`` says of such a builder."""

from __future__ import annotations

import pytest

from offload.build.faults import explain
from offload.config.machines import Machine, parse_machines
from offload.config.machines.check import machine_problems
from offload.config.pool import apply_toml
from offload.config.settings import parse_offload_toml
from offload.transport.links.ssh_errors import ssh_hint
from offload.transport.ssh_keys import (
    KeyTrouble,
    key_fix,
    key_place,
    key_trouble,
    missing_key_note,
)

DENIED = "root@127.0.0.1: Permission denied (publickey)."
MISSING = (
    f"Warning: Identity file /k/nosuchkey not accessible: No such file or directory.\n{DENIED}\n"
)
UNREADABLE = f'Load key "/k/id": Permission denied\n{DENIED}\n'
NOT_A_KEY = f'Load key "/k/id.pub": error in libcrypto\n{DENIED}\n'


def machines(text: str) -> list[Machine]:
    found, _ = parse_machines(text, source="/etc/nix/machines", system="x86_64-linux")
    return found


def link_error(stderr: str, name: str = "b") -> str:
    """The error a link raises when its master could not connect (``SshTransport._error``)."""
    tail = " | ".join(line for line in stderr.splitlines() if line.strip())
    return f"cannot connect to builder '{name}' ({name}): {tail}"


@pytest.mark.parametrize(
    ("stderr", "trouble"),
    [
        (MISSING, KeyTrouble("/k/nosuchkey", "No such file or directory")),
        (UNREADABLE, KeyTrouble("/k/id", "Permission denied")),
        (NOT_A_KEY, KeyTrouble("/k/id.pub", "error in libcrypto")),
        (link_error(MISSING), KeyTrouble("/k/nosuchkey", "No such file or directory")),
        (link_error(UNREADABLE), KeyTrouble("/k/id", "Permission denied")),
        (DENIED, None),
        ("ssh: connect to host b port 22: Connection refused\n", None),
    ],
)
def test_ssh_words_about_a_key_file(stderr: str, trouble: KeyTrouble | None) -> None:
    assert key_trouble(stderr) == trouble


def test_the_place_is_column_3_of_the_line_or_also_its_uri_parameter() -> None:
    column, uri = machines("ssh://b x86_64-linux /k/a\nssh://c?ssh-key=/k/b x86_64-linux\n")
    assert key_place(column) == "column 3 of /etc/nix/machines:1"
    assert key_place(uri) == "column 3 of /etc/nix/machines:2 (or its URI's ssh-key= parameter)"


KEYS_TOML = """
[[machine]]
uri = "ssh://d"
ssh-key = "/k/d"
[[machine]]
host = "b"
ssh-key = "/k/other"
"""


def test_a_key_offload_toml_gives_is_to_be_fixed_there() -> None:
    # A machine offload.toml defined was told to fix "column 3 of o.toml: [[machine]] #1" (a
    # table has no columns), and one whose key the toml set over its line to fix the line,
    # where another key stands: the missing-key warning of a run and offload doctor said so.
    found, _ = apply_toml(
        machines("ssh://b x86_64-linux /k/a\n"),
        parse_offload_toml(KEYS_TOML, "o.toml"),
        system="x86_64-linux",
    )
    line, table = found
    assert key_place(table) == "ssh-key of o.toml: [[machine]] #1"
    assert key_place(line) == "ssh-key of o.toml: [[machine]] #2"
    note = missing_key_note("/k/d", key_place(table))
    assert note.endswith("name an existing private key file in ssh-key of o.toml: [[machine]] #1")


def test_each_trouble_gets_its_own_fix() -> None:
    place = "column 3 of m:1"
    missing = KeyTrouble("/k/id", "No such file or directory")
    assert key_fix(missing, "/k/id", place) == (
        "ssh key file /k/id does not exist",
        "name an existing private key file in column 3 of m:1",
    )
    what, fix = key_fix(KeyTrouble("/k/id", "Permission denied"), "/k/id", place)
    assert "cannot be read" in what
    assert fix.endswith(place)
    what, fix = key_fix(KeyTrouble("/k/id", "error in libcrypto"), "/k/id", place)
    assert "not a private key" in what
    assert "(not its .pub) in column 3 of m:1" in fix
    # A key the ssh config names, not the machines line: the fix is in the ssh config.
    _, fix = key_fix(missing, None, place)
    assert "IdentityFile" in fix
    assert "m:1" not in fix


def test_build_says_a_missing_key_file_is_missing_not_refused() -> None:
    machine = machines("ssh://b x86_64-linux /k/nosuchkey 1 1\n")[0]
    why = explain(machine, link_error(MISSING))
    assert why.startswith("ssh key file /k/nosuchkey does not exist"), why
    assert why.endswith("name an existing private key file in column 3 of /etc/nix/machines:1")
    assert "refused" not in why
    assert "authorized_keys" not in why


def test_build_says_an_unreadable_key_file_cannot_be_read() -> None:
    machine = machines("ssh://c?ssh-key=/k/id x86_64-linux - 1 1\n")[0]
    why = explain(machine, link_error(UNREADABLE))
    assert "ssh key file /k/id cannot be read" in why
    assert "column 3 of /etc/nix/machines:1 (or its URI's ssh-key= parameter)" in why
    assert "refused" not in why


def test_build_still_says_a_refused_key_is_refused() -> None:
    machine = machines("ssh://b x86_64-linux /k/id 1 1\n")[0]
    why = explain(machine, link_error(DENIED))
    assert why.startswith("the builder refused the ssh key /k/id")
    assert "column 3 of /etc/nix/machines:1" in why


def test_a_refused_key_the_machines_line_does_not_name_is_not_called_a_default_one() -> None:
    # The key may be the IdentityFile of NIX_SSHOPTS' -F config: not named here, not guessed.
    machine = machines("ssh://b x86_64-linux - 1 1\n")[0]
    why = explain(machine, link_error(DENIED))
    assert why == (
        "the builder refused the ssh keys offered (your ssh config's IdentityFile, or ssh's "
        "default keys); add the right public key to the builder's authorized_keys there, or "
        "name its private key in column 3 of /etc/nix/machines:1"
    )


def test_a_refused_key_for_a_user_the_uri_names_asks_about_the_user() -> None:
    # 'rooot@' read as a key to authorize, the user never named (hook tester).
    machine = machines("ssh://rooot@b x86_64-linux /k/id 1 1\n")[0]
    why = explain(machine, link_error(DENIED))
    assert why.startswith("the builder refused the ssh key /k/id for user 'rooot'; ")
    assert "is rooot the user meant in ssh://rooot@b? else add /k/id.pub to rooot's" in why


def test_the_transports_hint_says_the_key_file_is_missing() -> None:
    # The hint an SshError carries where no machines line is at hand (setup's probes, say).
    hint = ssh_hint(link_error(MISSING))
    assert hint == "ssh key file /k/nosuchkey does not exist: check column 3 of machines"
    assert "authorized_keys" in ssh_hint(link_error(DENIED))


@pytest.mark.parametrize("reason", ["bad permissions", "error in libcrypto"])
def test_a_public_key_named_for_the_private_one_is_said_to_be_one(reason: str) -> None:
    # ssh finds a .pub too open before it finds it is no private key: the fix said was
    # `chmod 600 key.pub`, and after it, the right one (name the private key).
    trouble = KeyTrouble("/k/id.pub", reason)
    what, fix = key_fix(trouble, "/k/id.pub", "column 3 of m:1")
    assert what == "ssh key file /k/id.pub is a public key (a .pub), not the private key ssh needs"
    assert fix == "name the private key (not its .pub) in column 3 of m:1"


def test_offload_machines_says_a_public_key_in_column_3_whatever_its_mode(tmp_path) -> None:
    public = tmp_path / "id.pub"
    public.write_text("ssh-ed25519 AAAA x\n")
    public.chmod(0o644)
    (machine,), _ = parse_machines(
        f"ssh://b x86_64-linux {public} 1 1\n", source="m", system="x86_64-linux"
    )
    assert machine_problems(machine, lambda _: True) == [
        f"m:1: b: ssh key file {public} is a public key: name the private key (not its .pub)"
    ]
