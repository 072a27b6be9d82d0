"""`offload doctor` against a real local fleet: healthy members pass, and each way a machines
line or a builder can be wrong gets its verdict and fix.

The module's fleet is never changed: each test writes a machines file of its own with the
wrong thing in it. Only the removed authorized key needs a member changed, so that test has a
fleet of its own.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.doctor import CHECKS
from offload.fleet import Fleet, MemberSpec
from offload.fleet.spec import MEMBER_AUTHORIZED_KEYS
from offload.transport.ciphers import this_host_has_aes
from tests.helpers.doctor_runs import (
    check,
    doctor,
    lines_with,
    reports,
    verdicts,
    without_identity,
    write,
)
from tests.helpers.fleets import host_of, machines_lines, private_fleet_fixture
from tests.helpers.nix_files import SPEED, nix_file
from tests.helpers.offload_run import offload

MEMBERS = ("da", "db", "dc")

doctor_fleet = private_fleet_fixture(
    [MemberSpec(name, 1.0, 1) for name in MEMBERS], "ofd", scope="module"
)
keyless_fleet = private_fleet_fixture([MemberSpec("dk", 1.0, 1)], "ofk")


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nothing else takes it), not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_healthy_members_pass_every_check(doctor_fleet: Fleet, tmp_path: Path) -> None:
    done = doctor(doctor_fleet, tmp_path, doctor_fleet.machines_file, "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    found = reports(done)
    assert set(found) == set(MEMBERS)
    for name, report in found.items():
        assert list(verdicts(report)) == list(CHECKS)
        assert set(verdicts(report).values()) == {"ok"}, (name, report)
        assert report["ok"] is True
    assert check(found["da"], "nix")["detail"].startswith("Nix 2.")
    assert "remote pid" in check(found["da"], "serve")["detail"]


def test_the_table_and_names_narrow_the_check(doctor_fleet: Fleet, tmp_path: Path) -> None:
    done = doctor(doctor_fleet, tmp_path, doctor_fleet.machines_file, "db")
    assert done.returncode == 0, done.stderr
    header, row, *rest = done.stdout.splitlines()
    assert header.split()[0] == "MACHINE"
    assert row.split()[0] == "db"
    assert row.split()[1:-1] == ["ok"] * len(CHECKS)
    assert rest == []


def test_a_wrong_port_fails_the_port_check_and_skips_the_rest(
    doctor_fleet: Fleet, tmp_path: Path, closed_port: int
) -> None:
    machines = write(tmp_path, lines_with(doctor_fleet, "da", 0, f"ssh://da:{closed_port}"))
    done = doctor(doctor_fleet, tmp_path, machines, "da", "--json")  # its host picks it
    assert done.returncode == 1, done.stderr
    report = reports(done)[f"da:{closed_port}"]  # a port other than 22 is in its name
    port = check(report, "port")
    assert port["verdict"] == "fail"
    assert f"127.0.0.1:{closed_port}" in port["detail"]
    assert "refused" in port["detail"]
    assert "port" in port["fix"]
    assert verdicts(report)["resolve"] == "ok"
    assert {verdicts(report)[name] for name in CHECKS[2:]} == {"skipped"}


def test_a_changed_host_key_fails_ssh(doctor_fleet: Fleet, tmp_path: Path) -> None:
    other_key = next(f[7] for f in machines_lines(doctor_fleet) if host_of(f[0]) == "db")
    machines = write(tmp_path, lines_with(doctor_fleet, "da", 7, other_key))
    done = doctor(doctor_fleet, tmp_path, machines, "--json")
    assert done.returncode == 1, done.stderr
    found = reports(done)
    ssh = check(found["da"], "ssh")
    assert ssh["verdict"] == "fail"
    assert "not the pinned one" in ssh["detail"]
    assert f"column 8 of {machines}:" in ssh["fix"]
    assert verdicts(found["da"])["serve"] == "skipped"
    assert found["db"]["ok"] is True


def test_a_claimed_feature_the_member_lacks_fails_features(
    doctor_fleet: Fleet, tmp_path: Path
) -> None:
    features = next(f[5] for f in machines_lines(doctor_fleet) if host_of(f[0]) == "dc")
    lines = lines_with(doctor_fleet, "dc", 5, f"{features},cuda")
    machines = write(tmp_path, lines)
    line = 1 + next(i for i, text in enumerate(lines) if "cuda" in text)
    done = doctor(doctor_fleet, tmp_path, machines, "dc")
    assert done.returncode == 1, done.stderr
    assert "dc: features fail: claims cuda, which the builder lacks" in done.stdout
    assert f"  fix: remove it from columns 6-7 of {machines}:{line}," in done.stdout
    row = done.stdout.splitlines()[1].split()
    # Everything else was still asked: the feature is not a prerequisite.
    assert row[1 + CHECKS.index("features")] == "FAIL"
    assert row[1 + CHECKS.index("disk")] == "ok"


def test_a_removed_authorized_key_fails_ssh(keyless_fleet: Fleet, tmp_path: Path) -> None:
    member = keyless_fleet.member("dk")
    (member.root / "etc-nix" / Path(MEMBER_AUTHORIZED_KEYS).name).write_text("")
    done = doctor(keyless_fleet, tmp_path, keyless_fleet.machines_file, "--json")
    assert done.returncode == 1, done.stderr
    ssh = check(reports(done)["dk"], "ssh")
    assert ssh["verdict"] == "fail"
    assert "does not accept" in ssh["detail"]
    assert "Permission denied" in ssh["detail"]
    assert "authorized_keys" in ssh["fix"]


def test_a_missing_key_file_is_said_missing_naming_its_line(
    doctor_fleet: Fleet, tmp_path: Path
) -> None:
    # An ssh config that names no key: column 3 alone says which key ssh offers.
    env = without_identity(doctor_fleet, tmp_path)
    missing = tmp_path / "nosuchkey"
    lines = lines_with(doctor_fleet, "da", 2, str(missing))
    machines = write(tmp_path, lines)
    done = doctor(doctor_fleet, tmp_path, machines, "da", "db", "--json", env=env)
    assert done.returncode == 1, done.stderr
    found = reports(done)
    ssh = check(found["da"], "ssh")
    assert ssh["verdict"] == "fail"
    assert ssh["detail"].startswith(f"ssh key file {missing} does not exist"), ssh
    assert "does not accept" not in ssh["detail"]
    line = 1 + next(i for i, text in enumerate(lines) if str(missing) in text)
    assert ssh["fix"] == f"name an existing private key file in column 3 of {machines}:{line}"
    # The same ssh config with the key that exists in column 3 logs in.
    assert found["db"]["ok"] is True, found["db"]


def test_a_missing_key_file_warns_when_the_ssh_config_key_gets_in(
    doctor_fleet: Fleet, tmp_path: Path
) -> None:
    missing = tmp_path / "nosuchkey"
    machines = write(tmp_path, lines_with(doctor_fleet, "dc", 2, str(missing)))
    done = doctor(doctor_fleet, tmp_path, machines, "dc", "--json")
    assert done.returncode == 0, done.stderr
    ssh = check(reports(done)["dc"], "ssh")
    assert ssh["verdict"] == "warn"
    assert f"{missing} does not exist" in ssh["detail"]
    assert f"column 3 of {machines}:" in ssh["fix"]


def test_two_dead_machines_among_healthy_ones_cost_one_timeout(
    doctor_fleet: Fleet, tmp_path: Path, closed_port: int
) -> None:
    # One refuses at once; the other accepts the TCP connection and never says a word, so only
    # the connect timeout (5 s by default) ends it.
    with socket.socket() as hung:
        hung.bind(("127.0.0.2", 0))
        hung.listen()
        hung_port = int(hung.getsockname()[1])
        lines = [" ".join(fields) for fields in machines_lines(doctor_fleet)]
        lines += [
            f"ssh://127.0.0.1:{closed_port} {doctor_fleet.system} - 1 1",
            f"ssh://127.0.0.2:{hung_port} {doctor_fleet.system} - 1 1",
        ]
        started = time.monotonic()
        done = doctor(doctor_fleet, tmp_path, write(tmp_path, lines), "--json")
        wall = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    found = reports(done)
    assert len(found) == 5
    assert check(found[f"127.0.0.1:{closed_port}"], "port")["verdict"] == "fail"
    assert "no ssh greeting" in check(found[f"127.0.0.2:{hung_port}"], "port")["detail"]
    assert all(found[name]["ok"] for name in MEMBERS)
    assert wall < 10, f"doctor took {wall:.1f} s"


def test_a_missing_nix_store_fails_nix_and_skips_the_session(
    doctor_fleet: Fleet, tmp_path: Path
) -> None:
    # The program the store URI names is not there: what a builder without Nix (or without it
    # on the PATH of non-interactive sessions) looks like to ssh.
    uri = "ssh://db?remote-program=/nonexistent/nix-store"
    machines = write(tmp_path, lines_with(doctor_fleet, "db", 0, uri))
    done = doctor(doctor_fleet, tmp_path, machines, "db", "--json")
    assert done.returncode == 1, done.stderr
    report = reports(done)["db"]
    nix = check(report, "nix")
    assert nix["verdict"] == "fail"
    assert "/nonexistent/nix-store is not on the builder's PATH" in nix["detail"]
    # The line names its program: the fix is that parameter, not "install Nix".
    assert nix["fix"].startswith("remote-program=/nonexistent/nix-store in ")
    assert "ssh:// runs nix-store" in nix["fix"]
    assert verdicts(report)["ssh"] == "ok"
    assert verdicts(report)["serve"] == "skipped"


def test_a_key_file_others_may_read_warns_with_chmod(doctor_fleet: Fleet, tmp_path: Path) -> None:
    # ssh ignores the too-open key in column 3 and gets in with the fleet ssh_config's own
    # IdentityFile, so the builder is usable (exit 0) but the key named there is not.
    loose = tmp_path / "loose_key"
    loose.write_bytes(doctor_fleet.client_key.read_bytes())
    loose.chmod(0o644)
    machines = write(tmp_path, lines_with(doctor_fleet, "dc", 2, str(loose)))
    done = doctor(doctor_fleet, tmp_path, machines, "dc", "--json")
    assert done.returncode == 0, done.stderr
    ssh = check(reports(done)["dc"], "ssh")
    assert ssh["verdict"] == "warn"
    assert ssh["fix"].startswith(f"chmod 600 {loose}")


untrusted_fleet = private_fleet_fixture([MemberSpec.parse("du:1:1:untrusted")], "ofu")


def test_a_user_the_builders_daemon_does_not_trust_fails_trusted(
    untrusted_fleet: Fleet, doctor_fleet: Fleet, tmp_path: Path
) -> None:
    # Its sessions store through a nix-daemon whose trusted-users is empty (NIX_REMOTE=daemon):
    # every build sent there fails, so doctor fails it, where a member whose sessions write the
    # store themselves passes without being asked.
    done = doctor(untrusted_fleet, tmp_path, untrusted_fleet.machines_file, "--json")
    assert done.returncode == 1, done.stderr + done.stdout
    trusted = check(reports(done)["du"], "trusted")
    assert trusted["verdict"] == "fail"
    assert trusted["detail"] == (
        "root is not in trusted-users: the builder's nix-daemon refuses the derivations and "
        "unsigned inputs offload sends"
    )
    healthy = doctor(doctor_fleet, tmp_path, doctor_fleet.machines_file, "--json", "da")
    direct = check(reports(healthy)["da"], "trusted")
    assert (direct["verdict"], direct["detail"]) == (
        "ok",
        "root writes the store itself: no daemon asks",
    )


restricted_untrusted_fleet = private_fleet_fixture(
    [MemberSpec.parse("dru:1:1:serve+untrusted"), MemberSpec.parse("drd:1:1:daemon+untrusted")],
    "ofv",
    doc="Keys restricted to the serve program or the daemon, storing through a daemon that"
    " trusts nobody.",
)


def test_trust_through_a_restricted_key_is_asked_with_a_probe_path(
    restricted_untrusted_fleet: Fleet, doctor_fleet: Fleet, tmp_path: Path
) -> None:
    # No command of doctor's runs there and Nix 2.8's daemon does not say whom it trusts: an
    # unsigned path offered as an input would be is refused, over ssh:// and ssh-ng:// alike.
    fleet = restricted_untrusted_fleet
    done = doctor(fleet, tmp_path, fleet.machines_file, "--json")
    assert done.returncode == 1, done.stderr + done.stdout
    for name in ("dru", "drd"):
        trusted = check(reports(done)[name], "trusted")
        assert trusted["verdict"] == "fail", trusted
        assert trusted["detail"].startswith(
            "the builder's nix-daemon refused an unsigned path from root (cannot add path"
        ), trusted
        assert "lacks a valid signature" in trusted["detail"]
        assert trusted["fix"].startswith("add root to trusted-users")


noisy_fleet = private_fleet_fixture([MemberSpec("dn", 1.0, 1)], "ofn")


def test_a_shell_that_prints_on_start_fails_ssh_with_the_fix_and_offload_build_says_it(
    noisy_fleet: Fleet, tmp_path: Path
) -> None:
    # The Nix manual's classic: a ~/.bashrc that prints, for non-interactive shells too (bash
    # reads it for ssh's commands). Every session breaks; doctor said "install Nix".
    home = noisy_fleet.member("dn").root / "home"
    (home / ".bashrc").write_text("echo Welcome to dn\n")
    done = doctor(noisy_fleet, tmp_path, noisy_fleet.machines_file, "--json")
    assert done.returncode == 1
    ssh = check(reports(done)["dn"], "ssh")
    assert ssh["verdict"] == "fail"
    assert ssh["detail"] == (
        "logged in, but the builder's shell prints 'Welcome to dn' before any command: "
        "Nix's sessions there break on it"
    )
    assert ssh["fix"].startswith("make the builder user's shell start-up files")
    file = nix_file(tmp_path, f'mk "noisy" "{SPEED} > $out" {{}}\n')
    machines = f"@{noisy_fleet.machines_file}"
    built = offload(noisy_fleet, tmp_path, file, "-j0", "--builders", machines, "--no-out-link")
    assert built.returncode == 1
    assert (
        "cannot connect to builder 'dn' (dn): its shell printed 'Welcome to dn' before the "
        "command: Nix's sessions there break on it"
    ) in built.stderr


def test_the_changed_host_key_s_fix_pins_the_key_that_answers(
    doctor_fleet: Fleet, tmp_path: Path
) -> None:
    """The fix's command, run as it is written, prints the column that makes ssh pass."""
    other_key = next(f[7] for f in machines_lines(doctor_fleet) if host_of(f[0]) == "db")
    machines = write(tmp_path, lines_with(doctor_fleet, "da", 7, other_key))
    done = doctor(doctor_fleet, tmp_path, machines, "--json", "da")
    quoted = check(reports(done)["da"], "ssh")["fix"].split("`")[1::2]
    command = next(c for c in quoted if c.startswith("ssh-keyscan"))
    printed = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, timeout=60, check=False
    )
    assert printed.stdout.strip(), f"{command}: {printed.stderr}"
    fixed = write(tmp_path, lines_with(doctor_fleet, "da", 7, printed.stdout.strip()), "fixed")
    again = doctor(doctor_fleet, tmp_path, fixed, "--json", "da")
    assert again.returncode == 0, again.stdout + again.stderr
    assert check(reports(again)["da"], "ssh")["verdict"] == "ok"


def test_a_system_with_a_typo_gets_the_one_meant_and_that_fix_passes(
    doctor_fleet: Fleet, tmp_path: Path
) -> None:
    """Removing the misspelt system, as for one the builder cannot build, would leave the
    line without its real system: the fix names the one meant, and doing it passes."""
    machines = write(tmp_path, lines_with(doctor_fleet, "db", 1, "x86_64-linx"))
    done = doctor(doctor_fleet, tmp_path, machines, "--json", "db")
    assert done.returncode == 1, done.stderr
    systems = check(reports(done)["db"], "systems")
    assert "x86_64-linx (did you mean x86_64-linux?)" in systems["detail"]
    assert systems["fix"].startswith("write x86_64-linux for x86_64-linx in column 2 of ")
    meant = systems["fix"].split()[1]
    fixed = write(tmp_path, lines_with(doctor_fleet, "db", 1, meant), "fixed")
    again = doctor(doctor_fleet, tmp_path, fixed, "--json", "db")
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_backoff_is_said_for_the_line_it_failed_with_and_not_once_it_is_fixed(
    doctor_fleet: Fleet, tmp_path: Path
) -> None:
    """A run backs da off for a host key pinned wrong: doctor on that line says the backoff
    that keeps runs from it (it said nothing of it once), with a command that works; on the
    line fixed, the backoff is no longer in force (runs try the fix at once): not said."""
    other_key = next(f[7] for f in machines_lines(doctor_fleet) if host_of(f[0]) == "db")
    wrong = write(tmp_path, lines_with(doctor_fleet, "da", 7, other_key), "wrong")
    file = nix_file(tmp_path, f'{{ one = mk "one" "{SPEED} > $out" {{}}; }}')
    built = offload(doctor_fleet, tmp_path, file, "-A", "one", "--builders", f"@{wrong}",
                    "--on", "da,local", "--no-out-link")  # fmt: skip
    assert built.returncode == 0, built.stderr
    fixed = doctor(doctor_fleet, tmp_path, doctor_fleet.machines_file, "da")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "backed off" not in fixed.stdout, fixed.stdout
    done = doctor(doctor_fleet, tmp_path, wrong, "da")
    line = done.stdout.splitlines()[-1]
    assert line.startswith("da: backed off until "), done.stdout
    assert "not the one trusted for it" in line
    command = line.split("`")[1]
    assert command == "offload machines --reset da"
    # And in --json, which had no word of it.
    shown = doctor(doctor_fleet, tmp_path, wrong, "da", "--json")
    [da] = json.loads(shown.stdout)
    assert da["backoff"]["failures"] >= 1, da
    assert "not the one trusted for it" in da["backoff"]["why"]
    assert da["backoff"]["until"] > time.time()
    reset = [sys.executable, "-m", "offload", *command.split()[1:]]
    subprocess.run(reset, env={**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")},
                   capture_output=True, timeout=60, check=True)  # fmt: skip
    again = doctor(doctor_fleet, tmp_path, wrong, "da")
    assert "backed off" not in again.stdout, again.stdout


def test_a_pin_ssh_looks_up_under_the_alias_s_host_name_is_no_changed_key(
    doctor_fleet: Fleet, tmp_path: Path
) -> None:
    """An ssh config alias without HostKeyAlias: ssh looks the pinned key up as
    [127.0.0.1]:PORT and never finds it. doctor said the key had changed (find out who
    answers, pin the new one: no key made it pass); its fix now is the alias, and it works."""
    config = tmp_path / "ssh_config"
    fleet_config = doctor_fleet.ssh_config.read_text().splitlines()
    config.write_text("".join(f"{line}\n" for line in fleet_config if "HostKeyAlias" not in line))
    sshopts = {"NIX_SSHOPTS": f"-F {config}"}
    done = doctor(doctor_fleet, tmp_path, doctor_fleet.machines_file, "--json", "da", env=sshopts)
    assert done.returncode == 1, done.stderr
    ssh = check(reports(done)["da"], "ssh")
    port = doctor_fleet.member("da").port
    assert (
        f"ssh looks its key up as [127.0.0.1]:{port}, while Nix and offload pin it as da"
        in (ssh["detail"])
    )
    assert "not the pinned one" not in ssh["detail"]
    alias = ssh["fix"].split("`")[1]
    assert alias == "HostKeyAlias da"
    config.write_text(config.read_text().replace("Host da\n", f"Host da\n  {alias}\n"))
    again = doctor(doctor_fleet, tmp_path, doctor_fleet.machines_file, "--json", "da", env=sshopts)
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_feature_with_a_typo_gets_the_one_meant_and_that_fix_passes(
    doctor_fleet: Fleet, tmp_path: Path
) -> None:
    """'remove it', the only fix said, left the line without big-parallel: builds needing it
    never went there."""
    features = next(f[5] for f in machines_lines(doctor_fleet) if host_of(f[0]) == "dc")
    typo = features.replace("big-parallel", "big-paralel")
    machines = write(tmp_path, lines_with(doctor_fleet, "dc", 5, typo))
    done = doctor(doctor_fleet, tmp_path, machines, "--json", "dc")
    assert done.returncode == 1, done.stderr
    said = check(reports(done)["dc"], "features")
    assert "big-paralel (did you mean big-parallel?)" in said["detail"]
    assert said["fix"].startswith("write big-parallel for big-paralel in columns 6-7 of ")
    meant = said["fix"].split()[1]
    fixed = write(tmp_path, lines_with(doctor_fleet, "dc", 5, typo.replace("big-paralel", meant)))
    again = doctor(doctor_fleet, tmp_path, fixed, "--json", "dc")
    assert again.returncode == 0, again.stdout + again.stderr
    assert check(reports(again)["dc"], "features")["verdict"] == "ok"


# A VM whose CPU model has no AES instructions (kvm64): its /proc/cpuinfo says so, as the
# member's own file here.
NO_AES_CPU = "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 cx16 avx\n"
no_aes_fleet = private_fleet_fixture(
    [MemberSpec("dv", 1.0, 1, proc_overrides=(("/proc/cpuinfo", NO_AES_CPU),))], "ofv"
)


def test_an_x86_builder_without_aes_gets_the_cipher_warning_and_its_fix(
    no_aes_fleet: Fleet, tmp_path: Path
) -> None:
    done = doctor(no_aes_fleet, tmp_path, no_aes_fleet.machines_file, "--json")
    assert done.returncode == 0, done.stderr + done.stdout  # a warning, not unusable
    cipher = check(reports(done)["dv"], "cipher")
    if not this_host_has_aes():  # offload offers nothing of its own: nothing to warn of
        assert cipher["verdict"] == "ok"
        return
    assert cipher["verdict"] == "warn"
    assert "its CPU has no AES instructions" in cipher["detail"]
    assert "Ciphers chacha20-poly1305@openssh.com" in cipher["fix"]


def test_a_slot_left_to_another_client_waiting_is_said_as_that(
    doctor_fleet: Fleet, tmp_path: Path
) -> None:
    # Another client waits for a slot on da (its fresh marker there): doctor's session is
    # answered "yield", which doctor said as "all held by others now" though none was held.
    slots = doctor_fleet.member("da").root / "nix" / "var" / "nix" / "offload-slots"
    slots.mkdir(mode=0o700, parents=True, exist_ok=True)
    marker = slots / "want-another-client"
    marker.touch()
    try:
        done = doctor(doctor_fleet, tmp_path, doctor_fleet.machines_file, "da", "--json")
    finally:
        marker.unlink()
    assert done.returncode == 0, done.stderr + done.stdout
    said = check(reports(done)["da"], "slots")
    assert said["verdict"] == "ok"
    assert said["detail"].endswith("; the next free one goes to another client waiting there now")


def test_a_host_key_column_of_several_keys_passes_as_nix_takes_it(
    doctor_fleet: Fleet, tmp_path: Path
) -> None:
    # Refused as junk: doctor found no builder to check.
    fields = {host_of(f[0]): f for f in machines_lines(doctor_fleet)}
    keys = [base64.b64decode(fields[name][7]).decode().strip() for name in ("da", "db")]
    both = base64.b64encode("\n".join(keys).encode()).decode()
    machines = write(tmp_path, lines_with(doctor_fleet, "da", 7, both))
    done = doctor(doctor_fleet, tmp_path, machines, "da", "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    assert set(verdicts(reports(done)["da"]).values()) == {"ok"}
