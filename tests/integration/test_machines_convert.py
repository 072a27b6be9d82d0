"""`offload machines convert` on real files, with the real Nix evaluating a NixOS expression:
what it says of a file it cannot read, and that it loses no machine without saying so."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.config.machines import parse_machines
from offload.config.settings import read_nix_settings
from offload.errors import ConfigError
from tests.helpers.machines_cli import run_machines_cli

SYSTEM = read_nix_settings().system


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[ { hostName = "a" } ]\n', "syntax error, unexpected '}', expecting ';' (at {f}:1:20)"),
        (
            "{ ... }: { nix.buildMachines = []; }\n",
            "cannot convert a function to JSON (at {f}:1:1)",
        ),
    ],
    ids=["syntax", "module"],
)
def test_convert_says_nixs_error_and_where(tmp_path, capsys, monkeypatch, text, message):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    file = tmp_path / "bad.nix"
    file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        run_machines_cli(["machines", "convert", "--to", "nix", "--from", str(file)], capsys)
    expected = message.replace("{f}", str(file))
    assert caught.value.message == f"{file}: nix-instantiate could not evaluate it: {expected}"
    assert caught.value.hint is not None
    assert "nix.buildMachines" in caught.value.hint


def test_convert_reads_a_hand_written_nixos_expression(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    fixture = Path(__file__).parent.parent / "fixtures" / "machines" / "build-machines.nix"
    _, out, _ = run_machines_cli(
        ["machines", "convert", "--to", "nix", "--from", str(fixture)], capsys
    )
    (a, b) = parse_machines(out, source="-", system=SYSTEM, base_dir=tmp_path)[0]
    assert (a.uri, a.systems, a.max_jobs, a.speed_factor) == (
        "ssh://root@nx-fix-a.invalid",
        ("x86_64-linux",),
        8,
        4.0,
    )
    assert a.public_host_key is not None
    assert a.public_host_key.startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5")
    assert (b.uri, b.systems, b.mandatory_features) == (
        "ssh-ng://nx-fix-b.invalid",
        ("aarch64-linux", "armv7l-linux"),
        frozenset({"benchmark"}),
    )


def test_convert_keeps_every_machine_or_says_why_not(tmp_path, capsys, monkeypatch):
    # A disabled machine, and one offload never connects to, were dropped without a word
    # (exit 0), though toml can say enabled = false.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    toml = tmp_path / "pool.toml"
    toml.write_text(
        '[[machine]]\nuri = "ssh://nx-cv-a.invalid"\n'
        '[[machine]]\nuri = "ssh://nx-cv-b.invalid"\nenabled = false\n'
        '[[machine]]\nuri = "ssh://nx-cv-c.invalid"\npublic-host-key = "bm90IGEga2V5"\n'
    )
    _, out, err = run_machines_cli(
        ["machines", "convert", "--to", "toml", "--from", str(toml)], capsys
    )
    assert 'uri = "ssh://nx-cv-b.invalid"\nenabled = false' in out
    assert "nx-cv-c" not in out
    assert "warning: nx-cv-c.invalid left out: offload never connects to it: " in err
    _, out, err = run_machines_cli(
        ["machines", "convert", "--to", "nix", "--from", str(toml)], capsys
    )
    assert [line.split()[0] for line in out.splitlines() if not line.startswith("#")] == [
        "ssh://nx-cv-a.invalid"
    ]
    said = "warning: nx-cv-b.invalid left out: enabled = false has no form in a nix file"
    assert said in err
    _, out, err = run_machines_cli(
        ["machines", "convert", "--to", "toml", "--from", str(toml), "--on", "nx-cv-b.invalid"],
        capsys,
    )
    assert "nx-cv-a" not in out
    assert "nx-cv-b" in out  # named: taken, disabled or not


def test_a_store_here_named_as_a_builder_stays_in_nixs_forms_and_a_cache_goes(
    tmp_path, capsys, monkeypatch
):
    # offload leaves both lines out of its pool; Nix builds in `local` (a user's way to keep
    # building here beside builders), and fails every build it sends to a cache.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    file = tmp_path / "machines"
    file.write_text(
        f"ssh://nx-cv-a.invalid {SYSTEM}\nlocal {SYSTEM}\nhttps://nx-cv.invalid {SYSTEM}\n"
    )
    for to in ("nix", "toml"):
        _, out, err = run_machines_cli(
            ["machines", "convert", "--to", to, "--from", str(file)], capsys
        )
        assert "warning: https://nx-cv.invalid left out: offload never connects to it: " in err
        assert "https://" not in out
        assert ("\nlocal " in out) is (to == "nix")
        assert ("warning: local left out" in err) is (to == "toml")


def test_a_file_s_relative_include_is_relative_to_the_current_directory(
    tmp_path, capsys, monkeypatch
):
    # As Nix reads it (and `--builders @sub/machines`): `convert --from` read it relative to
    # the file's directory, and converted another machine than Nix uses.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "machines").write_text("@extra\n")
    (tmp_path / "extra").write_text(f"ssh://inc-cwd.invalid {SYSTEM}\n")
    (tmp_path / "sub" / "extra").write_text(f"ssh://inc-sub.invalid {SYSTEM}\n")
    _, out, _ = run_machines_cli(
        ["machines", "convert", "--to", "nix", "--from", "sub/machines"], capsys
    )
    assert [m.uri for m in parse_machines(out, source="-", system=SYSTEM)[0]] == [
        "ssh://inc-cwd.invalid"
    ]


def test_what_a_machine_loses_in_nixs_forms_is_said_on_stderr(tmp_path, capsys, monkeypatch):
    # A dropped port was a comment in the output only: `> /etc/nix/machines` showed nothing,
    # and the line then reached port 22, maybe another machine.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    toml = tmp_path / "pool.toml"
    toml.write_text(
        '[[machine]]\nuri = "ssh://nx-cv-p.invalid"\nport = 2222\n'
        '[[machine]]\nuri = "ssh://nx-cv-s.invalid"\nbuilders-use-substitutes = true\n'
    )
    expected = {
        ("nix",): (True, True),
        ("nix", "--newer-nix"): (False, True),
        ("nixos",): (True, True),
        ("toml",): (False, False),
    }
    for (to, *more), (port, substitutes) in expected.items():
        argv = ["machines", "convert", "--to", to, *more, "--from", str(toml)]
        _, _, err = run_machines_cli(argv, capsys)
        assert ("warning: nx-cv-p.invalid:2222: port 2222 dropped: " in err) is port, (to, err)
        said = "warning: nx-cv-s.invalid: builders-use-substitutes stays in its URI for offload"
        assert (said in err) is substitutes, (to, err)
