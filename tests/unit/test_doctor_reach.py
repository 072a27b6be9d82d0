"""The doctor's verdicts on getting to a builder, from recorded OpenSSH output."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from offload.doctor.model import Verdict
from offload.doctor.reach import (
    SshConfig,
    no_shell,
    parse_ssh_g,
    port_check,
    resolve_check,
    roots_key,
    ssh_check,
)
from offload.transport.sshopts_check import SSHOPTS_FIX
from tests.helpers.users import as_another_user

DENIED = "root@127.0.0.1: Permission denied (publickey).\r\n"
CHANGED = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Host key for fast has changed and you have requested strict checking.
Host key verification failed.
"""
UNKNOWN = (
    "No ED25519 host key is known for fast and you have requested strict checking.\r\n"
    "Host key verification failed.\r\n"
)
UNPROTECTED = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@         WARNING: UNPROTECTED PRIVATE KEY FILE!          @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
Permissions 0644 for '/k/id' are too open.
It is required that your private key files are NOT accessible by others.
This private key will be ignored.
Load key "/k/id": bad permissions
root@127.0.0.1: Permission denied (publickey).
"""


def login(code: int, stderr: str, *, pinned: bool = True):
    return ssh_check(code, stderr, key="/k/id", pinned=pinned, destination="root@b", seconds=0.1)


def test_a_login_that_worked_is_ok():
    check = login(0, "")
    assert check.verdict == Verdict.OK
    assert "root@b" in check.detail
    assert check.fix is None


def test_permission_denied_means_the_key_is_not_authorized():
    check = login(255, DENIED)
    assert check.verdict == Verdict.FAIL
    assert "does not accept /k/id" in check.detail
    assert check.fix is not None
    assert "/k/id.pub" in check.fix
    # sshd says the same of a user it does not have: the fix names the user.
    assert "add /k/id.pub to root's authorized_keys on the builder" in check.fix
    assert "check that root exists there" in check.fix
    named = ssh_check(
        255, DENIED, key="/k/id", pinned=False, destination="root@b", seconds=0.1, line="m:5"
    )
    assert named.fix is not None
    assert "column 3 of m:5" in named.fix


def test_a_changed_host_key_is_named_as_such_pinned_or_not():
    for pinned in (True, False):
        check = login(255, CHANGED, pinned=pinned)
        assert check.verdict == Verdict.FAIL
        assert "not the pinned one" in check.detail
        assert check.fix is not None
        assert "column 8" in check.fix
        named = ssh_check(
            255, CHANGED, key="/k/id", pinned=pinned, destination="root@b", seconds=0.1,
            line="/etc/nix/machines:7",
        )  # fmt: skip
        assert named.fix is not None
        assert "column 8 of /etc/nix/machines:7" in named.fix
        assert "column 8 of /etc/nix/machines:7" in named.detail


def test_an_unpinned_unknown_host_key_asks_to_pin_it():
    check = login(255, UNKNOWN, pinned=False)
    assert check.verdict == Verdict.FAIL
    assert "unknown" in check.detail
    assert check.fix is not None
    assert "ssh-keyscan" in check.fix


def test_a_pinned_key_that_fails_verification_was_changed():
    check = login(255, "Host key verification failed.\n", pinned=True)
    assert "not the pinned one" in check.detail


def test_a_key_file_others_can_read_is_refused_with_chmod_as_the_fix():
    check = login(255, UNPROTECTED)
    assert check.verdict == Verdict.FAIL
    assert "readable by others" in check.detail
    assert check.fix is not None
    assert check.fix.startswith("chmod 600 /k/id")


def test_a_key_file_others_can_read_only_warns_when_another_key_got_in():
    check = login(0, UNPROTECTED.replace(DENIED.strip(), ""))
    assert check.verdict == Verdict.WARN
    assert check.fix is not None
    assert "chmod 600" in check.fix


MISSING = "Warning: Identity file /k/id not accessible: No such file or directory.\r\n" + DENIED


def test_a_missing_key_file_is_said_missing_with_its_machines_line():
    check = ssh_check(
        255, MISSING, key="/k/id", pinned=True, destination="root@b", seconds=0.1,
        key_place="column 3 of /etc/nix/machines:3",
    )  # fmt: skip
    assert check.verdict == Verdict.FAIL
    assert check.detail.startswith("ssh key file /k/id does not exist"), check.detail
    assert "does not accept" not in check.detail
    assert check.fix == "name an existing private key file in column 3 of /etc/nix/machines:3"


def test_a_missing_key_file_warns_when_another_key_got_in():
    check = ssh_check(
        0, MISSING.replace(DENIED, ""), key="/k/id", pinned=True, destination="root@b",
        seconds=0.1, key_place="column 3 of m:1",
    )  # fmt: skip
    assert check.verdict == Verdict.WARN
    assert "/k/id does not exist" in check.detail
    assert check.fix is not None
    assert "column 3 of m:1" in check.fix


def test_an_unreadable_key_file_is_not_a_refused_key():
    check = login(255, 'Load key "/k/id": Permission denied\r\n' + DENIED)
    assert check.verdict == Verdict.FAIL
    assert "/k/id cannot be read" in check.detail
    assert "authorized_keys" not in (check.fix or "")


def test_an_unknown_failure_keeps_ssh_last_words():
    check = login(255, "kex_exchange_identification: Connection closed by remote host\n")
    assert check.verdict == Verdict.FAIL
    assert check.detail == "kex_exchange_identification: Connection closed by remote host"
    assert check.fix is not None
    assert "ssh -v" in check.fix


def test_ssh_g_gives_the_real_host_port_user_and_first_identity():
    text = (
        "user root\nhostname 127.0.0.1\nport 40022\nidentityfile /f/client_key\n"
        "identityfile ~/.ssh/id_rsa\nproxyjump none\n"
    )
    config = parse_ssh_g(text, "fast", None)
    assert config == SshConfig("127.0.0.1", 40022, "root", None, "/f/client_key")


def test_ssh_g_names_a_proxy_and_falls_back_to_the_given_host():
    config = parse_ssh_g("proxyjump bastion\n", "b1", 2222)
    assert (config.hostname, config.port, config.proxy) == ("b1", 2222, "proxyjump bastion")
    assert parse_ssh_g("", "b1", None).port == 22


def test_resolve_fails_with_a_fix_and_shows_the_alias_target():
    config = SshConfig("no-such-host.invalid", 22)
    check = resolve_check(config, [], "Name or service not known", "b1", "/etc/nix/machines:4")
    assert check.verdict == Verdict.FAIL
    assert "b1 -> no-such-host.invalid" in check.detail
    # The alias's HostName is what does not resolve: the line's name is right (a tester was
    # told to add the alias the config had).
    assert check.fix == "check the HostName the ssh config gives b1 (no-such-host.invalid)"
    plain = resolve_check(SshConfig("b1", 22), [], "Name or service not known", "b1", "m:4")
    assert plain.fix is not None
    assert plain.fix.startswith("check the host name in m:4")
    # ssh -G says the line's own name in lower case: no alias (a review).
    mac = resolve_check(SshConfig("johns-mbp.local", 22), [], "no", "Johns-MBP.local", "m:5")
    assert mac.fix is not None
    assert mac.fix.startswith("check the host name in m:5")
    assert mac.detail.startswith("Johns-MBP.local does not resolve")  # as the line says it
    ok = resolve_check(SshConfig("127.0.0.1", 22), ["127.0.0.1", "127.0.0.1"], None, "b1")
    assert ok.verdict == Verdict.OK
    assert ok.detail == "b1 -> 127.0.0.1 (127.0.0.1)"


def test_port_verdicts():
    def port(error: str | None, banner: str | None):
        return port_check("127.0.0.1:1", error=error, banner=banner, timeout=3, proxy=None)

    refused = port("Connection refused", None)
    assert refused.verdict == Verdict.FAIL
    assert "nothing listens on 127.0.0.1:1" in refused.detail
    assert refused.fix is not None
    assert "port" in refused.fix
    assert "did not answer within 3 s" in port("timed out", None).detail
    silent = port(None, None)
    assert silent.verdict == Verdict.FAIL
    assert "no ssh greeting" in silent.detail
    assert "not as sshd" in port(None, "HTTP/1.1 400 Bad Request").detail
    good = port(None, "SSH-2.0-OpenSSH_9.2p1 Debian-2")
    assert good.verdict == Verdict.OK
    assert "OpenSSH_9.2p1" in good.detail
    named = port_check(
        "127.0.0.1:1", error="Connection refused", banner=None, timeout=3, proxy=None, line="m:2"
    )
    assert named.fix is not None
    # Only Nix 2.31 on reads a port there: the fix said host:port to every Nix.
    assert "host:port in m:2 (Nix 2.31 on; an older Nix reads no port there)" in named.fix
    assert "`-p` in NIX_SSHOPTS" in named.fix  # where Nix's own hook takes one too
    proxied = port_check("b:22", error=None, banner=None, timeout=3, proxy="proxyjump j")
    assert proxied.verdict == Verdict.OK


def test_roots_key_unreadable_to_another_user_is_unknown_not_a_mode_to_loosen():
    # `offload setup key` as root makes the nix-daemon's key 0600; a user's `offload doctor`
    # cannot read it, which says nothing of whether the daemon gets in.
    place = Path(tempfile.mkdtemp(prefix="ofk", dir="/tmp"))  # others may look inside
    place.chmod(0o755)
    key = place / "offload_ed25519"
    key.write_text("private\n")
    key.chmod(0o600)  # root's: the tests run as root (README)
    stderr = f'Load key "{key}": Permission denied\nroot@b: Permission denied (publickey).\n'
    assert roots_key(stderr) is None  # root reads it: no such case

    def check() -> str:
        found = roots_key(stderr)
        return repr(None if found is None else (found.verdict, found.fix))

    answer = as_another_user(check)
    # The seeds' layout: root's key in /root/.ssh, under a /root (0700) others cannot enter,
    # so the key's own owner cannot be looked at: it was "let the user read it" then.
    hidden = place / "root" / ".ssh"
    hidden.mkdir(parents=True)
    (place / "root").chmod(0o700)
    key.rename(hidden / "remotebuild")
    stderr = stderr.replace(str(key), str(hidden / "remotebuild"))
    behind = as_another_user(check)
    shutil.rmtree(place)
    expected = repr(
        (Verdict.UNKNOWN, "run `sudo offload doctor` to check as the nix-daemon connects")
    )
    assert answer == behind == expected


def test_a_users_check_that_leaned_on_what_the_daemon_lacks_says_so() -> None:
    # NIX_SSHOPTS, an ssh agent, ~/.ssh/config: a user's doctor passed with them, where the
    # nix-daemon's builds (as root, from systemd's environment) have none of them.
    from offload.cli.doctor import _as_this_user

    place = Path(tempfile.mkdtemp(prefix="ofd", dir="/tmp"))
    place.chmod(0o755)
    with socket.socket(socket.AF_UNIX) as daemon:
        daemon.bind(str(place / "socket"))
        env = {"NIX_DAEMON_SOCKET_PATH": str(place / "socket"), "HOME": str(place)}
        leaned = {**env, "NIX_SSHOPTS": "-F cfg", "SSH_AUTH_SOCK": "/tmp/agent"}
        said = as_another_user(lambda: repr(_as_this_user(leaned)))
        plain = as_another_user(lambda: repr(_as_this_user(env)))
        no_daemon = {**leaned, "NIX_DAEMON_SOCKET_PATH": str(place / "none")}
        alone = as_another_user(lambda: repr(_as_this_user(no_daemon)))
        as_root = _as_this_user(leaned)
    shutil.rmtree(place)
    assert "checked as this user, with NIX_SSHOPTS, SSH_AUTH_SOCK; " in said
    assert "`sudo offload doctor` checks as they do" in said
    assert (plain, alone, as_root) == ("None", "None", None)


def test_a_user_without_a_shell_is_said_so_with_the_fix() -> None:
    # sshd took the key, then ran the command through nologin: "(ssh printed nothing)" and
    # "try ssh -v" was all doctor said.
    failed = ssh_check(1, "", key="/k", pinned=True, destination="nixremote@b", seconds=0.1)
    found = no_shell(failed, "This account is currently not available.\n", "nixremote@b")
    assert found is not None
    assert found.verdict == Verdict.FAIL
    assert "nixremote@b has no login shell" in found.detail
    assert found.fix is not None
    assert "useDefaultShell = true" in found.fix
    assert no_shell(failed, "", "nixremote@b") is None  # another failure: as it was
    logged_in = ssh_check(0, "", key="/k", pinned=True, destination="nixremote@b", seconds=0.1)
    assert no_shell(logged_in, "This account is currently not available.\n", "x@b") is None


def _doctor_said(tmp_path: Path, sshopts: str) -> list[str]:
    """The lines `offload doctor` prints of builder `fast` with ``sshopts`` as NIX_SSHOPTS;
    it fails (exit 1)."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "NIX_SSHOPTS": sshopts,
        "OFFLOAD_STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "offload", "doctor", "--builders", "ssh://fast x86_64-linux - 1 1"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    return done.stdout.splitlines()


def test_an_option_ssh_refuses_is_said_as_such_not_as_a_name_that_does_not_resolve(
    tmp_path: Path,
) -> None:
    # `ssh -G` failing on NIX_SSHOPTS was read as no config: doctor looked the machines line's
    # alias up in DNS and said it does not resolve, with a fix about host names.
    said = _doctor_said(tmp_path, "-o ServerAliveInterval=x")
    assert said[-2] == (
        "fast: resolve fail: ssh refused an option of NIX_SSHOPTS (command-line line 0: invalid"
        " time value.): it connects nowhere"
    ), said
    assert said[-1] == f"  fix: {SSHOPTS_FIX}"


@pytest.mark.parametrize(
    ("sshopts", "words"),
    [
        ("-Z", "unknown option -- Z"),
        ("-p notaport", "Bad port 'notaport'"),
        ("-F /nx-no-such/cfg", "Can't open user config file /nx-no-such/cfg"),
    ],
)
def test_nix_sshopts_ssh_refuses_whatever_the_host_is_said_as_such(
    tmp_path: Path, sshopts: str, words: str
) -> None:
    # Each was "fast does not resolve", with a fix about host names (interrupts tester).
    said = _doctor_said(tmp_path, sshopts)
    assert said[-2].startswith(f"fast: resolve fail: ssh refuses NIX_SSHOPTS ({words}")
    assert said[-1] == f"  fix: {SSHOPTS_FIX}"


def test_a_config_that_canonicalizes_without_fallback_is_no_refusal_of_nix_sshopts(
    tmp_path: Path,
) -> None:
    # ssh -G of the probe's name failed where the config canonicalizes with no local fallback:
    # every failed builder was said failed for NIX_SSHOPTS, backed off by none (review).
    import asyncio

    from offload.transport.sshopts_check import sshopts_refused

    config = tmp_path / "canon"
    config.write_text(
        "CanonicalizeHostname yes\nCanonicalizeFallbackLocal no\nCanonicalDomains lan\n"
    )
    env = {**os.environ, "NIX_SSHOPTS": f"-F {config}"}
    assert asyncio.run(sshopts_refused(env)) is None
    env["NIX_SSHOPTS"] += " -p notaport"
    assert asyncio.run(sshopts_refused(env)) == "ssh refuses NIX_SSHOPTS (Bad port 'notaport')"
