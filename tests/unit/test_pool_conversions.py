"""The pool's conversions (config/pool.py): offload.toml, NixOS options and the machines file,
read back as they were written."""

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
from offload.config.pool import Pool, apply_toml, load_pool
from offload.config.settings import LocalMachine, NixSettings, parse_offload_toml
from offload.errors import ConfigError
from offload.transport.ssh import ssh_target
from tests.helpers.pools import SYSTEM, machines, pool

KEY_LINE = (
    "ssh-ed25519 "
    + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + b"\x07" * 32).decode()
)
KEY_B64 = base64.b64encode(KEY_LINE.encode()).decode()


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


def test_a_misspelt_system_is_said_as_the_pool_is_read(tmp_path):
    # Every build went to other machines (or Nix) without a word: offload build and the hook
    # said nothing, only `offload machines` and doctor knew (hook tester).
    nix = NixSettings({"builders": "nx-s.invalid x86_64-linx; nx-ok.invalid"})
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    p = load_pool(builders=None, config=None, env=env, nix_settings=nix)
    said = (
        "nix.conf builders:1: nx-s.invalid: system 'x86_64-linx' is no Nix system (did you mean"
        " x86_64-linux?): no build asks for it"
    )
    assert p.warnings == (said,)
    # `offload machines` reads leniently and says it among the machine's problems, once.
    lenient = load_pool(builders=None, config=None, env=env, nix_settings=nix, lenient=True)
    assert lenient.warnings == ()
    # Judged on the machines offload.toml makes (a review: a system it mends was warned, one
    # it misspells was not).
    config = tmp_path / "o.toml"
    config.write_text(
        '[[machine]]\nhost = "nx-s.invalid"\nsystems = ["x86_64-linux"]\n'
        '[[machine]]\nuri = "ssh://nx-t.invalid"\nsystems = ["aarch64-linx"]\n'
    )
    mended = load_pool(builders=None, config=config, env=env, nix_settings=nix)
    [warning] = [w for w in mended.warnings if "no Nix system" in w]
    assert "nx-t.invalid: system 'aarch64-linx' is no Nix system" in warning
