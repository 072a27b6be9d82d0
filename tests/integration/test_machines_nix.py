"""offload reads machines the way real Nix 2.8 does (its build-remote hook is the witness).

Each check runs ``nix-build`` with ``--builders SPEC --max-jobs 0 --debug`` on a derivation nobody
can build. Nix's hook then tries every machine of the right system and features, best first
("connecting to '<uri>'"), each fails fast (``.invalid`` names do not resolve; no packet leaves
the machine), and it prints its whole parsed list ("N available machines:" then one
``(systems, maxJobs, supportedFeatures, mandatoryFeatures)`` line per machine, file order).
offload's parse must predict both: the list line for line, and the order of tries (the right
machines, by speed factor, file order among equals) URI for URI.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest

from offload import process
from offload.backoff import Health, earlier_failures, load_backoff, save_backoff
from offload.config.machines import Machine, format_machines, parse_machines
from offload.config.settings import builders_spec, local_machine, read_nix_settings
from offload.errors import ConfigError
from tests.helpers.machines_cli import run_machines_cli

SYSTEM = read_nix_settings().system
KEY_LINE = (
    "ssh-ed25519 "
    + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))).decode()
)
KEY_B64 = base64.b64encode(f"{KEY_LINE} root@nx\n".encode()).decode()

PROBE = """
{ salt, system, features }: derivation {
  name = "offload-machines-probe-${salt}";
  inherit system;
  builder = "/bin/sh";
  args = [ "-c" "echo ok > $out" ];
  requiredSystemFeatures = features;
}
"""


class HookView:
    def __init__(self, stderr: str, returncode: int) -> None:
        self.stderr = stderr
        self.returncode = returncode
        self.tried = re.findall(r"^connecting to '(.*)'\.\.\.$", stderr, re.MULTILINE)
        match = re.search(r"^(\d+) available machines:\n\(systems, [^\n]*\n", stderr, re.MULTILINE)
        self.listing: list[str] | None = None
        if match:
            rest = stderr[match.end() :].splitlines()
            self.listing = rest[: int(match.group(1))]


def nix_hook(
    tmp_path: Path,
    spec: str | None,
    system: str = SYSTEM,
    features: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> HookView:
    probe = tmp_path / "probe.nix"
    probe.write_text(PROBE)
    argv = [
        "nix-build",
        str(probe),
        "--argstr", "salt", tmp_path.name,
        "--argstr", "system", system,
        "--arg", "features", "[ " + " ".join(f'"{f}"' for f in features) + " ]",
        "--no-out-link",
        *(["--builders", spec] if spec is not None else []),
        "--max-jobs", "0",
        "--debug",
        "--option", "substituters", "",
        "--option", "connect-timeout", "1",
    ]  # fmt: skip
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "NIX_SSHOPTS": "-o BatchMode=yes",
        **(env or {}),
    }
    done = process.run(argv, env=env, check=False, timeout=120, cwd=tmp_path)
    return HookView(done.stderr, done.returncode)


def offload_parse(spec: str, base_dir: Path) -> list[Machine]:
    return parse_machines(spec, source="--builders", system=SYSTEM, base_dir=base_dir)[0]


def listing_line(m: Machine) -> str:
    # build-remote.cc prints systems in file order, features sorted (std::set), ", "-joined.
    parts = [
        ", ".join(m.systems),
        str(m.max_jobs),
        ", ".join(sorted(m.supported_features)),
        ", ".join(sorted(m.mandatory_features)),
    ]
    return "(" + ", ".join(parts) + ")"


def expected_tries(ms: list[Machine], system: str, features: tuple[str, ...]) -> list[str]:
    right = [m for m in ms if m.supports(system, features)]
    # No load: 0/speed ties, so the higher speed wins, file order among equals (stable sort).
    return [m.uri for m in sorted(right, key=lambda m: -m.speed_factor)]


def assert_agrees(
    tmp_path: Path, spec: str, system: str = SYSTEM, features: tuple[str, ...] = ()
) -> list[Machine]:
    ours = offload_parse(spec, tmp_path)
    nix = nix_hook(tmp_path, spec, system, features)
    assert nix.returncode != 0, "the probe derivation must never build"
    assert nix.listing == [listing_line(m) for m in ours], nix.stderr[-3000:]
    assert nix.tried == expected_tries(ours, system, features), nix.stderr[-3000:]
    return ours


RICH = (
    f"root@nx-om-a.invalid i686-linux,{SYSTEM} /nonexistent/key 2 3 kvm,big-parallel - {KEY_B64};"
    "ssh-ng://nx-om-b.invalid?compress=true&remote-program=/bin/nix-daemon - - 1 0 big-parallel\n"
    "ssh://u@nx-om-c.invalid?remote-store=/tmp/st\t-\t-\t4\t5\n"
    "nx-om-d.invalid - - - - - - - extra columns # trailing comment\n"
    "nx-om-e.invalid - - 1 2 big-parallel benchmark\n"
)


@pytest.mark.parametrize(
    "features",
    [(), ("big-parallel",), ("benchmark",), ("benchmark", "big-parallel"), ("kvm",)],
)
def test_rich_spec_agrees_for_each_feature_set(tmp_path, features):
    ours = assert_agrees(tmp_path, RICH, features=features)
    assert len(ours) == 5
    assert ours[0].public_host_key == f"{KEY_LINE} root@nx"


def test_other_systems_agree(tmp_path):
    spec = (
        "nx-om-f.invalid aarch64-linux - 1 1; nx-om-g.invalid\n"
        "nx-om-h.invalid i686-linux,aarch64-linux - 2 7"
    )
    ours = assert_agrees(tmp_path, spec, system="aarch64-linux")
    assert [m.host for m in ours if m.supports("aarch64-linux", ())] == [
        "nx-om-f.invalid",
        "nx-om-h.invalid",
    ]


def test_mandatory_feature_table_of_nix_protocols_5_1(tmp_path):
    spec = "nx-om-mand.invalid - - 1 1 big-parallel benchmark; nx-om-plain.invalid - - 1 1 kvm"
    for i, features in enumerate([(), ("benchmark",), ("big-parallel",), ("benchmark", "kvm")]):
        sub = tmp_path / str(i)
        sub.mkdir()
        assert_agrees(sub, spec, features=features)


def test_includes_agree(tmp_path):
    (tmp_path / "more").write_text("nx-om-i2.invalid - - 3\n@" + str(tmp_path / "missing") + "\n")
    (tmp_path / "machines").write_text(
        f"nx-om-i1.invalid\n@{tmp_path}/more\nnx-om-i3.invalid - - 1 9\n"
    )
    # A newline, not "; ": 2.8 does not trim, and " @path" would be a chroot store (quirk 1).
    ours = assert_agrees(tmp_path, f"nx-om-i0.invalid\n@{tmp_path}/machines")
    assert [m.host for m in ours] == [f"nx-om-i{i}.invalid" for i in range(4)]


def test_printed_file_is_read_by_nix_2_8_as_offload_reads_it(tmp_path):
    # Everything 2.8 cannot take: indentation, blank lines, ';' in a comment, a port, a float.
    messy = (
        "  root@nx-om-p.invalid:2222 - - 2 2.6 kvm\n"
        "   \n"
        "nx-om-q.invalid - - 1 1.5 # a comment; with a semicolon\n"
        f"\t@{tmp_path}/inc\n"
    )
    (tmp_path / "inc").write_text("nx-om-r.invalid - - 3 4 - benchmark\n")
    ours = offload_parse(messy, tmp_path)
    printed = tmp_path / "printed"
    printed.write_text(format_machines(ours))
    nix_read = assert_agrees(tmp_path, f"@{printed}")
    assert [m.uri for m in nix_read] == [
        "ssh://root@nx-om-p.invalid",
        "ssh://nx-om-q.invalid",
        "ssh://nx-om-r.invalid",
    ]
    assert [m.speed_factor for m in nix_read] == [3.0, 2.0, 4.0]


def test_quirk1_is_real_in_2_8_and_offload_reads_the_line_as_newer_nix(tmp_path):
    spec = "nx-om-s.invalid\n   \n"
    nix = nix_hook(tmp_path, spec)
    assert "bad machine specification: store URL was not found" in nix.stderr
    assert [m.host for m in offload_parse(spec, tmp_path)] == ["nx-om-s.invalid"]


def test_quirk2_is_real_in_2_8_and_offload_keeps_comments_comments(tmp_path):
    spec = "nx-om-t.invalid # c; nx-om-from-comment.invalid"
    nix = nix_hook(tmp_path, spec)
    assert "ssh://nx-om-from-comment.invalid" in nix.tried
    assert [m.host for m in offload_parse(spec, tmp_path)] == ["nx-om-t.invalid"]


@pytest.mark.parametrize(
    "line",
    [
        "nx-om-x.invalid - - two",
        "nx-om-x.invalid - - 1 fast",
        "nx-om-x.invalid - - 1 1 - - not*base64",
    ],
)
def test_lines_nix_rejects_offload_rejects_too(tmp_path, line):
    nix = nix_hook(tmp_path, line)
    assert "bad machine specification" in nix.stderr or "Base64" in nix.stderr, nix.stderr[-2000:]
    with pytest.raises(ConfigError, match=r"^--builders: column \d"):
        offload_parse(line, tmp_path)


# --- Nix's settings, read through Nix ----------------------------------------------------------


def test_settings_come_from_nix_show_config(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "NIX_CONFIG": (
            "builders = nx-om-env.invalid - - 5\nmax-jobs = 3\nextra-system-features = gpu"
        ),
    }
    settings = read_nix_settings(env, {"extra-platforms": "riscv64-linux"})
    assert settings.warnings == ()
    assert builders_spec(None, env, settings) == ("nx-om-env.invalid - - 5", "NIX_CONFIG builders")
    local = local_machine(settings)
    assert local.max_jobs == 3
    assert "gpu" in local.supported_features
    assert local.systems[0] == SYSTEM
    assert "riscv64-linux" in local.systems
    options = read_nix_settings(env, {"builders": "nx-om-opt.invalid"})
    assert options.get("builders") == "nx-om-opt.invalid"


# --- the command ---------------------------------------------------------------------------------


def test_machines_json_and_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "offload").mkdir()
    (tmp_path / "offload" / "offload.toml").write_text(
        '[[machine]]\nhost = "nx-om-a.invalid"\nname = "a"\ntags = ["fast"]\nport = 2222\n'
    )
    status, out, _ = run_machines_cli(["machines", "--builders", RICH, "--json", "-j", "2"], capsys)
    assert status == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == [
        "local",
        "a",
        "nx-om-b.invalid",
        "nx-om-c.invalid",
        "nx-om-d.invalid",
        "nx-om-e.invalid",
    ]
    assert rows[0]["max_jobs"] == 2
    assert rows[1]["public_host_key"] == f"{KEY_LINE} root@nx"
    assert rows[1]["host_key_pinned"]
    assert rows[1]["port"] == 2222
    assert not rows[2]["host_key_pinned"]
    status, out, _ = run_machines_cli(["machines", "--builders", RICH, "--on", "@fast"], capsys)
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME", "HOST", "SYSTEMS", "JOBS", "SPEED", "FEATURES", "KEY", "BACKOFF",
    ]  # fmt: skip
    assert len(lines) == 2
    assert lines[1].split()[0] == "a"
    assert lines[1].split()[1].startswith("root@nx-om-a.invalid")
    assert "pinned" in lines[1].split()
    assert max(map(len, lines)) <= 100  # cut to fit; --wide shows it whole
    status, out, _ = run_machines_cli(
        ["machines", "--builders", RICH, "--on", "@fast", "--wide"], capsys
    )
    assert out.splitlines()[1].split()[1] == "root@nx-om-a.invalid:2222"


def test_machines_unknown_name_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="no machine named 'nope'"):
        run_machines_cli(["machines", "--builders", "nx-om-a.invalid", "--on", "nope"], capsys)


def test_convert_round_trips_through_nixos_and_toml(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    spec = tmp_path / "machines"
    spec.write_text(format_machines(offload_parse(RICH, tmp_path)))
    _, nixos, _ = run_machines_cli(
        ["machines", "convert", "--to", "nixos", "--from", str(spec)], capsys
    )
    (tmp_path / "machines.nix").write_text(nixos)
    # nix-instantiate (real Nix) evaluates what we wrote; read back, it is the same pool.
    _, toml, _ = run_machines_cli(
        ["machines", "convert", "--to", "toml", "--from", str(tmp_path / "machines.nix")], capsys
    )
    (tmp_path / "pool.toml").write_text(toml)
    _, back, _ = run_machines_cli(
        ["machines", "convert", "--to", "nix", "--from", str(tmp_path / "pool.toml")], capsys
    )
    assert [line for line in back.splitlines() if not line.startswith("#")] == [
        line for line in spec.read_text().splitlines() if not line.startswith("#")
    ]


# --- `offload machines`: every problem, what the local Nix would reject, backoff ------------------


def _machinesrun_machines_cli(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path, mp: pytest.MonkeyPatch
) -> tuple[int, str, list[str]]:
    mp.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    mp.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    status, out, err = run_machines_cli(["machines", *argv], capsys)
    return status, out, err.splitlines()


def test_every_problem_in_one_pass_where_nix_stops_at_the_first(tmp_path, capsys, monkeypatch):
    key = tmp_path / "id_present"
    key.write_text("")
    key.chmod(0o600)  # as ssh takes it (one others may read is a problem of its own)
    path = tmp_path / "machines"
    path.write_text(
        f"nx-om-p1.invalid - {tmp_path}/id_missing 2\n"
        "nx-om-p2.invalid - - two\n"
        "http://nx-om-cache.invalid\n"
        f"nx-om-p3.invalid - {key} 0\n"
        "nx-om-p4.invalid - - 1 fast\n"
        "nx-om-p5.invalid - - 1 1 - - not*base64\n"
    )
    nix = nix_hook(tmp_path, f"@{path}")
    # Nix 2.8: the first bad line fails the whole spec, and nothing is tried.
    assert "bad machine specification" in nix.stderr
    assert "'nx-om-p2.invalid - - two'" in nix.stderr
    assert nix.tried == []
    status, out, err = _machinesrun_machines_cli(
        ["--builders", f"@{path}"], capsys, tmp_path, monkeypatch
    )
    assert status == 1
    assert [line.split(": ")[:2] for line in err[:-1]] == [
        ["warning", f"{path}:1"],
        ["error", f"{path}:2"],
        ["warning", f"{path}:3"],
        ["warning", f"{path}:4"],
        ["error", f"{path}:5"],
        ["error", f"{path}:6"],
    ]
    assert "ssh key file" in err[0]
    assert "id_missing does not exist" in err[0]
    assert "binary cache, not a builder" in err[2]
    assert "maxJobs is 0" in err[3]
    assert err[-1].startswith("hint: fix the 3 error(s) above, then run this again")
    # The machines Nix would take are still listed, each on one line within 100 columns.
    assert [line.split()[0] for line in out.splitlines()[1:]] == [
        "local",
        "nx-om-p1.invalid",
        "http://nx-om-c..",
        "nx-om-p3.invalid",
    ]
    assert max(len(line) for line in out.splitlines()) <= 100


def test_lines_the_local_nix_rejects_are_warned_about(tmp_path, capsys, monkeypatch):
    path = tmp_path / "machines"
    path.write_text("nx-om-w1.invalid - - 1 1.5\n")
    nix = nix_hook(tmp_path, f"@{path}")
    assert "to 'unsigned int'" in nix.stderr  # Nix 2.8 rejects the file for the speed
    status, _, err = _machinesrun_machines_cli(
        ["--builders", f"@{path}"], capsys, tmp_path, monkeypatch
    )
    assert status == 0  # newer Nix and offload read it
    (line,) = err
    assert line.startswith(f"warning: {path}:1: Nix before 2.20 rejects the whole file")
    assert line.endswith("(the local Nix is 2.8.0)")
    path.write_text("nx-om-w2.invalid:2222 - - 1 2\n")
    (tmp_path / "port").mkdir()
    nix = nix_hook(tmp_path / "port", f"@{path}")
    assert "Could not resolve hostname nx-om-w2.invalid:2222" in nix.stderr
    _, _, err = _machinesrun_machines_cli(["--builders", f"@{path}"], capsys, tmp_path, monkeypatch)
    assert len(err) == 1
    assert "Nix before 2.31 gives ssh 'host:2222' as a host name" in err[0]


def test_nix_remote_systems_is_read_as_newer_nix_reads_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "ra").write_text("nx-om-ra.invalid\n")
    (tmp_path / "rb").write_text("nx-om-rb.invalid - - 3\n")
    one = nix_hook(tmp_path, None, env={"NIX_REMOTE_SYSTEMS": f"{tmp_path}/ra"})
    assert one.tried == ["ssh://nx-om-ra.invalid"]
    both = f"{tmp_path}/ra:{tmp_path}/rb"
    (tmp_path / "two").mkdir()
    two = nix_hook(tmp_path / "two", None, env={"NIX_REMOTE_SYSTEMS": both})
    assert two.listing is None  # Nix 2.8 reads none of several files
    assert "enable remote builds" in two.stderr
    monkeypatch.setenv("NIX_REMOTE_SYSTEMS", both)
    status, out, err = _machinesrun_machines_cli(["--json"], capsys, tmp_path, monkeypatch)
    assert status == 0
    rows = json.loads(out)
    assert [(r["name"], r["max_jobs"], r["source"]) for r in rows[1:]] == [
        ("nx-om-ra.invalid", 1, f"{tmp_path}/ra:1"),
        ("nx-om-rb.invalid", 3, f"{tmp_path}/rb:1"),
    ]
    assert err == [
        (
            "warning: NIX_REMOTE_SYSTEMS: Nix before 2.24 reads none of the 2 NIX_REMOTE_SYSTEMS "
            "files (it joins their names with spaces into one path) (the local Nix is 2.8.0)"
        )
    ]


def test_backoff_is_shown_and_reset(tmp_path, capsys, monkeypatch):
    state = tmp_path / "state" / "offload"
    state.mkdir(parents=True)
    until = time.time() + 600
    save_backoff(
        state / "backoff.json",
        {"nx-om-b1.invalid": Health(2, until, "ssh: connection refused\x1b[2J")},
        time.time(),
    )
    spec = "nx-om-b1.invalid; nx-om-b2.invalid"
    _, out, _ = _machinesrun_machines_cli(["--builders", spec], capsys, tmp_path, monkeypatch)
    clock = time.strftime("%H:%M:%S", time.localtime(until))
    assert out.splitlines()[2].endswith(f"until {clock} (2x)")
    _, out, _ = _machinesrun_machines_cli(
        ["--builders", spec, "--wide"], capsys, tmp_path, monkeypatch
    )
    assert f"until {clock} (2x): ssh: connection refused\\x1b[2J" in out
    _, out, _ = _machinesrun_machines_cli(
        ["--builders", spec, "--json"], capsys, tmp_path, monkeypatch
    )
    assert json.loads(out)[1]["backoff"]["failures"] == 2
    status, out, err = _machinesrun_machines_cli(
        ["--builders", spec, "--reset", "nx-om-b1.invalid,nx-om-b2.invalid"],
        capsys,
        tmp_path,
        monkeypatch,
    )
    assert status == 0
    assert err == [
        f"offload: backoff of nx-om-b1.invalid cleared ({state}/backoff.json)",
        "offload: nx-om-b2.invalid was not backed off",
    ]
    assert out.splitlines()[2].endswith("-")
    assert load_backoff(state / "backoff.json", time.time()) == {}
    # A backoff that ended is kept to count the next failure from; --reset all forgets it,
    # of a machine no longer in the pool too.
    gone = Health(3, time.time() - 60, "refused")
    save_backoff(state / "backoff.json", {"nx-om-gone.invalid": gone}, time.time())
    status, _, err = _machinesrun_machines_cli(
        ["--builders", spec, "--reset", "all"], capsys, tmp_path, monkeypatch
    )
    assert status == 0
    assert err == ["offload: nx-om-gone.invalid's failures before its backoff ended forgotten"]
    assert earlier_failures(state / "backoff.json", time.time()) == {}
    with pytest.raises(ConfigError, match="--reset nx-om-nope: no machine of that name"):
        _machinesrun_machines_cli(
            ["--builders", spec, "--reset", "nx-om-nope"], capsys, tmp_path, monkeypatch
        )


def test_dev_zero_include_fails_cleanly_through_the_command(tmp_path, capsys, monkeypatch):
    status, _, err = _machinesrun_machines_cli(
        ["--builders", "@/dev/zero"], capsys, tmp_path, monkeypatch
    )
    assert status == 1
    assert err[0] == "error: --builders: machines file /dev/zero is larger than 4 MiB; not read"
