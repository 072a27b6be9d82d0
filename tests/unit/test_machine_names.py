"""Each line of the machines spec is a builder of its own name (``config.naming``): two builders
on one host (containers, VMs, the fleet's members on 127.0.0.1) are kept apart by their port."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from offload.build.members import pool_specs
from offload.cli.machines_list import format_table
from offload.config.convert import pool_to_toml
from offload.config.machines import default_name, parse_machines
from offload.config.naming import one_name_each
from offload.config.pool import Pool, apply_toml, load_pool
from offload.config.settings import NixSettings, parse_offload_toml
from offload.scheduler.policy.pool import Pool as SlotPool
from tests.helpers.hook_contexts import hook_context

SYSTEM = "x86_64-linux"
TWO_PORTS = f"ssh://nx-h.invalid {SYSTEM} - 2\nssh://nx-h.invalid:2222 {SYSTEM} - 3\n"


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("ssh://a", "a"),  # today's names stay where nothing clashes
        ("a", "a"),
        ("ssh://root@a?ssh-key=/k", "a"),
        ("ssh-ng://root@a", "a"),
        ("ssh://a:22", "a"),  # ssh's default port: the same name as none
        ("ssh://a:2222", "a:2222"),
        ("ssh-ng://builder@a:2201?compress=true", "a:2201"),
        ("a:2222", "a:2222"),
        ("ssh://[::1]", "::1"),
        ("ssh://[::1]:2222", "[::1]:2222"),
        ("https://cache.invalid", "https://cache.invalid"),
    ],
)
def test_a_name_is_the_host_and_a_port_other_than_22(uri: str, name: str) -> None:
    assert default_name(uri) == name


def test_offload_toml_port_wins_over_the_uris() -> None:
    assert default_name("ssh://a", port=2222) == "a:2222"
    assert default_name("ssh://a:2222", port=22) == "a"
    toml = parse_offload_toml('[[machine]]\nhost = "nx-a.invalid"\nport = 2222\n', "o.toml")
    machines = parse_machines("nx-a.invalid", source="m", system=SYSTEM)[0]
    assert [m.name for m in apply_toml(machines, toml, system=SYSTEM)[0]] == ["nx-a.invalid:2222"]


def named(text: str, toml: str | None = None) -> tuple[list[str], list[str]]:
    machines = parse_machines(text, source="m", system=SYSTEM)[0]
    if toml is not None:
        machines = apply_toml(machines, parse_offload_toml(toml, "o.toml"), system=SYSTEM)[0]
    kept, warnings = one_name_each(machines)
    return [m.name for m in kept], warnings


def test_users_name_lines_apart_only_when_they_would_share_a_name() -> None:
    # A gateway that routes each user to a container of its own.
    spec = "ssh://alice@gw:2200\nssh://bob@gw:2200\nssh://gw:2200\nssh://builder@other"
    assert named(spec) == (["alice@gw:2200", "bob@gw:2200", "gw:2200", "other"], [])
    # On another port each is apart already: no user in its name.
    assert named("ssh://alice@gw\nssh://bob@gw:2200") == (["gw", "gw:2200"], [])


def test_a_name_offload_toml_gives_is_kept_and_takes_no_user() -> None:
    toml = '[[machine]]\nuri = "ssh://bob@gw"\nname = "b2"\n'
    assert named("ssh://alice@gw\nssh://bob@gw", toml) == (["gw", "b2"], [])


@pytest.mark.parametrize(
    "second", ["ssh-ng://root@nx-a.invalid", "ssh://root@nx-a.invalid", "root@nx-a.invalid:22"]
)
def test_one_builder_listed_twice_is_left_out_with_its_file_and_line(second: str) -> None:
    names, warnings = named(f"ssh://root@nx-a.invalid\n{second}")
    assert names == ["nx-a.invalid"]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"m:2: nx-a.invalid: {parse_machines(second, source='m', system=SYSTEM)[0][0].uri} has "
        "the name of m:1's ssh://root@nx-a.invalid: left out"
    )


@pytest.mark.parametrize("source", ["/etc/nix/machines", "/srv/[[machine]]/machines"])
def test_a_toml_uri_meant_for_a_line_is_told_by_where_it_came_from(source: str) -> None:
    # A toml-defined machine was told by "[[machine]]" in its source: a machines file in a
    # directory of that name made the line look like a toml table, and the hint was lost.
    machines = parse_machines("ssh://nx-a.invalid?ssh-key=/k", source=source, system=SYSTEM)[0]
    toml = parse_offload_toml('[[machine]]\nuri = "ssh://nx-a.invalid"\ntags = ["big"]\n', "o.toml")
    machines = apply_toml(machines, toml, system=SYSTEM)[0]
    kept, (warning,) = one_name_each(machines)
    assert [m.uri for m in kept] == ["ssh://nx-a.invalid?ssh-key=/k"]
    assert warning.startswith("o.toml: [[machine]] #1: nx-a.invalid: ssh://nx-a.invalid has")
    assert "an offload.toml uri matches a line only as a whole" in warning
    assert 'key the table by uri = "ssh://nx-a.invalid?ssh-key=/k"' in warning
    assert [m.origin for m in machines] == ["machines", "toml"]


def _pool(tmp_path: Path, spec: str) -> Pool:
    config = tmp_path / "offload.toml"
    config.write_text("")
    settings = NixSettings({"builders": spec, "max-jobs": "1", "system": SYSTEM})
    return load_pool(builders=None, config=config, env={}, nix_settings=settings)


def test_two_builders_on_one_host_are_two_machines_with_their_own_slots(tmp_path: Path) -> None:
    pool = _pool(tmp_path, TWO_PORTS)
    assert pool.names() == ["local", "nx-h.invalid", "nx-h.invalid:2222"]
    assert not [w for w in pool.warnings if "left out" in w]
    slots = SlotPool(pool_specs(pool))  # refused one name twice before
    assert {name: m.free for name, m in slots.machines.items()} == {
        "local": 1,
        "nx-h.invalid": 2,
        "nx-h.invalid:2222": 3,
    }
    assert [m.port for m in pool.select(on=["nx-h.invalid:2222"]).machines] == [2222]


def test_a_name_picks_its_own_builder_and_a_host_every_one_on_it(tmp_path: Path) -> None:
    pool = _pool(tmp_path, TWO_PORTS)
    assert [m.port for m in pool.select(on=["nx-h.invalid"]).machines] == [None]
    assert [m.port for m in pool.select(exclude=["nx-h.invalid"]).machines] == [2222]
    ports = _pool(tmp_path, TWO_PORTS.replace("invalid ", "invalid:2201 "))  # none named so
    assert [m.port for m in ports.select(on=["nx-h.invalid"]).machines] == [2201, 2222]
    assert [m.port for m in ports.select(exclude=["nx-h.invalid:2201"]).machines] == [2222]


def test_the_backoff_of_one_builder_leaves_the_other_on_its_host_up(tmp_path: Path) -> None:
    context = hook_context(tmp_path, TWO_PORTS)
    context.machine_failed("nx-h.invalid", "ssh: connect to host nx-h.invalid: Connection refused")
    now = time.time()
    down = {b.spec.name: b.down_until is not None for b in context.builders(now)}
    assert down == {"nx-h.invalid": True, "nx-h.invalid:2222": False}
    assert context.machine("nx-h.invalid:2222").port == 2222
    table = format_table(context.pool, context.backoff).splitlines()
    assert [row.split()[0] for row in table[1:]] == ["nx-h.invalid", "nx-h.invalid:2222"]
    assert table[2].split()[-1] == "-"  # not backed off


def test_a_port_in_the_name_is_not_written_as_a_name_to_offload_toml(tmp_path: Path) -> None:
    text = pool_to_toml(_pool(tmp_path, "ssh://a:2222\nssh://alice@b\nssh://bob@b"))
    assert 'name = "a:2222"' not in text
    assert 'name = "alice@b"' in text  # apart only in its pool: said outright


def test_the_hook_offers_no_builder_offload_never_connects_to(tmp_path: Path) -> None:
    # A store on this host, a cache or an SSH:// line is said "not used" in the pool's
    # warnings: the hook still offered them, and every accept for them failed in ssh_target.
    spec = (
        f"local {SYSTEM}; https://nx-c.invalid {SYSTEM}; SSH://nx-u.invalid {SYSTEM};"
        f" ssh://nx-ok.invalid {SYSTEM}"
    )
    context = hook_context(tmp_path, spec)
    assert [b.spec.name for b in context.builders(time.time())] == ["nx-ok.invalid"]
