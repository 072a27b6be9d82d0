"""The effective pool, selection for one run, and conversions (config/pool.py)."""

from __future__ import annotations

import base64
import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.config.convert import machines_from_nixos, pool_to_nix, pool_to_nixos, pool_to_toml
from offload.config.machines import Machine, machine_problems
from offload.config.naming import one_name_each
from offload.config.pool import Pool, apply_toml, load_pool
from offload.config.settings import LocalMachine, NixSettings, parse_offload_toml
from offload.errors import ConfigError
from offload.transport.ssh import ssh_target
from tests.helpers.pools import LOCAL, SYSTEM, machines, pool

KEY_LINE = (
    "ssh-ed25519 "
    + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + b"\x07" * 32).decode()
)
KEY_B64 = base64.b64encode(KEY_LINE.encode()).decode()


TOML = """
[[machine]]
host = "nx-a.invalid"
name = "a"
tags = ["fast"]
[[machine]]
host = "nx-b.invalid"
tags = ["fast", "big"]
[[machine]]
uri = "ssh://nx-c.invalid"
enabled = false
"""
SPEC = "nx-a.invalid; nx-b.invalid; nx-c.invalid; nx-d.invalid"


def names(p: Pool) -> list[str]:
    return (["local"] if p.local else []) + [m.name for m in p.machines]


# --- select -------------------------------------------------------------------------------------


def test_default_selection_drops_only_disabled_machines():
    assert names(pool(SPEC, TOML).select()) == ["local", "a", "nx-b.invalid", "nx-d.invalid"]


def test_on_keeps_only_named_machines_and_local_only_when_named():
    p = pool(SPEC, TOML)
    assert names(p.select(on=["a"])) == ["a"]
    assert names(p.select(on=["a,local"])) == ["local", "a"]
    assert names(p.select(on=["nx-a.invalid"])) == ["a"]  # the host also names it
    assert names(p.select(on=["ssh://nx-d.invalid"])) == ["nx-d.invalid"]  # so does the URI


@pytest.mark.parametrize("on", [[""], [","], [" , "], ["", ""]])
def test_on_naming_no_machine_is_an_error_not_the_whole_pool(on):
    with pytest.raises(ConfigError, match="--on names no machine"):
        pool(SPEC, TOML).select(on=on)


def test_tags_select_every_tagged_machine():
    p = pool(SPEC, TOML)
    assert names(p.select(on=["@fast"])) == ["a", "nx-b.invalid"]
    assert names(p.select(exclude=["@big"])) == ["local", "a", "nx-d.invalid"]


def test_disabled_machine_is_used_only_when_named():
    p = pool(SPEC, TOML)
    assert names(p.select(on=["nx-c.invalid"])) == ["nx-c.invalid"]
    assert names(p.select(on=["@fast", "nx-c.invalid"])) == ["a", "nx-b.invalid", "nx-c.invalid"]


def test_exclude_and_local():
    p = pool(SPEC, TOML)
    assert names(p.select(exclude=["local", "a"])) == ["nx-b.invalid", "nx-d.invalid"]


def test_j0_removes_local_and_jn_sets_or_restores_it():
    p = pool(SPEC)
    assert p.select(max_jobs=0).local is None
    assert p.select(max_jobs=5).local == dataclasses.replace(LOCAL, max_jobs=5)
    no_local = Pool(None, p.machines, (), LOCAL)  # Nix's max-jobs = 0
    assert no_local.select().local is None
    assert no_local.select(max_jobs=3).local == dataclasses.replace(LOCAL, max_jobs=3)
    with pytest.raises(ConfigError, match="--on local, but the local machine builds nothing"):
        p.select(on=["local"], max_jobs=0)
    with pytest.raises(ConfigError, match="cannot be negative"):
        p.select(max_jobs=-1)


def test_unknown_name_lists_known_names_and_tags():
    with pytest.raises(ConfigError, match="no machine named 'nx-z'") as info:
        pool(SPEC, TOML).select(on=["nx-z"])
    assert info.value.hint == (
        "known names: local, a, nx-b.invalid, nx-c.invalid, nx-d.invalid; tags: @big, @fast"
    )
    with pytest.raises(ConfigError, match="'@slow'"):
        pool(SPEC, TOML).select(exclude=["@slow"])


def test_the_local_machine_left_out_by_name_is_told_from_one_taking_no_jobs():
    p = Pool(LOCAL, (), (), LOCAL)
    assert p.select(exclude=["local"]).local_left_out
    assert p.select(on=["local"]).local_left_out is False
    assert p.select(max_jobs=0).local_left_out is False
    assert p.select(max_jobs=0, exclude=["local"]).local_left_out is False
    assert p.select(max_jobs=2, exclude=["local"]).local_left_out
    assert Pool(None, (), (), LOCAL).select(exclude=["local"]).local_left_out is False


def test_an_unknown_name_in_a_pool_without_builders_says_where_builders_come_from():
    """`offload use fast` with Nix's default builders file missing listed 'known names: local'."""
    with pytest.raises(
        ConfigError, match="no machine named 'fast' in the pool, which has no"
    ) as info:
        Pool(LOCAL, (), (), LOCAL).select(on=["fast"])
    assert "--builders" in (info.value.hint or "")


# --- offload.toml overlay -----------------------------------------------------------------------


def test_toml_overlays_name_tags_port_enabled():
    found = {
        m.uri: m
        for m in pool(SPEC, TOML + "[[machine]]\nhost='nx-d.invalid'\nport=2222\n").machines
    }
    a = found["ssh://nx-a.invalid"]
    assert (a.name, a.tags, a.source) == ("a", frozenset({"fast"}), "m:1")
    assert not found["ssh://nx-c.invalid"].enabled
    d = found["ssh://nx-d.invalid"]
    assert (d.port, d.uri) == (2222, "ssh://nx-d.invalid")  # Nix's URI (and lock names) unchanged


def test_toml_uri_not_in_spec_defines_a_machine():
    toml = f"""
[[machine]]
uri = "root@nx-new.invalid"
name = "new"
systems = ["aarch64-linux"]
max-jobs = 6
speed-factor = 2.5
supported-features = ["kvm"]
public-host-key = "{KEY_B64}"
"""
    (new,) = [m for m in pool("nx-a.invalid", toml).machines if m.name == "new"]
    assert new.uri == "ssh://root@nx-new.invalid"
    assert (new.systems, new.max_jobs, new.speed_factor) == (("aarch64-linux",), 6, 2.5)
    assert new.public_host_key == KEY_LINE
    assert new.source == "o.toml: [[machine]] #1"


def test_toml_restating_nix_columns_overrides_with_a_warning():
    toml = parse_offload_toml('[[machine]]\nhost = "nx-a.invalid"\nmax-jobs = 9\n', "o.toml")
    result, warnings = apply_toml(machines("nx-a.invalid - - 2"), toml, system=SYSTEM)
    assert result[0].max_jobs == 9
    assert warnings == ["o.toml: [[machine]] #1: overrides max_jobs of m:1"]


def test_toml_host_matching_nothing_is_an_error():
    toml = parse_offload_toml('[[machine]]\nhost = "nx-typo.invalid"\n', "o.toml")
    with pytest.raises(ConfigError, match=r"host 'nx-typo\.invalid' matches no machine") as info:
        apply_toml(machines("nx-a.invalid"), toml, system=SYSTEM)
    assert "nx-a.invalid" in (info.value.hint or "")


def test_a_toml_name_taken_twice_leaves_the_second_out_with_a_line():
    toml = parse_offload_toml('[[machine]]\nhost = "nx-b.invalid"\nname = "nx-a.invalid"\n', "o")
    both, _ = apply_toml(machines("nx-a.invalid; nx-b.invalid"), toml, system=SYSTEM)
    kept, warnings = one_name_each(both)
    assert [m.uri for m in kept] == ["ssh://nx-a.invalid"]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "m:1: nx-a.invalid: ssh://nx-b.invalid has the name of m:1's ssh://nx-a.invalid: left out"
    )


def test_a_toml_uri_without_the_lines_query_says_how_to_add_to_that_line():
    # uri = "ssh://a" for the line ssh://a?ssh-key=...: a builder of its own, left out as the
    # line's repeat with its tags, and the hint only said to name one of "the two".
    toml = parse_offload_toml('[[machine]]\nuri = "ssh://nx-a.invalid"\ntags = ["big"]\n', "o")
    both, _ = apply_toml(machines("ssh://nx-a.invalid?ssh-key=/k"), toml, system=SYSTEM)
    kept, (warning,) = one_name_each(both)
    assert [m.uri for m in kept] == ["ssh://nx-a.invalid?ssh-key=/k"]
    assert warning.startswith("o: [[machine]] #1: nx-a.invalid: ssh://nx-a.invalid has the name")
    assert (
        'to add to that builder, key the table by uri = "ssh://nx-a.invalid?ssh-key=/k" or by '
        "its host; if they are two, give one a name of its own"
    ) in warning


# --- load_pool ----------------------------------------------------------------------------------


def test_load_pool_end_to_end(tmp_path):
    (tmp_path / "machines").write_text(f"nx-a.invalid - - 4\n@{tmp_path}/missing\n")
    config = tmp_path / "offload.toml"
    config.write_text('[local]\nspeed-factor = 3\n[[machine]]\nhost = "nx-a.invalid"\nname = "a"\n')
    nix = NixSettings({"builders": f"@{tmp_path}/machines", "max-jobs": "0", "system": SYSTEM})
    p = load_pool(builders=None, config=config, env={}, nix_settings=nix)
    assert p.local is None  # Nix's max-jobs = 0
    assert p.select(max_jobs=2).local == LocalMachine(
        3.0, 2, (SYSTEM,), frozenset(nix.words("system-features"))
    )
    assert [(m.name, m.max_jobs, m.source) for m in p.machines] == [
        ("a", 4, f"{tmp_path}/machines:1")
    ]
    missing = f"{tmp_path}/machines:2: machines file {tmp_path}/missing does not exist"
    assert p.warnings == (f"{missing}; skipped, as Nix does",)


def test_load_pool_cli_builders_win(tmp_path):
    nix = NixSettings({"builders": "nx-conf.invalid", "max-jobs": "1", "system": SYSTEM})
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    p = load_pool(builders="nx-cli.invalid", config=None, env=env, nix_settings=nix)
    assert [(m.name, m.source) for m in p.machines] == [("nx-cli.invalid", "--builders")]


# --- conversions --------------------------------------------------------------------------------


def _strip(ms: tuple[Machine, ...] | list[Machine]) -> list[Machine]:
    """The machines as described, not where from (a file's line, or an offload.toml table)."""
    return [dataclasses.replace(m, source="", origin="machines") for m in ms]


FULL = f"""
root@nx-a.invalid:2222 x86_64-linux,i686-linux /k 4 1.5 kvm,big-parallel benchmark {KEY_B64}
ssh-ng://nx-b.invalid?compress=true - - 0
local - - 2
/tmp/chroot
"""


def test_toml_round_trip_keeps_everything():
    p = pool(
        FULL, '[[machine]]\nhost = "nx-b.invalid"\nname = "b"\ntags = ["x"]\nenabled = false\n'
    )
    text = pool_to_toml(p)
    tomllib.loads(text)
    back, warnings = apply_toml([], parse_offload_toml(text, "t"), system=SYSTEM)
    assert warnings == []
    assert _strip(back) == _strip(p.machines)


def test_toml_round_trip_of_the_local_entry():
    text = pool_to_toml(Pool(LocalMachine(2.5, 3, ("a-b", "c-d"), frozenset({"f"})), ()))
    local = parse_offload_toml(text, "t").local
    assert local is not None
    assert (local.speed_factor, local.max_jobs, local.systems, local.features) == (
        2.5,
        3,
        ("a-b", "c-d"),
        frozenset({"f"}),
    )


def test_nixos_json_defaults_follow_the_module():
    ms = machines_from_nixos(
        [
            {"hostName": "nx-a.invalid", "sshUser": "root", "system": "aarch64-linux"},
            {"hostName": "local", "protocol": None, "maxJobs": 3, "speedFactor": 2},
            {
                "hostName": "nx-b.invalid",
                "protocol": "ssh-ng",
                "systems": [],
                "supportedFeatures": ["kvm"],
                "mandatoryFeatures": ["benchmark"],
                "publicHostKey": KEY_B64,
                "sshKey": "/k",
            },
        ],
        source="b.nix",
        system=SYSTEM,
    )
    assert [m.uri for m in ms] == ["ssh://root@nx-a.invalid", "local", "ssh-ng://nx-b.invalid"]
    assert ms[0].systems == ("aarch64-linux",)
    assert (ms[1].max_jobs, ms[1].speed_factor) == (3, 2.0)
    assert ms[2].systems == (SYSTEM,)
    assert ms[2].public_host_key == KEY_LINE
    assert ms[2].ssh_key == "/k"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "expected a list of machines, got a set"),
        ([3], "machine #1: expected an attribute set, got a number"),
        ([{"hostName": "h", "sytem": "x"}], "no option 'sytem' in nix.buildMachines"),
        ([{"maxJobs": 1}], "hostName is required"),
        ([{"hostName": "h", "maxJobs": "2"}], "maxJobs must be a whole number"),
        ([{"hostName": "h", "speedFactor": True}], "speedFactor must be a number"),
        ([{"hostName": "h", "systems": "x86_64-linux"}], "systems must be a list of strings"),
        ([{"hostName": "h h"}], "cannot be said in Nix's machines format"),
    ],
)
def test_nixos_json_errors(data, message):
    with pytest.raises(ConfigError, match=message) as caught:
        machines_from_nixos(data, source="b.nix", system=SYSTEM)
    # Each has its hint line (a value of the wrong type had none): what the NixOS option
    # looks like written right, or what the file holds.
    assert caught.value.hint
    option = re.search(r"(\w+) (must be|is required)", message)
    if option is not None:
        assert f"{option[1]} = " in caught.value.hint


def test_a_misspelt_nixos_option_is_named_with_the_one_meant():
    with pytest.raises(ConfigError) as caught:
        machines_from_nixos([{"hostName": "h", "maxjobs": 2}], source="b.nix", system=SYSTEM)
    assert caught.value.message == "b.nix: machine #1: no option 'maxjobs' in nix.buildMachines"
    assert caught.value.hint == "did you mean maxJobs?"


def test_nixos_output_shape():
    text = pool_to_nixos(pool(FULL))
    assert 'hostName = "nx-a.invalid";' in text
    assert 'sshUser = "root";' in text
    assert "port 2222 of nx-a.invalid dropped" in text
    assert 'protocol = "ssh-ng";' in text
    assert 'hostName = "nx-b.invalid?compress=true";' in text
    assert 'hostName = "local";\n    protocol = null;' in text
    assert f'publicHostKey = "{KEY_B64}";' in text


def test_nix_output_reparses():
    p = pool("nx-a.invalid - - 2 3 kvm")
    back = machines(pool_to_nix(p))
    assert _strip(back) == _strip(p.machines)


_name = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)


@given(
    st.lists(
        st.tuples(
            _name,
            st.one_of(st.none(), st.integers(1, 65535)),
            st.integers(0, 16),
            st.floats(0.5, 50, allow_nan=False),
            st.frozensets(_name, max_size=3),
            st.booleans(),
        ),
        max_size=5,
        unique_by=lambda t: t[0],
    )
)
@settings(max_examples=100, deadline=None)
def test_toml_round_trip_property(entries):
    found = []
    for host, port, jobs, speed, tags, enabled in entries:
        (m,) = machines(f"{host}.invalid{f':{port}' if port else ''} - - {jobs} {speed!r}")
        found.append(dataclasses.replace(m, tags=tags, enabled=enabled))
    p = Pool(None, tuple(found))
    back, _ = apply_toml([], parse_offload_toml(pool_to_toml(p), "t"), system=SYSTEM)
    assert _strip(back) == _strip(p.machines)


def test_toml_sets_compress_and_builders_use_substitutes_per_machine():
    toml = (
        '[[machine]]\nhost = "nx-a.invalid"\ncompress = true\nbuilders-use-substitutes = true\n'
        '[[machine]]\nuri = "ssh://nx-b.invalid?compress=true"\ncompress = false\n'
    )
    found = {
        m.name: m for m in pool("nx-a.invalid; ssh://nx-b.invalid?compress=true", toml).machines
    }
    a, b = found["nx-a.invalid"], found["nx-b.invalid"]
    assert (a.params["compress"], a.params["builders-use-substitutes"]) == ("true", "true")
    assert b.params["compress"] == "false"  # the toml wins over the URI
    assert "builders-use-substitutes" not in b.params
    # and a toml written from the pool says so again
    back, _ = apply_toml(
        [], parse_offload_toml(pool_to_toml(pool("nx-a.invalid", toml)), "t"), system=SYSTEM
    )
    assert back[0].params["compress"] == back[0].params["builders-use-substitutes"] == "true"


def test_toml_compress_must_be_a_boolean():
    with pytest.raises(ConfigError, match=r"o.toml: \[\[machine\]\] #1.*compress"):
        pool("nx-a.invalid", '[[machine]]\nhost = "nx-a.invalid"\ncompress = "yes"\n')


def test_a_machine_pinning_no_key_is_dropped_with_a_warning(tmp_path):
    junk = base64.b64encode(b"no key").decode()
    nix = NixSettings({"builders": f"nx-j.invalid - - - - - - {junk}; nx-ok.invalid"})
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    p = load_pool(builders=None, config=None, env=env, nix_settings=nix)
    assert [m.name for m in p.select().machines] == ["nx-ok.invalid"]
    assert p.warnings == (
        (
            "nix.conf builders:1: nx-j.invalid: its host key is base64 of no ssh key; not used "
            "(`offload machines` says more)"
        ),
    )


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("ssh://nx-$(id).invalid", "its host name holds '$', which a shell acts on"),
        ("ssh://a`b`@nx-u.invalid", "its user name holds '`', which a shell acts on"),
        ("ssh://-oProxyCommand=x", "its host name starts with '-', which ssh reads as an option"),
        ("ssh://-l@nx-v.invalid", "its user name starts with '-', which ssh reads as an option"),
    ],
)
def test_a_machine_whose_name_ssh_must_not_be_given_is_dropped_with_a_warning(tmp_path, entry, why):
    # ssh 9.6 refuses a shell's characters; an older one hands %h and %r to a ProxyCommand's
    # shell. A name starting with '-' is an option to ssh. One such line in a shared machines
    # file leaves that machine out, never the run.
    nix = NixSettings({"builders": f"{entry}; nx-ok.invalid"})
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    p = load_pool(builders=None, config=None, env=env, nix_settings=nix)
    assert [m.name for m in p.select().machines] == ["nx-ok.invalid"]
    (warning,) = p.warnings
    assert warning.endswith(f": {why}; not used (`offload machines` says more)")
    problems = machine_problems(p.machines[0], lambda _: True)
    assert len(problems) == 1
    problem = why.split(" name ", 1)[1]  # "holds '$', ...", after the name itself
    assert f"{problem}: offload does not connect to it" in problems[0]
    with pytest.raises(ConfigError, match=r"invalid ssh (host|user)"):
        ssh_target(p.machines[0])


def test_the_readmes_offload_toml_example_is_what_it_says():
    # The README is where users look for offload.toml's keys: its example must load as it says.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    toml = parse_offload_toml(example, "README.md")
    (machine,), warnings = apply_toml(machines("ssh://fast"), toml, system=SYSTEM)
    assert warnings == []
    assert (machine.name, machine.tags, machine.port, machine.enabled) == (
        "workstation",
        frozenset({"big"}),
        2222,
        True,
    )
    assert machine.params["compress"] == "true"
    assert toml.local is not None
    assert toml.local.speed_factor == 2.0


def test_a_key_given_in_the_uri_stays_there_in_toml_and_nixos():
    # ssh://a?ssh-key=/my%20key: toml and NixOS had ssh-key = "/my key" beside it, a column
    # no machines file can hold (offload refused the toml; Nix read "key" as max-jobs).
    p = pool("ssh://nx-k.invalid?ssh-key=/my%20key x86_64-linux - 1 1")
    text = pool_to_toml(p)
    assert "ssh-key" not in text.replace("?ssh-key=", "")
    back, _ = apply_toml([], parse_offload_toml(text, "t"), system=SYSTEM)
    assert [m.ssh_key for m in back] == ["/my key"]
    nixos = pool_to_nixos(p)
    assert "sshKey" not in nixos
    assert 'hostName = "nx-k.invalid?ssh-key=/my%20key";' in nixos


def test_an_at_sign_in_the_query_is_not_the_users():
    uri = "ssh://nixb@nx-q.invalid?remote-store=local%3Froot%3D/a@b"
    nixos = pool_to_nixos(pool(f"{uri} x86_64-linux - 1 1"))
    assert 'hostName = "nx-q.invalid?remote-store=local%3Froot%3D/a@b";' in nixos
    assert 'sshUser = "nixb";' in nixos


def test_a_speed_any_machines_file_holds_reads_back_from_toml():
    p = pool("nx-s.invalid x86_64-linux - 1 10000000000")
    back, _ = apply_toml([], parse_offload_toml(pool_to_toml(p), "t"), system=SYSTEM)
    assert [m.speed_factor for m in back] == [1e10]


def test_conversions_keep_offload_toml_s_compress_and_substitutes() -> None:
    # Written from the URI alone: a's toml compress and substitutes were lost in the nix
    # and NixOS forms, and b's 'compress = false' over its URI's '?compress=true' came back on.
    spec = f"ssh://nx-a.invalid {SYSTEM}\nssh://nx-b.invalid?compress=true {SYSTEM}\n"
    toml = (
        '[[machine]]\nhost = "nx-a.invalid"\ncompress = true\nbuilders-use-substitutes = true\n'
        '[[machine]]\nhost = "nx-b.invalid"\ncompress = false\n'
    )
    wanted = {
        "nx-a.invalid": {"compress": "true", "builders-use-substitutes": "true"},
        "nx-b.invalid": {"compress": "false"},
    }
    p = pool(spec, toml)
    assert {m.host: dict(m.params) for m in p.machines} == wanted
    back_nix = machines(pool_to_nix(p))
    assert {m.host: dict(m.params) for m in back_nix} == wanted
    back_toml, _ = apply_toml([], parse_offload_toml(pool_to_toml(p), "t"), system=SYSTEM)
    assert {m.host: dict(m.params) for m in back_toml} == wanted
    nixos = pool_to_nixos(p)
    assert 'hostName = "nx-a.invalid?compress=true&builders-use-substitutes=true";' in nixos
    assert 'hostName = "nx-b.invalid?compress=false";' in nixos


def test_nixos_form_drops_the_uri_s_port_whatever_offload_toml_s_is() -> None:
    p = pool(
        f"ssh://nx-a.invalid:2201 {SYSTEM}\n",
        '[[machine]]\nhost = "nx-a.invalid:2201"\nport = 2202\n',
    )
    nixos = pool_to_nixos(p)
    assert 'hostName = "nx-a.invalid";' in nixos
    assert "port 2202 of nx-a.invalid dropped" in nixos
