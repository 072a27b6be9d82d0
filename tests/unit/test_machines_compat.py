"""What older Nix makes of a spec offload reads as the newest Nix does (config.machines.compat,
config.reading), NIX_REMOTE_SYSTEMS, and the machines a pool never connects to."""

from __future__ import annotations

import base64

import pytest

from offload.config.machines import parse_machines, read_machines, shown
from offload.config.machines.compat import NixCompat, old_reading_of_line
from offload.config.pool import Pool
from offload.config.reading import REMOTE_SYSTEMS_ORIGIN, read_spec
from offload.config.settings import NixSettings, builders_spec

SYSTEM = "x86_64-linux"


@pytest.mark.parametrize(
    ("line", "older"),
    [
        ("m1 - - 2", None),
        ("m1 ; m2", None),
        ("m1 # plain comment", None),
        ("@/etc/nix/machines", None),
        ("   ", "rejects the whole file for a blank entry"),
        ("  # indented comment", "rejects the whole file for a blank entry"),
        ("m1 ;", None),  # tokenizeString drops the empty piece
        ("  m1", None),  # an indented entry is tokenized the same
        ("m1 ; ", "rejects the whole file for a blank entry"),
        ("\r", "rejects the whole file for a blank entry"),
        ("m4 # c; m5", "reads this line as machine 'm4', machine 'm5', not machine 'm4'"),
        ("  @/etc/nix/more", "as machine '@/etc/nix/more', not include '/etc/nix/more'"),
    ],
)
def test_old_reading_of_a_line(line, older):
    found = old_reading_of_line(line)
    if older is None:
        assert found is None
    else:
        assert found is not None
        assert older in found


def test_compat_notes_name_the_version_and_apply_by_version():
    reading = read_machines("m1:2222 - - 1 1.5\nm2 - - 1 2\n  # c\n", source="f", system=SYSTEM)
    assert [(c.where, c.since) for c in reading.compat] == [
        ("f:1", (2, 31)),
        ("f:1", (2, 20)),
        ("f:3", (2, 29)),
    ]
    note = reading.compat[1]
    assert note.applies((2, 8, 0))
    assert note.applies(None)
    assert not note.applies((2, 20, 0))
    assert note.message((2, 8, 0)) == (
        "f:1: Nix before 2.20 rejects the whole file: speed factor '1.5' is not a whole number "
        "(the local Nix is 2.8.0)"
    )


@pytest.mark.parametrize("speed", ["2", "+2", "0"])
def test_whole_speed_factors_are_no_compat_note(speed):
    assert read_machines(f"m - - 1 {speed}", source="f", system=SYSTEM).compat == []


def test_jobs_and_speed_take_what_boost_takes():
    (m,) = parse_machines("m - - +08 2.5e1", source="f", system=SYSTEM)[0]
    assert (m.max_jobs, m.speed_factor) == (8, 25.0)


def test_nix_remote_systems_is_the_default_of_builders():
    env = {"NIX_REMOTE_SYSTEMS": "/a:/b::/c"}
    want = ("@/a\n@/b\n@/c", REMOTE_SYSTEMS_ORIGIN)
    # What `nix show-config` says under Nix 2.8 (space-joined) and >= 2.24 (newline-joined).
    assert builders_spec(None, env, NixSettings({"builders": "@/a @/b @/c"})) == want
    assert builders_spec(None, env, NixSettings({"builders": "@/a\n@/b\n@/c"})) == want
    # Read without Nix (fallback: no builders in nix.conf): Nix's default is the variable.
    assert builders_spec(None, env, NixSettings({})) == want
    # nix.conf's builders wins over the variable, --builders over both.
    assert builders_spec(None, env, NixSettings({"builders": "m"})) == ("m", "nix.conf builders")
    assert builders_spec("x", env, NixSettings({}))[1] == "--builders"


def test_several_remote_systems_files_warn_for_old_nix(tmp_path, monkeypatch):
    monkeypatch.setattr("offload.config.reading.local_nix_version", lambda: (2, 8, 0))
    (tmp_path / "a").write_text("nx-a.invalid\n")
    (tmp_path / "b").write_text("nx-b.invalid\n")
    spec = f"@{tmp_path}/a\n@{tmp_path}/b"
    machines, warnings, errors = read_spec(spec, REMOTE_SYSTEMS_ORIGIN, SYSTEM)
    assert [m.host for m in machines] == ["nx-a.invalid", "nx-b.invalid"]
    assert errors == []
    assert warnings == [
        (
            "NIX_REMOTE_SYSTEMS: Nix before 2.24 reads none of the 2 NIX_REMOTE_SYSTEMS files "
            "(it joins their names with spaces into one path) (the local Nix is 2.8.0)"
        )
    ]
    monkeypatch.setattr("offload.config.reading.local_nix_version", lambda: (2, 24, 0))
    assert read_spec(spec, REMOTE_SYSTEMS_ORIGIN, SYSTEM)[1] == []


def test_lenient_reading_keeps_every_error():
    spec = "m1 - - two\nm2\nm3 - - 1 fast\nm4 - - 1 1 - - !!\n"
    machines, _, errors = read_spec(spec, "f", SYSTEM, lenient=True)
    assert [m.host for m in machines] == ["m2"]
    assert [e.message.split(": ")[0] for e in errors] == ["f:1", "f:3", "f:4"]
    with pytest.raises(Exception, match=r"^f:1: column 4") as info:
        read_spec(spec, "f", SYSTEM)
    assert "2 more problem(s)" in (info.value.hint or "")  # type: ignore[attr-defined]


def test_a_pinned_key_that_is_no_key_is_never_selected():
    junk = base64.b64encode(b"not a key").decode()
    machines, _ = parse_machines(
        f"nx-j.invalid - - - - - - {junk}; nx-ok.invalid", source="f", system=SYSTEM
    )
    pool = Pool(None, tuple(machines))
    assert [m.host for m in pool.select().machines] == ["nx-ok.invalid"]
    assert [m.host for m in pool.select(on=["nx-j.invalid,nx-ok.invalid"]).machines] == [
        "nx-ok.invalid"
    ]


def test_shown_escapes_what_a_terminal_would_act_on():
    assert shown("plain host") == "plain host"
    assert shown("a\x1b[2Jb\x00") == "a\\x1b[2Jb\\x00"
    assert shown(b"\xff\xfeok".decode(errors="surrogateescape")) == "\\xff\\xfeok"
    assert shown("x" * 100, 10) == "xxxxxxx..."
    assert NixCompat("w", (2, 29), "does x").message(None).endswith("(the local Nix is unknown)")
