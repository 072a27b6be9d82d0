"""Nix's own machines-parser tests, case by case, run against offload's parser.

One case per test in NixOS/nix ``src/libstore-tests/machines.cc`` (master; the 2.8 tests in
``src/libstore/tests/machines.cc`` are the same cases minus the port and whitespace ones), with
the Nix test's name as the case id. Where Nix checks ``SizeIs``/``Eq``/``ElementsAre`` we check
the same fields; where it expects ``FormatError`` or ``UsageError`` we expect a ``ConfigError``
naming the file, line and column. The data file ``machines/valid`` is restated here in the same
shape (three builders, the third with a base64 host key); ``machines/bad_format`` is its line.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from offload.config.machines import Machine, parse_machines, read_machines
from offload.errors import ConfigError

SYSTEM = "TEST_ARCH-TEST_OS"
SCRATCHY = "nix@scratchy.labs.cs.uu.nl"
KEY = "/home/nix/.ssh/id_scratchy_auto"
HOST_KEY_B64 = base64.b64encode(b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== root@poochie\n").decode()
VALID = (
    f"{SCRATCHY}  i686-linux      {KEY}        8 1 kvm\n"
    f"nix@itchy.labs.cs.uu.nl     i686-linux      {KEY}        8 2\n"
    f"nix@poochie.labs.cs.uu.nl   i686-linux      {KEY}        1 2 kvm benchmark {HOST_KEY_B64}\n"
)
BAD_FORMAT = f"{SCRATCHY} - - eight\n"


def parse(spec: str) -> list[Machine]:
    return parse_machines(spec, source="builders", system=SYSTEM)[0]


def authorities(machines: list[Machine]) -> list[str]:
    return [m.uri.removeprefix("ssh://") for m in machines]


def assert_defaults(m: Machine) -> None:
    assert m.systems == (SYSTEM,)
    assert m.ssh_key is None
    assert (m.max_jobs, m.speed_factor) == (1, 1.0)
    assert m.supported_features == m.mandatory_features == frozenset()
    assert m.public_host_key is m.host_key_base64 is None


def with_empty_builders(_: Path) -> None:
    assert parse("") == []


def uri_only(_: Path) -> None:
    (m,) = parse(SCRATCHY)
    assert m.uri == f"ssh://{SCRATCHY}"
    assert_defaults(m)


def uri_with_port(_: Path) -> None:
    reading = read_machines(f"{SCRATCHY}:2222", source="builders", system=SYSTEM)
    (m,) = reading.machines
    assert (m.uri, m.user, m.host, m.port) == (f"ssh://{SCRATCHY}:2222", "nix", m.host, 2222)
    assert m.host == "scratchy.labs.cs.uu.nl"
    # Newer Nix (2.31) takes the port; older Nix gives ssh "host:2222" as a host name.
    assert [(c.since, "host:2222" in c.older) for c in reading.compat] == [((2, 31), True)]


def defaults(_: Path) -> None:
    (m,) = parse(f"{SCRATCHY} - - - - - - -")
    assert m.uri == f"ssh://{SCRATCHY}"
    assert_defaults(m)


def new_line_separator(_: Path) -> None:
    assert authorities(parse(f"{SCRATCHY}\nnix@itchy.labs.cs.uu.nl")) == [
        SCRATCHY,
        "nix@itchy.labs.cs.uu.nl",
    ]


def semicolon_separator(_: Path) -> None:
    assert authorities(parse(f"{SCRATCHY} ; nix@itchy.labs.cs.uu.nl")) == [
        SCRATCHY,
        "nix@itchy.labs.cs.uu.nl",
    ]


def comments_and_semicolon_separator(_: Path) -> None:
    spec = (
        "# This is a comment ; this is still that comment\n"
        f"{SCRATCHY} ; nix@itchy.labs.cs.uu.nl\n"
        "# This is also a comment ; this also is still that comment\n"
        "nix@scabby.labs.cs.uu.nl\n"
    )
    assert authorities(parse(spec)) == [
        SCRATCHY,
        "nix@itchy.labs.cs.uu.nl",
        "nix@scabby.labs.cs.uu.nl",
    ]


def funny_whitespace(_: Path) -> None:
    spec = (
        "        # comment ; comment\n"
        f"   {SCRATCHY} ; nix@itchy.labs.cs.uu.nl   \n"
        "\n    \n"
        "\n ;;; \n"
        "\n ; ; \n"
        "nix@scabby.labs.cs.uu.nl\n\n"
    )
    reading = read_machines(spec, source="builders", system=SYSTEM)
    assert authorities(reading.machines) == [
        SCRATCHY,
        "nix@itchy.labs.cs.uu.nl",
        "nix@scabby.labs.cs.uu.nl",
    ]
    # Nix before 2.29 rejected the whole spec for each blank piece (see compat).
    assert [c.where for c in reading.compat] == [f"builders:{n}" for n in (1, 4, 6, 8)]


def _complete(spec: str) -> None:
    (m,) = parse(spec)
    assert m.uri == f"ssh://{SCRATCHY}"
    assert m.systems == ("i686-linux",)
    assert m.ssh_key == KEY
    assert (m.max_jobs, m.speed_factor) == (8, 3.0)
    assert m.supported_features == frozenset({"kvm"})
    assert m.mandatory_features == frozenset({"benchmark"})
    # Nix keeps the column as written; it is base64, though not of an ssh key.
    assert m.host_key_base64 == "SSH+HOST+PUBLIC+KEY+BASE64+ENCODED=="
    assert m.pins_junk


def correct_complete_single_builder(_: Path) -> None:
    _complete(f"{SCRATCHY}     i686-linux      {KEY}        8 3 kvm benchmark " + _NIX_KEY)


def correct_complete_single_builder_with_tab_column_delimiter(_: Path) -> None:
    _complete(f"{SCRATCHY}\ti686-linux\t{KEY}\t8\t3\tkvm\tbenchmark\t{_NIX_KEY}")


_NIX_KEY = "SSH+HOST+PUBLIC+KEY+BASE64+ENCODED=="


def multi_options(_: Path) -> None:
    (m,) = parse(
        f"{SCRATCHY} Arch1,Arch2 - - - SupportedFeature1,SupportedFeature2 "
        "MandatoryFeature1,MandatoryFeature2"
    )
    assert m.systems == ("Arch1", "Arch2")
    assert m.supported_features == {"SupportedFeature1", "SupportedFeature2"}
    assert m.mandatory_features == {"MandatoryFeature1", "MandatoryFeature2"}


def incorrect_format(_: Path) -> None:
    for tail, column in [
        ("eight", 4),
        ("-1", 4),
        ("8 three", 5),
        ("8 -3", 5),  # UsageError in Nix: "speed factor must be >= 0"
        ("8 3 - - BAD_BASE64", 8),
    ]:
        with pytest.raises(ConfigError, match=rf"^builders:1: column {column} "):
            parse(f"{SCRATCHY} - - {tail}")


def correct_file_reference(tmp_path: Path) -> None:
    (tmp_path / "valid").write_text(VALID)
    machines = parse(f"@{tmp_path}/valid")
    assert authorities(machines) == [
        SCRATCHY,
        "nix@itchy.labs.cs.uu.nl",
        "nix@poochie.labs.cs.uu.nl",
    ]
    assert machines[2].public_host_key == "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== root@poochie"


def correct_file_reference_to_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty-machines").write_text("")
    assert parse(f"@{tmp_path}/empty-machines") == []
    assert parse("@/dev/null") == []  # the 2.8 test's empty file


def incorrect_file_reference(_: Path) -> None:
    machines, warnings = parse_machines("@/not/a/file", source="builders", system=SYSTEM)
    assert machines == []
    assert len(warnings) == 1  # Nix says it at debug level only


def correct_file_reference_to_incorrect_file(tmp_path: Path) -> None:
    (tmp_path / "bad_format").write_text(BAD_FORMAT)
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/bad_format:1: column 4 \(maxJobs\)"):
        parse(f"@{tmp_path}/bad_format")


CASES: dict[str, Callable[[Path], None]] = {
    "getMachinesWithEmptyBuilders": with_empty_builders,
    "getMachinesUriOnly": uri_only,
    "getMachinesUriWithPort": uri_with_port,
    "getMachinesDefaults": defaults,
    "getMachinesWithNewLineSeparator": new_line_separator,
    "getMachinesWithSemicolonSeparator": semicolon_separator,
    "getMachinesWithCommentsAndSemicolonSeparator": comments_and_semicolon_separator,
    "getMachinesWithFunnyWhitespace": funny_whitespace,
    "getMachinesWithCorrectCompleteSingleBuilder": correct_complete_single_builder,
    "getMachinesWithCorrectCompleteSingleBuilderWithTabColumnDelimiter": (
        correct_complete_single_builder_with_tab_column_delimiter
    ),
    "getMachinesWithMultiOptions": multi_options,
    "getMachinesWithIncorrectFormat": incorrect_format,
    "getMachinesWithCorrectFileReference": correct_file_reference,
    "getMachinesWithCorrectFileReferenceToEmptyFile": correct_file_reference_to_empty_file,
    "getMachinesWithIncorrectFileReference": incorrect_file_reference,
    "getMachinesWithCorrectFileReferenceToIncorrectFile": correct_file_reference_to_incorrect_file,
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_nix_machines_case(case: Callable[[Path], None], tmp_path: Path) -> None:
    case(tmp_path)
