"""The effective pool and its selection for one run (config/pool.py); its conversions to
and from offload.toml, NixOS and the machines file: ``test_pool_conversions``."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from offload.config.left_out import could_build
from offload.config.naming import one_name_each
from offload.config.pool import Pool, apply_toml, load_pool
from offload.config.settings import LocalMachine, NixSettings, parse_offload_toml
from offload.errors import ConfigError
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
    with pytest.raises(ConfigError, match="no machine in the pool has the tag 'slow'"):
        pool(SPEC, TOML).select(exclude=["@slow"])
    # A typo is answered as `offload history --machine` answers it (a tester): did you mean.
    with pytest.raises(ConfigError) as typo:
        pool(SPEC, TOML).select(on=["nx-b.invlid"])
    assert str(typo.value.hint).startswith("did you mean nx-b.invalid? known names: local, ")
    with pytest.raises(ConfigError) as tag:
        pool(SPEC, TOML).select(on=["@fats"])
    assert str(tag.value.hint).startswith("did you mean @fast? known names: ")


def test_the_local_machine_left_out_by_name_is_told_from_one_taking_no_jobs():
    p = Pool(LOCAL, (), (), LOCAL)
    assert p.select(exclude=["local"]).local_left_out
    assert p.select(on=["local"]).local_left_out is False
    assert p.select(max_jobs=0).local_left_out is False
    assert p.select(max_jobs=0, exclude=["local"]).local_left_out is False
    assert p.select(max_jobs=2, exclude=["local"]).local_left_out
    assert Pool(None, (), (), LOCAL).select(exclude=["local"]).local_left_out is False


def test_what_left_the_local_machine_out_is_kept_for_who_says_which_could_build():
    # "-j 0" alone was the fix said for a local machine --on also left out (a review).
    p = Pool(LOCAL, (), (), LOCAL)
    assert p.select(max_jobs=0).local_out == ("-j 0",)
    assert p.select(exclude=["local"]).local_out == ("--exclude local",)
    assert p.select(exclude=["local,local"]).local_out == ("--exclude local",)
    assert Pool(None, (), (), LOCAL).select().local_out == ("max-jobs = 0",)
    assert p.select().local_out == ()
    said = could_build(Pool(None, (), (), LOCAL).select(), SYSTEM, ())
    assert said == ("the local machine could, but max-jobs = 0 leaves it out", "pass -j N")


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


def test_toml_empty_feature_lists_clear_the_line_s_columns():
    # A tester: `mandatory-features = []` (as `machines convert --to toml` writes it) over a
    # line with a mandatory feature kept it, without a word: the column could not be cleared.
    said = '[[machine]]\nhost = "nx-a.invalid"\nsupported-features = []\nmandatory-features = []\n'
    toml = parse_offload_toml(said, "o.toml")
    result, warnings = apply_toml(
        machines("nx-a.invalid - - 2 1 kvm,big slow"), toml, system=SYSTEM
    )
    assert (result[0].supported_features, result[0].mandatory_features) == (
        frozenset(),
        frozenset(),
    )
    assert warnings == [
        "o.toml: [[machine]] #1: overrides supported_features, mandatory_features of m:1"
    ]


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


def test_a_local_table_claiming_what_this_host_s_nix_lacks_is_warned(tmp_path):
    # A tester's `[local] features = ["cuda"]`: the local machine took the cuda build, and
    # this host's Nix refused it; nothing had said the claim was not Nix's.
    config = tmp_path / "offload.toml"
    systems = '["x86_64-linux", "builtin", "arm"]'  # builtin: every machine builds those
    config.write_text(f'[local]\nfeatures = ["kvm", "cuda"]\nsystems = {systems}\n')
    nix = NixSettings(
        {"builders": "", "system": "x86_64-linux", "system-features": "kvm big-parallel"}
    )
    said = load_pool(builders=None, config=config, env={}, nix_settings=nix).warnings
    tail = "builds needing it are sent here and fail (Nix's system-features, extra-platforms)"
    assert [w for w in said if "[local]" in w] == [
        f"{config}: [local] systems: this host's Nix lacks arm: {tail}",
        f"{config}: [local] features: this host's Nix lacks cuda: {tail}",
    ]


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
