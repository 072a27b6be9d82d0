"""``offload setup builder``'s script for a host without NixOS, run for real as root in a mount
namespace of its own: /etc is a copy, /var/lib, /home and /root are empty, so ``useradd``,
sshd's and Nix's configuration are the script's to change and the host's are not.
Only ``systemctl`` is a stub (this machine runs no systemd): it records what it was asked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from offload.setup.builder import BuilderSetup, shell_script
from offload.setup.values import PublicKey

KEY = PublicKey(
    "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIOk3nH8mP9DqJw2vX2qY5h0YzX1c9m3Wq7kqgQd8n2pK", "c"
)
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqR0m0yqv2m1Hc9m3Wq7kqgQd8n2pKOk3nH8mP9DqJw other"
# Inside the namespace: bind the copies, then run the rest.
ENTER = 'set -e; mount --bind "$1" /etc; mount --bind "$2" /var/lib; mount --bind "$3" /home; '
ENTER += 'mount --bind "$4" /root; shift 4; exec "$@"'


class Host:
    """A namespace's copies of /etc, /var/lib and /home, and a way to run shell in it."""

    def __init__(self, root: Path) -> None:
        self.etc, self.var_lib, self.home = root / "etc", root / "var-lib", root / "home"
        self.root = root / "root"
        shutil.copytree("/etc", self.etc, symlinks=True)
        for empty in (self.var_lib, self.home, self.root):
            empty.mkdir()
        stubs = root / "stubs"
        stubs.mkdir()
        self.systemctl = root / "systemctl.log"
        (stubs / "systemctl").write_text(f'#!/bin/sh\necho "$*" >>{self.systemctl}\n')
        (stubs / "systemctl").chmod(0o755)
        self.path = f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin"

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", ENTER, "sh",
             str(self.etc), str(self.var_lib), str(self.home), str(self.root), "sh", "-c", script],
            env={"PATH": self.path},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip

    def keys(self, user: str) -> list[str]:
        home = {"nixremote": self.var_lib / "nixremote"}.get(user, self.home / user)
        return (home / ".ssh" / "authorized_keys").read_text().splitlines()


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def _wanted() -> str:
    nix_store = shutil.which("nix-store")
    return f'restrict,command="{nix_store} --serve --write" {KEY.line}'


def test_the_script_sets_a_builder_up_and_a_second_run_changes_nothing(host: Host) -> None:
    script = shell_script(BuilderSetup("nixremote", KEY))
    first = host.run(script)
    assert first.returncode == 0, first.stderr
    assert host.keys("nixremote") == [_wanted()]
    conf = (host.etc / "nix" / "nix.conf").read_text()
    assert conf.count("extra-trusted-users = nixremote\n") == 1
    sshd = (host.etc / "ssh" / "sshd_config").read_text()
    assert sshd.count("Match User nixremote\n") == 1
    assert host.systemctl.read_text().splitlines() == [
        "reload ssh", "daemon-reload", "restart nix-daemon"
    ]  # fmt: skip
    assert (
        first.stdout
        == "builder ready: user nixremote; now run offload setup client on the client\n"
    )
    files = [host.etc / "nix" / "nix.conf", host.etc / "ssh" / "sshd_config"]
    before = [f.read_bytes() for f in files]
    again = host.run(script)
    assert again.returncode == 0, again.stderr
    assert [f.read_bytes() for f in files] == before
    assert host.keys("nixremote") == [_wanted()]
    assert not list((host.etc / "nix").glob("*.offload-new"))


def test_a_key_added_by_hand_without_restriction_is_restricted(host: Host) -> None:
    # The seeds add the client's key as a plain line: it could run any command.
    made = host.run(
        "useradd --system --user-group --create-home --home-dir /var/lib/nixremote nixremote"
        " && mkdir -p /var/lib/nixremote/.ssh"
        f" && printf '%s\\n%s\\n' '{KEY.line}' '{OTHER}' >/var/lib/nixremote/.ssh/authorized_keys"
    )
    assert made.returncode == 0, made.stderr
    done = host.run(shell_script(BuilderSetup("nixremote", KEY)))
    assert done.returncode == 0, done.stderr
    assert host.keys("nixremote") == [OTHER, _wanted()]


@pytest.mark.parametrize("user", ["root", "alice"])
def test_an_account_someone_logs_into_is_left_alone(host: Host, user: str) -> None:
    # alice has a password: the sshd block would take password and tty logins from her.
    made = host.run("useradd --create-home -p '$6$salt$hash' alice")
    assert made.returncode == 0, made.stderr
    files = [host.etc / "nix" / "nix.conf", host.etc / "ssh" / "sshd_config"]
    before = [f.read_bytes() for f in files]
    done = host.run(shell_script(BuilderSetup(user, KEY)))
    assert done.returncode == 1
    assert done.stderr == (
        f"user {user} is root or has a password: step 4 would take its logins away; "
        "give offload setup builder --user NAME a user of its own\n"
    )
    assert [f.read_bytes() for f in files] == before
    assert not (host.home / "alice" / ".ssh").exists()
    assert not (host.root / ".ssh").exists()
    assert not host.systemctl.exists()
