"""`offload setup client` against a real local fleet: a client set up only from what it writes
builds through `offload build` and through stock Nix's own hook (`nix-build --builders`).

The client side is the files `setup client --write` makes (machines lines and ssh aliases; the
fleet's own ssh config and machines file are never used), with the fleet's client key as the
identity and no NIX_SSHOPTS but `-F` of the written ssh_config. The restricted authorized_keys
line `setup builder` writes by default is put on a member of its own fleet, and stock Nix
builds through it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from offload.config.machines import parse_machines
from offload.fleet import Fleet, MemberSpec
from offload.fleet.spec import MEMBER_AUTHORIZED_KEYS
from offload.setup.builder import BuilderSetup, authorized_keys_line
from offload.setup.probe import OTHER_PROGRAM_FIX
from offload.setup.values import parse_public_key
from tests.helpers.fleets import private_fleet_fixture, speed_of
from tests.helpers.nix_files import SPEED, nix_file, out_path, valid_locally

setup_fleet = private_fleet_fixture(
    [MemberSpec("sa", 3.0, 2), MemberSpec("sb", 2.0, 1)], "ofu", scope="module"
)
serve_only_fleet = private_fleet_fixture([MemberSpec("sr", 2.0, 1)], "ofr")
idle_fleet = private_fleet_fixture([MemberSpec("si", 1.0, 1)], "ofsi")

BODY = f'{{ one = mk "setup-one" "{SPEED} > $out" {{}}; }}\n'


def clean_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment without the fleet's ssh config: only what setup wrote."""
    env = {k: v for k, v in os.environ.items() if k not in {"NIX_SSHOPTS", "NIX_CONFIG"}}
    env["OFFLOAD_STATE_DIR"] = str(tmp_path / "state")
    env["HOME"] = str(tmp_path)
    return env


def setup_client(
    tmp_path: Path, fleet: Fleet, *targets: str, sshopts: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable, "-m", "offload", "setup", "client", "--user", "root",
        "--identity", str(fleet.client_key), "--write", str(tmp_path / "client"), *targets,
    ]  # fmt: skip
    env = clean_env(tmp_path) | ({} if sshopts is None else {"NIX_SSHOPTS": sshopts})
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def target(fleet: Fleet, name: str) -> str:
    return f"{name}=127.0.0.1:{fleet.member(name).port}"


def fingerprint(path: Path) -> str:
    done = subprocess.run(
        ["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True
    )
    return done.stdout.split()[1]


def client_env(tmp_path: Path) -> dict[str, str]:
    env = clean_env(tmp_path)
    env["NIX_SSHOPTS"] = f"-F {tmp_path / 'client' / 'ssh_config'}"
    return env


def stock_nix_build(
    file: Path, machines: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Nix's own hook only: nothing builds locally (-j 0), no cache."""
    argv = [
        "nix-build", str(file), "-A", "one", "--no-out-link", "--max-jobs", "0",
        "--builders", f"@{machines}", "--option", "substituters", "",
    ]  # fmt: skip
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def offload_build(
    file: Path, machines: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """offload build on the builders only (-j 0), no cache."""
    argv = [
        sys.executable, "-m", "offload", "build", str(file), "-A", "one", "--no-out-link",
        "--builders", f"@{machines}", "-j", "0",
    ]  # fmt: skip
    env = {**env, "NIX_CONFIG": "substituters =\n"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def written(setup_fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("setup")
    done = setup_client(tmp_path, setup_fleet, target(setup_fleet, "sa"), target(setup_fleet, "sb"))
    assert done.returncode == 0, done.stderr
    for name in ("sa", "sb"):
        host_key = setup_fleet.member(name).root / "ssh_host_ed25519_key.pub"
        assert f"{name}: 127.0.0.1:{setup_fleet.member(name).port} has host key" in done.stderr
        assert fingerprint(host_key) in done.stderr
    assert "trusted on first use" in done.stderr
    return tmp_path


def test_the_machines_lines_say_what_the_members_are(setup_fleet: Fleet, written: Path) -> None:
    text = (written / "client" / "machines").read_text()
    machines, warnings = parse_machines(text, source="machines", system=setup_fleet.system)
    assert warnings == []
    assert [m.name for m in machines] == ["sa", "sb"]
    for machine in machines:
        assert machine.uri == f"ssh://root@{machine.name}"
        assert machine.systems[0] == setup_fleet.system
        assert {"big-parallel", "benchmark", "nixos-test"} <= machine.supported_features
        host_pub = setup_fleet.member(machine.name).root / "ssh_host_ed25519_key.pub"
        assert machine.public_host_key == " ".join(host_pub.read_text().split()[:2])
        assert machine.ssh_key == str(setup_fleet.client_key)
    # sa's nix.conf says max-jobs = 2; sb's says 1, which is Nix's default: its cores then.
    assert machines[0].max_jobs == 2
    assert machines[1].max_jobs == os.cpu_count()


def test_offload_build_uses_only_what_setup_wrote(
    setup_fleet: Fleet, written: Path, tmp_path: Path
) -> None:
    file = nix_file(tmp_path, BODY)
    done = offload_build(file, written / "client" / "machines", client_env(written))
    assert done.returncode == 0, done.stderr
    out = out_path(file, "one")
    assert valid_locally(out)
    assert Path(out).read_text().strip() in {
        speed_of(setup_fleet, "sa"),
        speed_of(setup_fleet, "sb"),
    }


def test_stock_nix_build_uses_only_what_setup_wrote(
    setup_fleet: Fleet, written: Path, tmp_path: Path
) -> None:
    file = nix_file(tmp_path, BODY)
    done = stock_nix_build(file, written / "client" / "machines", client_env(written))
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip()
    assert out == out_path(file, "one")
    # Nix's hook picks the fastest free machine: sa, speed 3.
    assert Path(out).read_text().strip() == speed_of(setup_fleet, "sa")
    assert setup_fleet.store_has("sa", out)


def test_a_builder_that_cannot_be_reached_writes_nothing_and_a_run_again_goes_on(
    setup_fleet: Fleet, tmp_path: Path
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        done = setup_client(
            tmp_path, setup_fleet, target(setup_fleet, "sb"), f"dead=127.0.0.1:{port}"
        )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    why = f"ssh-keyscan 127.0.0.1:{port}: no sshd answered (refused, or silent for 5 s)"
    assert errors == [
        f"error: dead (127.0.0.1:{port}): {why}",
        f"error: nothing written to {tmp_path / 'client'}: 1 of 2 builders could not be set up",
    ]
    # Written for sb alone, the files would have been refused as taken by the run that
    # follows once dead answers.
    assert not (tmp_path / "client").exists()
    done = setup_client(tmp_path, setup_fleet, target(setup_fleet, "sb"))
    assert done.returncode == 0, done.stderr
    again = setup_client(tmp_path, setup_fleet, target(setup_fleet, "sb"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"unchanged {tmp_path / 'client' / 'machines'}")
    lines = (tmp_path / "client" / "machines").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["ssh://root@sb"]


def test_printed_files_are_all_or_none_too(setup_fleet: Fleet, tmp_path: Path) -> None:
    # Without --write, the files for the builders that answered went to stdout (exit 1): a
    # `> machines` kept a config without the others.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        argv = [
            sys.executable, "-m", "offload", "setup", "client", "--user", "root",
            "--identity", str(setup_fleet.client_key), target(setup_fleet, "sb"),
            f"dead=127.0.0.1:{port}",
        ]  # fmt: skip
        done = subprocess.run(
            argv, env=clean_env(tmp_path), capture_output=True, text=True, timeout=60, check=False
        )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "error: nothing printed: 1 of 2 builders could not be set up" in done.stderr


def test_a_user_or_write_place_setup_cannot_use_is_refused_before_any_probe(
    setup_fleet: Fleet, tmp_path: Path
) -> None:
    # `--user 'a b'` was refused after the probe, in the words of a machines line's column 1;
    # `--write FILE` after every builder was probed.
    not_dir = tmp_path / "a-file"
    not_dir.write_text("")
    for extra, said in [
        (["--user", "a b"], "error: --user 'a b': the name holds white space"),
        (["--write", str(not_dir)], f"error: --write {not_dir}: not a directory"),
    ]:
        argv = [sys.executable, "-m", "offload", "setup", "client", *extra,
                "--identity", str(setup_fleet.client_key), target(setup_fleet, "sb")]  # fmt: skip
        done = subprocess.run(
            argv, env=clean_env(tmp_path), capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 1
        assert done.stderr.splitlines()[0] == said
        assert "host key" not in done.stderr  # nothing was probed


def test_a_name_the_ssh_config_already_sends_elsewhere_is_refused_not_shadowed(
    setup_fleet: Fleet, tmp_path: Path
) -> None:
    # The block written for sb, appended after the user's own `Host sb`, was never used: every
    # login went to sa, and doctor's fix for the "changed" host key pinned sa's key as sb's.
    # (ssh reads ~/.ssh/config from the passwd entry, not $HOME: the user's file is -F's.)
    config = tmp_path / "users_ssh_config"
    other = setup_fleet.member("sa").port
    config.write_text(f"Host sb\n  HostName 127.0.0.1\n  Port {other}\n")
    sshopts = f"-F {config}"
    done = setup_client(tmp_path, setup_fleet, target(setup_fleet, "sb"), sshopts=sshopts)
    assert done.returncode == 1
    port = setup_fleet.member("sb").port
    error, hint = done.stderr.splitlines()[:2]
    assert error == (
        f"error: sb (127.0.0.1:{port}): your ssh config already sends 'sb' to 127.0.0.1:{other}:"
        " a Host block for it appended after that one is never used (ssh takes the first)"
    )
    assert hint == (
        f"hint: name the builder otherwise (NAME=127.0.0.1:{port}), or mend the Host block that"
        " names sb"
    )
    assert not (tmp_path / "client").exists()
    # The user's block sends it to the builder itself (setup's own, appended by a run before).
    config.write_text(f"Host sb\n  HostName 127.0.0.1\n  Port {port}\n")
    done = setup_client(tmp_path, setup_fleet, target(setup_fleet, "sb"), sshopts=sshopts)
    assert done.returncode == 0, done.stderr


def test_a_key_that_is_not_authorized_is_refused_with_the_doctors_words(
    setup_fleet: Fleet, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    argv = [
        sys.executable, "-m", "offload", "setup", "client", "--user", "root",
        "--identity", str(stranger), target(setup_fleet, "sa"),
    ]  # fmt: skip
    done = subprocess.run(
        argv, env=clean_env(tmp_path), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stdout == ""
    first = done.stderr.splitlines()[0]
    assert first.startswith(f"error: sa (127.0.0.1:{setup_fleet.member('sa').port}): ssh: ")
    assert f"does not accept {stranger}" in first
    hint = done.stderr.splitlines()[1]
    assert hint.startswith(f"hint: add {stranger}.pub to root's authorized_keys on the builder")
    # No machines file is written yet: the key is the one given as --identity.
    assert hint.endswith("or name the right key with --identity")


def test_the_restricted_key_line_serves_stock_nix(serve_only_fleet: Fleet, tmp_path: Path) -> None:
    key = parse_public_key(Path(f"{serve_only_fleet.client_key}.pub").read_text(), "client")
    nix_store = shutil.which("nix-store")
    assert nix_store is not None
    line = authorized_keys_line(BuilderSetup("nixremote", key), nix_store)
    member = serve_only_fleet.member("sr")
    keys = member.root / "etc-nix" / Path(MEMBER_AUTHORIZED_KEYS).name
    keys.write_text(f"{line}\n")
    # The key can no longer run anything but the serve program.
    shell = subprocess.run(
        serve_only_fleet.ssh_argv("sr", "echo", "hello"),
        capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert "hello" not in shell.stdout
    file = nix_file(tmp_path, BODY)
    done = stock_nix_build(file, serve_only_fleet.machines_file, serve_only_fleet.env())
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).read_text().strip() == speed_of(serve_only_fleet, "sr")
    # setup client cannot ask that key the builder's settings: one line naming it once, and
    # the hint's flags write its line.
    where = target(serve_only_fleet, "sr")
    refused = setup_client(tmp_path, serve_only_fleet, where)
    assert refused.returncode == 1
    said = f"error: sr ({where.split('=')[1]}): cannot read the builder's systems, features"
    assert refused.stderr.splitlines()[-2].startswith(said), refused.stderr
    assert refused.stderr.splitlines()[-1].startswith("hint: give them with --system, ")
    given = ("--system", "x86_64-linux", "--feature", "", "--jobs", "1")
    written = setup_client(tmp_path, serve_only_fleet, *given, where)
    assert written.returncode == 0, written.stderr
    assert " x86_64-linux " in (tmp_path / "client" / "machines").read_text()
    # ssh-ng:// lines would open `nix-daemon --stdio`, which that key does not run.
    other = setup_client(tmp_path / "ng", serve_only_fleet, "--ssh-ng", *given, where)
    assert other.returncode == 1
    assert other.stderr.splitlines()[-1] == "hint: " + OTHER_PROGRAM_FIX["ssh-ng"]
    assert not (tmp_path / "ng" / "client").exists()


untrusted_fleet = private_fleet_fixture([MemberSpec.parse("su:1:1:untrusted")], "ofn")


def test_a_builder_whose_daemon_does_not_trust_the_user_is_not_written(
    untrusted_fleet: Fleet, tmp_path: Path
) -> None:
    # Every build sent there would fail: no machines line, the doctor's words and fix.
    done = setup_client(tmp_path, untrusted_fleet, target(untrusted_fleet, "su"))
    assert done.returncode == 1
    port = untrusted_fleet.member("su").port
    error = (
        f"error: su (127.0.0.1:{port}): trusted: root is not in trusted-users: the builder's "
        "nix-daemon refuses the derivations and unsigned inputs offload sends"
    )
    hint = "hint: add root to trusted-users in the builder's nix.conf (NixOS: nix.settings."
    hint += "trusted-users) and restart its nix-daemon"
    assert done.stderr.splitlines()[-2:] == [error, hint]
    assert not (tmp_path / "client" / "machines").exists()


daemon_only_fleet = private_fleet_fixture([MemberSpec.parse("sd:1:1:daemon")], "ofd")


def test_a_key_restricted_to_the_daemon_is_set_up_with_ssh_ng(
    daemon_only_fleet: Fleet, tmp_path: Path
) -> None:
    # Without --ssh-ng, the doctor's fix was "write ssh-ng:// in sd", a machines line setup
    # client writes as ssh:// and the user has not got yet.
    where = target(daemon_only_fleet, "sd")
    done = setup_client(tmp_path / "ssh", daemon_only_fleet, where)
    assert done.returncode == 1
    error, hint = done.stderr.splitlines()[-2:]
    assert error.startswith("error: sd (127.0.0.1:")
    assert "it answers ssh-ng://'s (`nix-daemon --stdio`)" in error
    assert hint == "hint: " + OTHER_PROGRAM_FIX["ssh"]
    assert not (tmp_path / "ssh" / "client").exists()
    # With it, an ssh-ng:// line, which offload and stock Nix build through.
    given = ("--system", "x86_64-linux", "--feature", "", "--jobs", "1")
    written = setup_client(tmp_path, daemon_only_fleet, "--ssh-ng", *given, where)
    assert written.returncode == 0, written.stderr
    machines = tmp_path / "client" / "machines"
    text = machines.read_text()
    (line,), _ = parse_machines(text, source="machines", system=daemon_only_fleet.system)
    assert (line.uri, line.max_jobs) == ("ssh-ng://root@sd", 1)
    file = nix_file(tmp_path, BODY)
    env = client_env(tmp_path)
    stock = stock_nix_build(file, machines, env)
    assert stock.returncode == 0, stock.stderr
    assert Path(stock.stdout.strip()).read_text().strip() == speed_of(daemon_only_fleet, "sd")
    file = nix_file(tmp_path, BODY, name="ours.nix")  # a salt of its own: built again
    ours = offload_build(file, machines, env)
    assert ours.returncode == 0, ours.stderr
    assert Path(ours.stdout.strip()).read_text().strip() == speed_of(daemon_only_fleet, "sd")


def test_a_builder_whose_own_max_jobs_is_0_is_refused_with_the_doctors_words(
    idle_fleet: Fleet, tmp_path: Path
) -> None:
    # Its line was written (jobs 1), and every build sent there failed: "unable to start
    # any build" (its serve program builds under its own max-jobs).
    conf = idle_fleet.member("si").root / "etc-nix" / "nix.conf"
    conf.write_text(conf.read_text().replace("max-jobs = 1", "max-jobs = 0"))
    done = setup_client(tmp_path, idle_fleet, target(idle_fleet, "si"))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    error = next(line for line in lines if line.startswith("error: "))
    assert error.startswith(f"error: si (127.0.0.1:{idle_fleet.member('si').port}): ")
    assert "the builder's max-jobs is 0" in error
    assert lines[lines.index(error) + 1].startswith("hint: set max-jobs to 1 or more")
    assert not (tmp_path / "client" / "machines").exists()
