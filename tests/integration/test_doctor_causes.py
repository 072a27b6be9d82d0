"""`offload doctor` and `offload build` against a real local fleet name the true cause of a
builder that does not work, where ssh's or Nix's words alone mislead (a "Permission denied"
that is not ssh's, a "protocol mismatch", a key that sshd never saw), and fail what fails
every build however well the rest answers.

Each test has a fleet of its own: it changes its members (their store, nix.conf or keys).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from offload.fleet.spec import MEMBER_AUTHORIZED_KEYS
from tests.helpers.doctor_runs import (
    check,
    doctor,
    lines_with,
    reports,
    verdicts,
    without_identity,
    write,
)
from tests.helpers.fleets import private_fleet_fixture
from tests.helpers.hook_runs import nix_build
from tests.helpers.nix_files import SPEED, nix_file
from tests.helpers.offload_run import offload, offload_env

SOCKET_DENIED = "error: getting status of /nix/var/nix/daemon-socket/socket: Permission denied"

socketless_fleet = private_fleet_fixture([MemberSpec("dp", 1.0, 1), MemberSpec("dq", 1.0, 1)])


def as_outsider(tmp_path: Path, member: Path) -> Path:
    """A program that runs the member's nix-store as a user outside its daemon socket's group
    (nobody), the socket's directory closed to others as Debian's nix-bin makes it (0770 root,
    nix-users): what a builder user not in nix-users meets, in Nix's own words."""
    sockets = member / "nix" / "var" / "nix" / "daemon-socket"
    sockets.mkdir(parents=True, exist_ok=True)
    sockets.chmod(0o750)
    program = tmp_path / "nix-store-as-nobody"
    program.write_text(
        "#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups "
        'env HOME=/nonexistent nix-store "$@"\n'
    )
    program.chmod(0o755)
    return program


def test_a_nix_that_may_not_reach_its_daemon_is_not_a_refused_key_nor_a_missing_nix(
    socketless_fleet: Fleet, tmp_path: Path
) -> None:
    fleet = socketless_fleet
    program = as_outsider(tmp_path, fleet.member("dp").root)
    as_outsider(tmp_path, fleet.member("dq").root)
    # dp: any command, the store URI names the program; dq: the key runs only that program.
    keys = fleet.member("dq").root / "etc-nix" / Path(MEMBER_AUTHORIZED_KEYS).name
    keys.write_text(f'restrict,command="{program} --serve --write" {keys.read_text().strip()}\n')
    uri = f"{fleet.member('dp').uri}&remote-program={program}"
    machines = write(tmp_path, lines_with(fleet, "dp", 0, uri))
    done = doctor(fleet, tmp_path, machines, "--json")
    assert done.returncode == 1, done.stderr
    for name in ("dp", "dq"):
        report = reports(done)[name]
        assert verdicts(report)["ssh"] == "ok", report  # sshd took the key
        nix = check(report, "nix")
        assert nix["verdict"] == "fail"
        assert nix["detail"] == f"the builder's Nix cannot reach its daemon: {SOCKET_DENIED}"
        assert nix["fix"].startswith(
            "let root reach the builder's nix-daemon: add it to the group that owns "
            "/nix/var/nix/daemon-socket"
        )
    file = nix_file(tmp_path, f'mk "denied" "{SPEED} > $out" {{}}\n')
    for name in ("dp", "dq"):
        built = offload(
            fleet, tmp_path, file, "-j0", "--on", name, "--builders", f"@{machines}",
            "--no-out-link",
        )  # fmt: skip
        assert built.returncode == 1
        assert f"{name}: the builder's Nix cannot reach its daemon: {SOCKET_DENIED}; " in (
            built.stderr
        )
        assert "refused the ssh key" not in built.stderr


stale_fleet = private_fleet_fixture([MemberSpec.parse("ds:1:1:untrusted")])


def test_trust_is_the_running_daemon_s_not_what_nix_conf_says_since(
    stale_fleet: Fleet, tmp_path: Path
) -> None:
    # Its sessions store through a nix-daemon that trusts nobody; root is added to
    # trusted-users in nix.conf, the daemon not restarted: it refuses every build as before
    # ("you are not privileged to build input-addressed derivations"), where doctor said ok.
    conf = stale_fleet.member("ds").root / "etc-nix" / "nix.conf"
    conf.write_text(conf.read_text().replace("trusted-users =", "trusted-users = root"))
    done = doctor(stale_fleet, tmp_path, stale_fleet.machines_file, "--json")
    assert done.returncode == 1, done.stderr + done.stdout
    trusted = check(reports(done)["ds"], "trusted")
    assert trusted["verdict"] == "fail", trusted
    assert trusted["detail"].startswith(
        "root is in trusted-users in the builder's nix.conf, but its running nix-daemon refused "
        "an unsigned path from root (cannot add path"
    )
    assert trusted["fix"].startswith("restart the builder's nix-daemon")


keys_fleet = private_fleet_fixture(
    [MemberSpec("dk", 1.0, 1), MemberSpec.parse("dv:1:1:serve"), MemberSpec.parse("dw:1:1:daemon")],
    scope="module",
    doc="Members the tests only read: a plain one, keys restricted to serve and to the daemon.",
)


def test_a_key_with_a_passphrase_is_said_to_have_one_not_to_be_refused(
    keys_fleet: Fleet, tmp_path: Path
) -> None:
    # The fleet's own key, authorized there, with a passphrase: ssh without a terminal skips it
    # without a word, and only the builder's refusal is left to read.
    locked = tmp_path / "locked_key"
    locked.write_bytes(keys_fleet.client_key.read_bytes())
    locked.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", "a secret", "-f", str(locked)], check=True)
    machines = write(tmp_path, lines_with(keys_fleet, "dk", 2, str(locked)))
    env = without_identity(keys_fleet, tmp_path)
    done = doctor(keys_fleet, tmp_path, machines, "dk", "--json", env=env)
    assert done.returncode == 1, done.stderr
    ssh = check(reports(done)["dk"], "ssh")
    assert ssh["verdict"] == "fail"
    assert ssh["detail"].startswith(
        f"ssh key {locked} has a passphrase: the nix-daemon cannot type it"
    ), ssh
    assert ssh["fix"].startswith("use a key without one: `offload setup key` makes one")
    file = nix_file(tmp_path, f'mk "locked" "{SPEED} > $out" {{}}\n')
    built = offload(
        keys_fleet, tmp_path, file, "-j0", "--on", "dk", "--builders", f"@{machines}",
        "--no-out-link", env=offload_env(keys_fleet, tmp_path, **env),
    )  # fmt: skip
    assert built.returncode == 1
    assert f"dk: ssh key {locked} has a passphrase: the nix-daemon cannot type it" in built.stderr
    assert "refused" not in built.stderr


def test_a_key_forced_to_the_other_scheme_s_program_is_said_to_be(
    keys_fleet: Fleet, tmp_path: Path
) -> None:
    # dv's key runs only `nix-store --serve --write`, dw's only `nix-daemon --stdio`; each line
    # names the other scheme. Nix says "protocol mismatch" to the hello, nothing more.
    serve_uri = keys_fleet.member("dv").uri.replace("ssh://", "ssh-ng://")
    daemon_uri = keys_fleet.member("dw").uri.replace("ssh-ng://", "ssh://")
    lines = lines_with(keys_fleet, "dv", 0, serve_uri)
    lines = [line.replace(keys_fleet.member("dw").uri, daemon_uri) for line in lines]
    machines = write(tmp_path, lines)
    done = doctor(keys_fleet, tmp_path, machines, "dv", "dw", "--json")
    assert done.returncode == 1, done.stderr
    found = reports(done)
    for name, scheme, other, program in (
        ("dv", "ssh-ng", "ssh", "nix-store --serve --write"),
        ("dw", "ssh", "ssh-ng", "nix-daemon --stdio"),
    ):
        ssh = check(found[name], "ssh")
        assert ssh["verdict"] == "fail"
        said = (
            "refused its hello ('protocol mismatch', or a daemon it relays to hung up)"
            if scheme == "ssh"
            else "said 'protocol mismatch' to its hello"
        )
        assert ssh["detail"] == (
            f"the builder's key runs another program than {scheme}:// speaks to: Nix there "
            f"{said}; it answers {other}://'s (`{program}`)"
        )
        line = 1 + next(i for i, text in enumerate(lines) if f"//{name}?" in text)
        assert ssh["fix"].startswith(f"write {other}:// in {machines}:{line} ")
    file = nix_file(tmp_path, f'mk "mismatch" "{SPEED} > $out" {{}}\n')
    built = offload(
        keys_fleet, tmp_path, file, "-j0", "--on", "dw", "--builders", f"@{machines}",
        "--no-out-link",
    )  # fmt: skip
    assert built.returncode == 1
    assert "dw: the builder's key runs another program than ssh:// speaks to" in built.stderr


idle_fleet = private_fleet_fixture([MemberSpec("di", 1.0, 1)])


def test_a_builder_whose_max_jobs_is_0_fails_where_its_builds_fail(
    idle_fleet: Fleet, tmp_path: Path
) -> None:
    # Over ssh:// the serve program builds under the builder's own max-jobs: 0 starts nothing
    # ("unable to start any build"). Over ssh-ng:// the session sends offload's own: it builds.
    conf = idle_fleet.member("di").root / "etc-nix" / "nix.conf"
    conf.write_text(conf.read_text().replace("max-jobs = 1", "max-jobs = 0"))
    serve_line = idle_fleet.machines_file.read_text().strip()
    machines = write(tmp_path, [serve_line])
    done = doctor(idle_fleet, tmp_path, machines, "--json")
    assert done.returncode == 1, done.stderr + done.stdout
    slots = check(reports(done)["di"], "slots")
    assert slots["verdict"] == "fail"
    assert slots["detail"].startswith("the builder's max-jobs is 0 and it has no builders")
    assert slots["fix"].startswith("set max-jobs to 1 or more in the builder's nix.conf")
    file = nix_file(tmp_path, f'mk "idle" "{SPEED} > $out" {{}}\n')
    built = offload(
        idle_fleet, tmp_path, file, "-j0", "--builders", f"@{machines}", "--no-out-link"
    )
    assert built.returncode == 1  # Nix's MiscFailure, which nix-build exits 1 for
    assert "unable to start any build" in built.stderr
    daemon = write(tmp_path, [serve_line.replace("ssh://", "ssh-ng://", 1)], "daemon")
    done = doctor(idle_fleet, tmp_path, daemon, "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    assert check(reports(done)["di"], "slots")["verdict"] == "ok"
    built = offload(idle_fleet, tmp_path, file, "-j0", "--builders", f"@{daemon}", "--no-out-link")
    assert built.returncode == 0, built.stderr


storeless_fleet = private_fleet_fixture([MemberSpec("dn", 1.0, 1)])


def test_a_store_the_line_names_that_the_builder_cannot_reach_fails_the_serve_check(
    storeless_fleet: Fleet, tmp_path: Path
) -> None:
    # The member runs no nix-daemon. Nix's serve program opens the store `remote-store` names
    # at its first question, not at the hello: the doctor said ok, and every build failed.
    line = storeless_fleet.machines_file.read_text().strip()
    for scheme in ("ssh", "ssh-ng"):
        named = line.replace("ssh://dn?", f"{scheme}://dn?remote-store=daemon&", 1)
        machines = write(tmp_path, [named], scheme)
        done = doctor(storeless_fleet, tmp_path, machines, "--json")
        assert done.returncode == 1, done.stderr + done.stdout
        serve = check(reports(done)["dn"], "serve")
        assert serve["verdict"] == "fail", serve
        assert serve["detail"].startswith("the builder's Nix cannot reach its daemon: error: ")
        assert serve["fix"].startswith("start the builder's nix-daemon")


broken_fleet = private_fleet_fixture([MemberSpec("dk", 1.0, 1)])


def test_a_builder_whose_nix_refuses_its_own_nix_conf_is_told_to_mend_it_not_to_install_nix(
    broken_fleet: Fleet, tmp_path: Path
) -> None:
    # Nix 2.8 follows its refusal with "Try 'nix-store --help' for more information.": doctor
    # said only that line, with "install Nix on the builder" as the fix; a file it includes
    # that is not there ("... not found") read as nix-store not being on the PATH.
    conf = broken_fleet.member("dk").root / "etc-nix" / "nix.conf"
    text = conf.read_text()
    machines = write(tmp_path, [broken_fleet.machines_file.read_text().strip()])
    file = nix_file(tmp_path, f'mk "broken" "{SPEED} > $out" {{}}\n')
    for extra, said in [
        ("max-jobs = banana", "error: configuration setting 'max-jobs' should be 'auto' or an"),
        ("include /nx-no-such/inc.conf", "error: file '/nx-no-such/inc.conf' included from"),
    ]:
        conf.write_text(f"{text}\n{extra}\n")
        done = doctor(broken_fleet, tmp_path, machines, "--json")
        assert done.returncode == 1, done.stderr + done.stdout
        nix = check(reports(done)["dk"], "nix")
        assert nix["detail"].startswith(f"`nix-store --version` stopped: {said}"), nix
        assert nix["fix"].startswith("the builder's Nix stops on its settings: mend what its")
        built = offload(
            broken_fleet, tmp_path, file, "-j0", "--builders", f"@{machines}", "--no-out-link"
        )
        assert built.returncode == 1
        assert f"`nix-store --serve --write` stopped: {said}" in built.stderr, built.stderr
        assert "mend what its error names" in built.stderr, built.stderr


forced_fleet = private_fleet_fixture(
    [MemberSpec.parse("dx:1:1:daemon")], doc="A member whose forced command a test breaks."
)


def test_a_key_forced_to_a_program_that_is_not_there_says_so(
    forced_fleet: Fleet, tmp_path: Path
) -> None:
    # command="nix-daemon-x --stdio": bash's "command not found" was said with "try ssh -v"
    # (doctor) or no fix at all (offload build) (ssh-ng tester).
    keys = forced_fleet.member("dx").root / "etc-nix" / Path(MEMBER_AUTHORIZED_KEYS).name
    keys.write_text(keys.read_text().replace("nix-daemon --stdio", "nix-daemon-x --stdio"))
    machines = forced_fleet.machines_file
    done = doctor(forced_fleet, tmp_path, machines, "dx", "--json")
    assert done.returncode == 1, done.stderr
    ssh = check(reports(done)["dx"], "ssh")
    assert ssh["detail"].startswith("the program the builder runs for this key is not there ("), ssh
    assert "nix-daemon-x: command not found" in ssh["detail"]
    assert ssh["fix"].startswith("check the key's command= in authorized_keys")
    file = nix_file(tmp_path, f'mk "forced" "{SPEED} > $out" {{}}\n')
    built = offload(
        forced_fleet, tmp_path, file, "-j0", "--builders", f"@{machines}", "--no-out-link"
    )
    assert built.returncode == 1
    assert "dx: the program the builder runs for this key is not there (" in built.stderr


@pytest.mark.usefixtures("coordinators_stopped")
def test_a_short_line_a_restricted_builders_shell_prints_is_said_at_once(
    forced_fleet: Fleet, tmp_path: Path
) -> None:
    # "hi" from ~/.bashrc before the daemon's binary reply: the master's greeting waited for a
    # newline the reply never has, 27 s, then said "no answer ... is it up?" (ssh-ng tester).
    (forced_fleet.member("dx").root / "home" / ".bashrc").write_text("echo hi\n")
    file = nix_file(tmp_path, f'mk "noisy" "{SPEED} > $out" {{}}\n')
    built = offload(
        forced_fleet, tmp_path, file, "-j0", "--builders", f"@{forced_fleet.machines_file}",
        "--no-out-link",
    )  # fmt: skip
    assert built.returncode == 1
    assert "its shell printed 'hi' before the command" in built.stderr, built.stderr
    # offload-hook's sessions read their first words alike (20 s, then "no answer").
    hooked = nix_build(forced_fleet, tmp_path, file, "-j0")
    assert hooked.returncode != 0
    assert "its shell printed 'hi' before the command" in hooked.stderr, hooked.stderr
