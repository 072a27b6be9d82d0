"""The machines-format parser (config/machines.py), against nix-protocols.md 6: the defaults,
separators, comments and the 2.8 quirks, includes, errors, and a file as people write it."""

from __future__ import annotations

import base64
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from offload.config.machines import decode_host_key, parse_machines
from offload.errors import ConfigError
from tests.helpers.machines_text import KEY_B64, KEY_LINE, SYSTEM, key_line, one, parse


def no_includes(path: str) -> str | None:
    raise AssertionError(f"unexpected include of {path}")


# --- defaults (6.1 table) -------------------------------------------------------------------------


def test_only_the_uri_gives_every_default():
    m = one("nx-a.invalid")
    assert m.uri == "ssh://nx-a.invalid"
    assert m.systems == (SYSTEM,)
    assert m.ssh_key is None
    assert m.max_jobs == 1
    assert m.speed_factor == 1.0
    assert m.supported_features == frozenset()
    assert m.mandatory_features == frozenset()
    assert m.public_host_key is None
    assert m.enabled
    assert m.name == "nx-a.invalid"


def test_dash_in_every_column_is_the_default():
    assert dataclasses.replace(one("nx-a.invalid - - - - - - -"), source="") == dataclasses.replace(
        one("nx-a.invalid"), source=""
    )


def test_default_system_is_the_callers_system():
    machines, _ = parse_machines("nx-a.invalid", source="m", system="aarch64-linux")
    assert machines[0].systems == ("aarch64-linux",)


def test_all_eight_columns():
    m = one(
        f"root@nx-a.invalid i686-linux,x86_64-linux /k 4 3 kvm,big-parallel benchmark {KEY_B64}"
    )
    assert (m.user, m.host, m.port) == ("root", "nx-a.invalid", None)
    assert m.systems == ("i686-linux", "x86_64-linux")
    assert m.ssh_key == "/k"
    assert (m.max_jobs, m.speed_factor) == (4, 3.0)
    assert m.supported_features == {"kvm", "big-parallel"}
    assert m.mandatory_features == {"benchmark"}
    assert m.public_host_key == KEY_LINE
    assert m.ssh_destination() == "root@nx-a.invalid"


def test_extra_columns_are_ignored():
    assert one("nx-a.invalid - - 2 - - - - surplus words").max_jobs == 2


def test_speed_factor_zero_becomes_one():
    assert one("nx-a.invalid - - 1 0").speed_factor == 1.0


def test_a_speed_factor_too_small_to_rank_is_refused_naming_the_least():
    with pytest.raises(
        ConfigError,
        match=r"'1e-310' is too small a speed factor to rank machines by \(the least: 1e-06;"
        r" Nix takes it, offload does not\)",
    ):
        one("nx-a.invalid - - 1 1e-310")
    assert one("nx-a.invalid - - 1 0.000001").speed_factor == pytest.approx(1e-6)


def test_empty_system_list_is_not_the_default():
    # "," tokenizes to no systems at all; only "builtin" derivations can go there.
    m = one("nx-a.invalid ,")
    assert m.systems == ()
    assert m.supports("builtin", [])
    assert not m.supports(SYSTEM, [])


@pytest.mark.parametrize(
    ("raw", "uri", "scheme", "host"),
    [
        ("nx-a.invalid", "ssh://nx-a.invalid", "ssh", "nx-a.invalid"),
        ("ssh://nx-a.invalid", "ssh://nx-a.invalid", "ssh", "nx-a.invalid"),
        ("ssh-ng://u@nx-a.invalid", "ssh-ng://u@nx-a.invalid", "ssh-ng", "nx-a.invalid"),
        ("local", "local", "local", None),
        ("daemon", "daemon", "daemon", None),
        ("auto", "auto", "auto", None),
        ("local?root=/tmp/r", "local?root=/tmp/r", "local", None),
        ("?root=/tmp/r", "?root=/tmp/r", "auto", None),
        ("/tmp/chroot-store", "/tmp/chroot-store", "path", None),
        ("nx-a.invalid?compress=true", "ssh://nx-a.invalid?compress=true", "ssh", "nx-a.invalid"),
    ],
)
def test_store_uri_normalisation(raw, uri, scheme, host):
    m = one(raw)
    assert (m.uri, m.scheme, m.host) == (uri, scheme, host)


def test_query_parameters_and_column_precedence():
    m = one("ssh://nx-a.invalid?ssh-key=/from-uri&compress=true&remote-program=/bin/ns&flag")
    assert dict(m.params) == {
        "ssh-key": "/from-uri",
        "compress": "true",
        "remote-program": "/bin/ns",
    }
    assert m.ssh_key == "/from-uri"
    # The machines-file column wins over the URI's parameter (machines.cc std::map insert).
    assert one("ssh://nx-a.invalid?ssh-key=/from-uri - /from-column").ssh_key == "/from-column"


def test_a_parameter_given_twice_is_its_first_as_to_nix():
    # decodeQuery's emplace keeps the first: offload pinned the second host key given.
    other = base64.b64encode(b"ssh-ed25519 AAAAother").decode()
    m = one(
        f"ssh://nx-a.invalid?base64-ssh-public-host-key={KEY_B64}"
        f"&base64-ssh-public-host-key={other}&ssh-key=/ka&ssh-key=/kb"
    )
    assert (m.public_host_key, m.ssh_key) == (KEY_LINE, "/ka")


def test_an_empty_port_is_none_as_to_nix():
    # "ssh://h:" failed the whole spec (every builder of --builders left out with it).
    assert (one("ssh://nx-a.invalid:").host, one("ssh://nx-a.invalid:").port) == (
        "nx-a.invalid",
        None,
    )
    assert one("ssh://[::1]:").port is None


def test_host_key_from_uri_parameter():
    m = one(f"ssh://nx-a.invalid?base64-ssh-public-host-key={KEY_B64.rstrip('=')}")
    assert m.public_host_key == KEY_LINE


def test_host_port_and_ipv6():
    m = one("ssh://root@nx-a.invalid:2222")
    assert (m.host, m.port, m.user) == ("nx-a.invalid", 2222, "root")
    assert m.uri == "ssh://root@nx-a.invalid:2222"
    v6 = one("ssh://[::1]:22")
    assert (v6.host, v6.port) == ("::1", 22)


def test_float_speed_factor_is_accepted():
    # 2.8 rejects "1.5"; Nix >= 2.20 (and offload) accept it.
    assert one("nx-a.invalid - - 1 1.5").speed_factor == 1.5


def test_mandatory_features_also_count_as_supported():
    m = one("nx-a.invalid - - 1 1 big-parallel benchmark")
    assert m.supports(SYSTEM, ["benchmark"])
    assert m.supports(SYSTEM, ["benchmark", "big-parallel"])


def test_selection_rule_matches_nix_protocols_5_1_table():
    mand = one("mand - - 1 1 big-parallel benchmark")
    plain = one("plain - - 1 1 kvm")
    cases = {
        (): (False, True),
        ("benchmark",): (True, False),
        ("big-parallel",): (False, False),
        ("benchmark", "kvm"): (False, False),
    }
    for required, expected in cases.items():
        assert (mand.supports(SYSTEM, required), plain.supports(SYSTEM, required)) == expected
    assert mand.supports("builtin", ["benchmark"])
    assert not plain.supports("aarch64-linux", [])


# --- separators, comments, and the 2.8 quirks (6.1) ----------------------------------------------


def test_semicolons_and_newlines_separate_entries():
    text = "m1; m2\nm3 ;; m4\n"
    assert [m.host for m in parse(text)] == ["m1", "m2", "m3", "m4"]


def test_quirk1_blank_and_indented_lines_are_skipped():
    # 2.8 discards trim()'s result: these lines crash its hook ("store URL was not found").
    text = "m1\n   \n\t\n  # indented comment\n   m2 x86_64-linux\n"
    assert [m.host for m in parse(text)] == ["m1", "m2"]


def test_quirk1_indented_include_is_still_an_include():
    files = {"/etc/nix/inc": "m2\n"}
    machines = parse("  @/etc/nix/inc\nm3", read_file=files.get)
    assert [m.host for m in machines] == ["m2", "m3"]


def test_quirk2_semicolon_inside_a_comment_is_comment_text():
    # 2.8 splits on ';' first and made a machine ssh://m5-from-comment of this line.
    assert [m.host for m in parse("m4 x86_64-linux # c; m5-from-comment")] == ["m4"]


def test_comment_after_fields_and_full_line_comment():
    machines = parse("# header\nm1 - - 3 # three jobs\n#m2\n")
    assert [(m.host, m.max_jobs) for m in machines] == [("m1", 3)]


def test_tokenizing_uses_nix_blanks_only():
    # Nix splits on space, tab, CR, LF; a vertical tab stays inside the token.
    m = one("m1\tx86_64-linux\r")
    assert m.systems == ("x86_64-linux",)
    assert one("m\x0bx").host == "m\x0bx"


def test_sources_carry_file_and_line():
    machines = parse("m1\n\nm2; m3\n")
    assert [m.source for m in machines] == ["machines:1", "machines:3", "machines:3"]
    cli, _ = parse_machines("m1; m2", source="--builders", system=SYSTEM)
    assert [m.source for m in cli] == ["--builders", "--builders"]


# --- includes -----------------------------------------------------------------------------------


def test_includes_are_spliced_in_place_recursively():
    files = {
        "/etc/nix/a": "a1\n@/etc/nix/b\na2\n",
        "/etc/nix/b": "b1 ; b2",
    }
    machines = parse("m0\n@/etc/nix/a\nm9", read_file=files.get)
    assert [m.host for m in machines] == ["m0", "a1", "b1", "b2", "a2", "m9"]
    assert [m.source for m in machines][1:5] == [
        "/etc/nix/a:1",
        "/etc/nix/b:1",
        "/etc/nix/b:1",
        "/etc/nix/a:3",
    ]


def test_relative_include_is_relative_to_the_current_directory_as_in_nix(tmp_path):
    # Nix's readFile(path) takes a relative path from its working directory, at every level.
    sub = tmp_path / "sub"
    sub.mkdir()
    (tmp_path / "top").write_text("@sub/inner\n")
    (sub / "inner").write_text("@deeper\n@sub/deeper\n")
    (sub / "deeper").write_text("m-deep\n")
    machines, warnings = parse_machines("@top", source="s", system=SYSTEM, base_dir=tmp_path)
    assert [m.host for m in machines] == ["m-deep"]
    assert machines[0].source == f"{sub}/deeper:1"
    assert [w.split(": ")[0] for w in warnings] == [
        "s:1",
        f"{tmp_path}/top:1",
        f"{sub}/inner:1",
        f"{sub}/inner:1",
        f"{sub}/inner:2",
    ]
    assert "is relative: read from the current directory here" in warnings[0]
    assert f"{tmp_path}/deeper does not exist" in warnings[3]


def test_missing_include_is_a_warning():
    machines, warnings = parse_machines(
        "m1\n@/nonexistent/machines\nm2", source="f", system=SYSTEM, read_file=lambda _: None
    )
    assert [m.host for m in machines] == ["m1", "m2"]
    assert len(warnings) == 1
    assert warnings[0].startswith("f:2: ")
    assert "/nonexistent/machines" in warnings[0]


def test_unreadable_include_is_an_error(tmp_path):
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(ConfigError, match=r"^f:1: cannot read machines file .*a-directory"):
        parse_machines(f"@{directory}", source="f", system=SYSTEM)


def test_include_loop_is_an_error_naming_the_chain():
    files = {"/a": "@/b\n", "/b": "m\n@/a\n"}
    with pytest.raises(ConfigError) as info:
        parse("@/a", read_file=files.get)
    assert info.value.message.startswith("/b:2: @/a includes itself (/a -> /b -> /a)")


def test_self_include_and_diamond():
    with pytest.raises(ConfigError, match="includes itself"):
        parse("@/a", read_file={"/a": "@/a"}.get)
    # The same file twice, not nested, is not a loop.
    files = {"/a": "@/c\n@/c\n", "/c": "m"}
    assert [m.host for m in parse("@/a", read_file=files.get)] == ["m", "m"]


def test_empty_include_name_is_skipped_as_in_nix():
    machines, warnings = parse_machines("@  ; m", source="f", system=SYSTEM, read_file=no_includes)
    assert [m.host for m in machines] == ["m"]
    assert warnings == ["f:1: '@' names no file; skipped, as Nix does"]


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("m - - two", "machines:1: column 4 (maxJobs): 'two' is not a whole number of jobs"),
        ("m - - -1", "machines:1: column 4 (maxJobs): '-1' is not a whole number of jobs"),
        ("m - - 4294967296", "column 4 (maxJobs): '4294967296' is not a whole number"),
        ("m - - 1 fast", "machines:1: column 5 (speedFactor): 'fast' is not a number"),
        ("m - - 1 nan", "column 5 (speedFactor): 'nan' cannot rank machines"),
        ("m - - 1 -inf", "column 5 (speedFactor): '-inf' cannot rank machines"),
        ("m - - 1 1e39", "column 5 (speedFactor): '1e39' is not a number"),
        ("m - - 1 -2", "column 5 (speedFactor): '-2': the speed factor must be >= 0"),
        ("m - - 1 1 - - !!!", "machines:1: column 8 (publicHostKey): '!!!' is not base64"),
        ("m - - 1 1 - - a_b=", "column 8 (publicHostKey): 'a_b=' is not base64 (invalid char"),
        ("m - - +-1", "column 4 (maxJobs): '+-1' is not a whole number"),
        ("m\x1b[31m - - x\x00", "column 4 (maxJobs): 'x\\x00' is not a whole number"),
        ("- x86_64-linux", "machines:1: column 1 (storeUri): a store URI is required"),
    ],
)
def test_error_messages_name_file_line_and_column(line, message):
    with pytest.raises(ConfigError) as info:
        parse(line)
    assert message in info.value.message
    assert "\n" not in info.value.message
    assert info.value.hint is not None


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("ssh://", "no host name in 'ssh://'"),
        ("ssh://@h", "empty user name in 'ssh://@h'"),
        ("ssh://h:0", "'0' is not a port number (1-65535) in 'ssh://h:0'"),
        ("ssh://h:99999", "'99999' is not a port number (1-65535) in 'ssh://h:99999'"),
        ("ssh://h:ssh", "'ssh' is not a port number (1-65535) in 'ssh://h:ssh'"),
        ("ssh://fast/path", "'fast/path' is not a host name (it contains '/')"),
    ],
)
def test_a_store_uri_that_reaches_no_host_leaves_its_machine_out_not_the_file(uri, why):
    # Nix 2.8 takes any URI in column 1 and fails to connect to it when it builds, building
    # on the other lines: offload refused the whole file for it.
    found, _ = parse_machines(
        f"{uri} x86_64-linux - 1 1\nother x86_64-linux - 1 1\n", source="machines", system=SYSTEM
    )
    assert [m.not_connected for m in found] == [f"its store URI is unusable: {why}", None]


def test_error_line_number_counts_comments_and_blanks():
    with pytest.raises(ConfigError, match=r"^machines:4: column 5 \(speedFactor\): 'fast'"):
        parse("# c\n\nm1\nm2 - - 1 fast\n")


def test_host_key_column_is_base64_whatever_it_decodes_to():
    # Nix only checks base64 (machines.cc ensureBase64); it pins whatever the bytes are.
    not_a_key = base64.b64encode(b"hello world").decode()
    m = one(f"m - - - - - - {not_a_key}")
    assert (m.public_host_key, m.host_key_base64, m.pins_junk) == (None, not_a_key, True)
    wrong_blob = base64.b64encode(f"ssh-ed25519 {key_line('ssh-rsa').split()[1]}".encode()).decode()
    assert one(f"m - - - - - - {wrong_blob}").pins_junk
    assert not one(f"m - - - - - - {KEY_B64}").pins_junk
    # After '=' Nix reads nothing more, and leftover bits are dropped.
    assert one("m - - - - - - abc=!!").host_key_base64 == "abc=!!"
    assert one("m - - - - - - a").pins_junk
    # The URI parameter is not checked when parsing (Nix fails at connect): junk, not an error.
    assert one("ssh://m?base64-ssh-public-host-key=!!").pins_junk


def test_a_host_key_column_of_several_keys_pins_the_first_as_nix_does():
    # `cat *.pub | base64`: refused as junk ("Nix pins it and ssh refuses the host"), though
    # Nix writes it after the host name as its known_hosts file, the first line pinned.
    several = base64.b64encode(f"{KEY_LINE}\n{key_line('ssh-rsa')}\n".encode()).decode()
    m = one(f"m - - - - - - {several}")
    assert (m.public_host_key, m.pins_junk) == (KEY_LINE, False)


def test_host_key_padding_is_optional_like_nix():
    assert decode_host_key(KEY_B64.rstrip("=")) == KEY_LINE


# --- a file as people write it (tests/fixtures/machines) -----------------------------------------

FIXTURES = Path(__file__).parent.parent / "fixtures" / "machines"


def test_fixture_machines_file():
    path = FIXTURES / "machines"
    machines, warnings = parse_machines(
        path.read_text(), source=str(path), system=SYSTEM, base_dir=FIXTURES
    )
    assert [(m.name, m.user, m.port, m.max_jobs, m.speed_factor) for m in machines] == [
        ("nx-fix-a.invalid", "root", None, 8, 4.0),
        ("nx-fix-b.invalid", "builder", None, 4, 2.0),
        ("nx-fix-c.invalid", None, None, 1, 1.0),
        ("nx-fix-d.invalid:2222", None, 2222, 2, 1.5),  # a port other than 22 is named
    ]
    assert machines[0].ssh_key == "/root/.ssh/id_builder"
    assert machines[1].uri == "ssh-ng://builder@nx-fix-b.invalid?compress=true"
    assert machines[1].systems == ("aarch64-linux",)
    assert machines[2].supports(SYSTEM, ["benchmark"])
    assert not machines[2].supports(SYSTEM, [])
    assert [m.source for m in machines] == [
        f"{path}:4",
        f"{path}:6",
        f"{path}:7",
        f"{FIXTURES}/more.machines:1",
    ]
    assert len(warnings) == 3
    # nix-build's hook reads it from / (Nix starts it there): offload said "as Nix reads it".
    assert "@more.machines is relative: read from the current directory here (" in warnings[0]
    assert "where Nix's build hook reads it from /: write an absolute path" in warnings[0]
    assert f"{FIXTURES}/does-not-exist.machines does not exist" in warnings[2]


def test_a_relative_include_read_from_root_is_said_as_nix_reads_it() -> None:
    # Under offload-hook, started in / as Nix starts its hook, the warning said it was read
    # "from the current directory here (more.machines), where Nix's build hook reads it
    # from /": the same place, worded as two.
    read: list[str] = []

    def files(path: str) -> str | None:
        read.append(path)
        return None

    _, warnings = parse_machines(
        "@more.machines", source="s", system=SYSTEM, read_file=files, base_dir=Path("/")
    )
    assert read == ["/more.machines"]
    assert warnings[0] == (
        "s:1: @more.machines is relative: read from / (/more.machines), as Nix's build hook"
        " reads it: write an absolute path"
    )


def test_offload_machines_says_the_machine_left_out_and_exits_0(tmp_path):
    machines = tmp_path / "machines"
    machines.write_text("ssh://fast/path x86_64-linux - 1 1\nother x86_64-linux - 1 1\n")
    done = subprocess.run(
        [sys.executable, "-m", "offload", "machines", "--builders", f"@{machines}"],
        env={**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (said,) = [line for line in done.stderr.splitlines() if "fast/path" in line]
    assert said.startswith(f"warning: {machines}:1: ssh://fast/path: its store URI is unusable: ")
    assert "offload leaves it out" in said
    assert "Nix rejects the whole" not in done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == [
        "local",
        "ssh://fast/path",
        "other",
    ]


def test_a_scheme_not_in_lower_case_is_no_store_type_as_to_nix():
    # Nix 2.8: "cannot build on 'SSH://h1': error: don't know how to open Nix store 'SSH://h1'";
    # offload lowered the scheme and connected.
    machines, _ = parse_machines(
        "SSH://nx-h1.invalid x86_64-linux\nssh://nx-h2.invalid x86_64-linux\n",
        source="m",
        system="x86_64-linux",
    )
    upper, lower = machines
    assert (upper.scheme, upper.is_ssh, lower.is_ssh) == ("SSH", False, True)
    assert upper.not_connected == (
        "'SSH://nx-h1.invalid': Nix knows no store type 'SSH' (store types are lower-case)"
    )
    assert lower.not_connected is None


def test_a_compress_value_nix_refuses_is_said():
    # Nix 2.8: "Boolean setting 'compress' has invalid value 'on'", and it builds nothing there;
    # offload connected without -C and said nothing.
    from offload.config.machines.check import param_problems

    lines = "ssh://nx-c1.invalid?compress=on x\nssh://nx-c2.invalid?compress=yes x\n"
    (on, yes), _ = parse_machines(lines, source="m", system="x86_64-linux")
    assert param_problems(on) == [
        (
            "compress=on is no boolean Nix takes: its hook leaves the machine out (offload"
            " reads it as false); write compress=true or false"
        )
    ]
    assert param_problems(yes) == []
