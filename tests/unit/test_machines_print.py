"""The machines-format printer (config/machines.py), against nix-protocols.md 6: what it prints
for Nix 2.8 and for newer Nix, and properties over generated and hostile input (print then parse
gives the same pool; nothing raises but ConfigError)."""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload.config.machines import (
    Machine,
    default_name,
    format_machines,
    machine_from_columns,
    parse_machines,
)
from offload.errors import ConfigError
from tests.helpers.machines_text import KEY_B64, KEY_LINE, SYSTEM, key_line, one, parse

T = TypeVar("T")


# --- printing -----------------------------------------------------------------------------------


def _strip(machines: list[Machine]) -> list[Machine]:
    return [dataclasses.replace(m, source="") for m in machines]


def test_printed_file_is_safe_for_nix_2_8():
    text = "\n".join(
        [
            "  root@nx-a.invalid:2222 x86_64-linux /k 4 1.5 kvm - " + KEY_B64,
            "nx-b.invalid ; nx-c.invalid - - 2 3 # c; d",
        ]
    )
    printed = format_machines(parse(text))
    for line in printed.splitlines():
        assert line.strip()
        assert line == line.strip()
        assert ";" not in line
        if not line.startswith("#"):
            assert "#" not in line
            speed = line.split()[4]
            assert re.fullmatch(r"[0-9]+", speed)
    assert not [line for line in printed.splitlines() if ":2222" in line and line[0] != "#"]
    assert "port 2222 of nx-a.invalid dropped" in printed
    reparsed = parse(printed)
    assert [(m.host, m.port, m.speed_factor) for m in reparsed] == [
        ("nx-a.invalid", None, 2.0),
        ("nx-b.invalid", None, 1.0),
        ("nx-c.invalid", None, 3.0),
    ]
    assert reparsed[0].public_host_key == KEY_LINE


def test_newer_nix_output_keeps_ports_and_fractions():
    machines = parse("root@nx-a.invalid:2222 - - 1 1.5")
    assert _strip(parse(format_machines(machines, nix28=False))) == _strip(machines)


def test_newer_nix_output_writes_the_port_offload_toml_set():
    # offload.toml's port = 2222 over ssh://a:22222: ":2222" is in the URI as text, so the URI
    # was written as it was, and Nix connected to 22222.
    (machine,) = parse("ssh://nx-p.invalid:22222 - - 1 1")
    printed = format_machines([dataclasses.replace(machine, port=2222)], nix28=False)
    assert [m.port for m in parse(printed)] == [2222]


def test_newer_nix_output_says_a_pinned_key_beside_a_port_is_not_found_by_nix():
    # Nix 2.31 and later write the pin under the host and pass -p: ssh looks for [host]:port,
    # finds nothing and refuses the host (a review read it in Nix's ssh.cc).
    pinned, plain = parse(
        f"ssh://nx-a.invalid:2222 - - 1 1 - - {KEY_B64}\nssh://nx-b.invalid:2222 - - 1 1\n"
    )
    printed = format_machines([pinned, plain], nix28=False)
    notes = [line for line in printed.splitlines() if line.startswith("#")]
    assert len(notes) == 1
    assert "'[nx-a.invalid]:2222'" in notes[0]
    assert "Host nx-a.invalid with Port 2222 and HostKeyAlias nx-a.invalid" in notes[0]
    reparsed = parse(printed)  # the lines are as before
    assert [(m.port, m.public_host_key) for m in reparsed] == [(2222, KEY_LINE), (2222, None)]
    (on_22,) = parse(f"ssh://nx-c.invalid:22 - - 1 1 - - {KEY_B64}")
    assert not format_machines([on_22], nix28=False).startswith("#")


def test_printer_refuses_what_the_format_cannot_say():
    machine = one("m")
    with pytest.raises(ConfigError, match="cannot go in a machines file"):
        format_machines([dataclasses.replace(machine, ssh_key="/path with space")])
    with pytest.raises(ConfigError, match="cannot go in a machines file"):
        format_machines([dataclasses.replace(machine, supported_features=frozenset({"a#b"}))])


def test_a_column_but_the_first_may_start_with_at():
    # Only an entry's first word starting with '@' is an include: `--to nix` refused an ssh
    # key '@k' and a feature '@gpu', which Nix and `offload machines` take.
    machines = parse(f"ssh://a.invalid {SYSTEM} @k 1 1 @gpu")
    assert _strip(parse(format_machines(machines))) == _strip(machines)


def test_machine_from_columns_validates_tokens():
    m = machine_from_columns(["ssh://h", "x86_64-linux", None, "2"], source="t", system=SYSTEM)
    assert (m.uri, m.max_jobs) == ("ssh://h", 2)
    with pytest.raises(ConfigError, match=r"^t: column 3 \(sshKey\)"):
        machine_from_columns(["h", None, "a b"], source="t", system=SYSTEM)
    with pytest.raises(ConfigError, match="@include"):
        machine_from_columns(["@h"], source="t", system=SYSTEM)


# --- properties ---------------------------------------------------------------------------------

_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
_safe_word = _word.filter(lambda w: w != "-" and not w.startswith("."))
_host = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z0-9-]{1,8}){0,2}", fullmatch=True)
_feature = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
_system = st.sampled_from(["x86_64-linux", "aarch64-linux", "i686-linux", "x86_64-darwin"])


@st.composite
def machine_lines(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["", "ssh://", "ssh-ng://"]))
    user = draw(st.one_of(st.none(), st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True)))
    host = draw(_host)
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    params = draw(st.dictionaries(_feature, _safe_word, max_size=3))
    if scheme == "" and port is not None:
        scheme = "ssh://"
    uri = scheme + (f"{user}@" if user else "") + host + (f":{port}" if port else "")
    if params:
        uri += "?" + "&".join(f"{k}={v}" for k, v in params.items())
    columns = [
        uri,
        draw(st.one_of(st.just("-"), st.lists(_system, min_size=1, max_size=3).map(",".join))),
        draw(st.one_of(st.just("-"), _safe_word.map(lambda w: f"/keys/{w}"))),
        draw(st.one_of(st.just("-"), st.integers(0, 64).map(str))),
        draw(
            st.one_of(
                st.just("-"),
                st.integers(0, 100).map(str),
                st.floats(0.1, 100, allow_nan=False).map(lambda f: f"{f:.3f}"),
            )
        ),
        draw(st.one_of(st.just("-"), st.lists(_feature, min_size=1, max_size=3).map(",".join))),
        draw(st.one_of(st.just("-"), st.lists(_feature, min_size=1, max_size=2).map(",".join))),
        draw(
            st.one_of(
                st.just("-"),
                st.binary(min_size=32, max_size=32).map(
                    lambda b: base64.b64encode(key_line(body=b).encode()).decode()
                ),
            )
        ),
    ]
    return " ".join(columns[: draw(st.integers(1, 8))])


@given(st.lists(machine_lines(), min_size=0, max_size=6))
@settings(max_examples=200, deadline=None)
def test_print_then_parse_gives_the_same_pool(lines):
    machines = parse("\n".join(lines))
    assert _strip(parse(format_machines(machines, nix28=False))) == _strip(machines)


@given(st.lists(machine_lines(), min_size=0, max_size=6))
@settings(max_examples=150, deadline=None)
def test_nix28_printing_changes_only_ports_and_fractions(lines):
    machines = parse("\n".join(lines))
    printed = format_machines(machines)
    expected = [
        dataclasses.replace(
            m,
            source="",
            port=None,
            speed_factor=float(max(1, round(m.speed_factor))),
            uri=(uri := re.sub(r":[0-9]+(?=$|\?)", "", m.uri)),
            name=default_name(uri),  # a port no longer named
        )
        for m in machines
    ]
    assert _strip(parse(printed)) == expected
    assert all(line and line == line.strip(" \t") for line in printed.splitlines())


_nasty = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(max_codepoint=0x7F)),
    st.text(alphabet=" \t\r\n;#@-,:/?=&[]0123456789abc.+eE"),
    st.binary().map(lambda b: b.decode("utf-8", errors="surrogateescape")),
    st.lists(machine_lines()).map("\n".join),
    st.builds(lambda a, n: a * n, st.text(min_size=1, max_size=5), st.integers(1000, 20000)),
)


@given(_nasty, st.dictionaries(st.sampled_from(["/a", "/b", "x", "/c"]), _nasty, max_size=3))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_input_raises_anything_but_config_error(text, files):
    result = _config_result(
        lambda: parse_machines(text, source="fuzz", system=SYSTEM, read_file=files.get)
    )
    if isinstance(result, ConfigError):
        assert result.message
        assert "\n" not in result.message
        return
    machines, warnings = result
    assert all(isinstance(w, str) for w in warnings)
    for machine in machines:
        assert machine.max_jobs >= 0
        assert machine.speed_factor > 0
        # Whatever parses prints back to itself, or is refused with a ConfigError.
        printed = _config_result(partial(format_machines, [machine], nix28=False))
        if isinstance(printed, str):
            assert _strip(parse(printed)) == _strip([machine])


def _config_result(func: Callable[[], T]) -> T | ConfigError:
    try:
        return func()
    except ConfigError as exc:
        return exc
