"""``offload setup builder``'s script for a host without NixOS, run for real as root in a mount
namespace of its own: /etc is a copy, /var/lib, /home and /root are empty, so ``useradd``,
sshd's and Nix's configuration are the script's to change and the host's are not.
Only ``systemctl`` is a stub (this machine runs no systemd): it records what it was asked.

The nix-daemon's socket directory is one of the test's, 0770 root:nix-users as Debian's nix-bin
makes it. A session reaches the builder the way a client's does: ssh with the client's key, to
that host's own sshd (``sshd -i`` in a namespace over the same copies, as ssh's proxy command),
which runs ``nix-store --serve`` through the build user's shell, and that reaches a nix-daemon
listening on the directory's socket (made listening before the daemon starts, as systemd's
socket activation does, so no session waits for it)."""

from __future__ import annotations

import os
import select
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.setup.builder import BuilderSetup, shell_script
from offload.setup.values import PublicKey, parse_public_key
from tests.helpers.processes import start, stop
from tests.helpers.serve_wire import HANDSHAKE_OUT, SERVER_HELLO, Z, s, strs, u64

KEY = PublicKey(
    "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIOk3nH8mP9DqJw2vX2qY5h0YzX1c9m3Wq7kqgQd8n2pK", "c"
)
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqR0m0yqv2m1Hc9m3Wq7kqgQd8n2pKOk3nH8mP9DqJw other"
SOCKETS = "/nix/var/nix/daemon-socket"
SSHD = "/usr/sbin/sshd"
# Inside the namespace: bind the copies, then run the rest.
ENTER = 'set -e; mount --bind "$1" /etc; mount --bind "$2" /var/lib; mount --bind "$3" /home; '
ENTER += f'mount --bind "$4" /root; mount --bind "$5" {SOCKETS}; shift 5; exec "$@"'
# What the script may change in /etc.
WRITTEN = ("nix/nix.conf", "ssh/sshd_config", "passwd", "group", "shadow", "gshadow",
           "systemd/system/nix-daemon.service.d/offload.conf")  # fmt: skip
# The serve handshake, then whether a path is valid: answering it takes the nix-daemon.
QUERY = HANDSHAKE_OUT + u64(1) + u64(0) + u64(0) + strs(Z)
# The same over the daemon's protocol (nix-protocols.md, worker): its magic and version 1.34,
# no CPU affinity, no reserved space, then IsValidPath (op 1). The answer ends with the last
# stderr frame and "not valid"; Nix 2.8's `nix-daemon --stdio`, run by a user who is not
# root, forwards it all to the nix-daemon's socket.
DAEMON_HELLO, DAEMON_LAST = u64(0x6E697863), u64(0x616C7473)
DAEMON_QUERY = DAEMON_HELLO + u64(0x122) + u64(0) + u64(0) + u64(1) + s(Z)


class Host:
    """A namespace's copies of /etc, /var/lib and /home, and a way to run shell in it."""

    def __init__(self, root: Path) -> None:
        self.etc, self.var_lib, self.home = root / "etc", root / "var-lib", root / "home"
        self.root, self.sockets = root / "root", root / "daemon-socket"
        shutil.copytree("/etc", self.etc, symlinks=True)
        for empty in (self.var_lib, self.home, self.root, self.sockets):
            empty.mkdir()
        stubs = root / "stubs"
        stubs.mkdir()
        self.systemctl = root / "systemctl.log"
        (stubs / "systemctl").write_text(f'#!/bin/sh\necho "$*" >>{self.systemctl}\n')
        (stubs / "systemctl").chmod(0o755)
        self.path = f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin"
        made = self.run("getent group nix-users >/dev/null || groupadd --system nix-users")
        assert made.returncode == 0, made.stderr
        os.chown(self.sockets, 0, self.gid("nix-users"))
        self.sockets.chmod(0o770)

    def enter(self, *argv: str) -> list[str]:
        """``argv`` run in a namespace of its own over the copies."""
        copies = (self.etc, self.var_lib, self.home, self.root, self.sockets)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", ENTER, "sh",
                *map(str, copies), *argv]  # fmt: skip

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.enter("sh", "-c", script),
            env={"PATH": self.path},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def gid(self, group: str) -> int:
        lines = (self.etc / "group").read_text().splitlines()
        return next(int(line.split(":")[2]) for line in lines if line.split(":")[0] == group)

    def keys(self, user: str) -> list[str]:
        home = {"nixremote": self.var_lib / "nixremote"}.get(user, self.home / user)
        return (home / ".ssh" / "authorized_keys").read_text().splitlines()

    def files(self) -> dict[str, bytes | None]:
        """What the script writes outside the user's home, as it is now (None: not there)."""
        return {
            name: (self.etc / name).read_bytes() if (self.etc / name).exists() else None
            for name in WRITTEN
        }

    def _ssh(self, key: Path, user: str) -> list[str]:
        """ssh with ``key`` to this host's sshd, whose key's command decides what it runs."""
        sshd = shlex.join(self.enter(SSHD, "-i", "-e", "-f", "/etc/ssh/sshd_config"))
        options = ["BatchMode=yes", "IdentitiesOnly=yes", "StrictHostKeyChecking=no",
                   "UserKnownHostsFile=/dev/null", "LogLevel=ERROR",
                   f"ProxyCommand={sshd}"]  # fmt: skip
        return ["ssh", "-F", "none", "-i", str(key), *(f"-o{o}" for o in options),
                f"{user}@builder", "nix-store --serve --write"]  # fmt: skip

    def serve(self, key: Path, user: str = "nixremote") -> subprocess.CompletedProcess[bytes]:
        """A serve session as a client opens one."""
        return subprocess.run(
            self._ssh(key, user), input=QUERY, env={"PATH": self.path, "HOME": str(self.root)},
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip

    def daemon_session(self, key: Path) -> tuple[bytes, str]:
        """A daemon session's answer to ``DAEMON_QUERY``, and ssh's stderr. Its input is held
        open until the answer ends: Nix 2.8's `nix-daemon --stdio` forwarding to the socket
        stops as its input ends, before the daemon has answered."""
        answer, said = b"", ""
        with subprocess.Popen(
            self._ssh(key, "nixremote"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env={"PATH": self.path, "HOME": str(self.root)},
        ) as proc:  # fmt: skip
            assert proc.stdin is not None
            assert proc.stdout is not None
            assert proc.stderr is not None
            try:
                proc.stdin.write(DAEMON_QUERY)
                proc.stdin.flush()
                deadline = time.monotonic() + 60
                while not answer.endswith(DAEMON_LAST + u64(0)):
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                        break
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    answer += chunk
                proc.stdin.close()
                proc.wait(timeout=60)  # bounded: then its stderr is all there
                said = proc.stderr.read().decode(errors="replace")
            finally:
                proc.kill()
        return answer, said


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


@pytest.fixture
def daemon(host: Host, tmp_path: Path) -> Iterator[Path]:
    """A nix-daemon in the host's namespace on its socket (listening before it starts); its log."""
    log = tmp_path / "daemon.log"
    with socket.socket(socket.AF_UNIX) as listener, log.open("w") as out:
        listener.bind(str(host.sockets / "socket"))
        (host.sockets / "socket").chmod(0o666)
        listener.listen()
        activated = "exec 3<&0 </dev/null; export LISTEN_FDS=1 LISTEN_PID=$$; exec nix-daemon"
        proc = start(host.enter("sh", "-c", activated), stdin=listener.fileno(), stdout=out,
                     stderr=out, env={"PATH": host.path})  # fmt: skip
        try:
            yield log
        finally:
            stop(proc)


@pytest.fixture
def client_key(tmp_path: Path) -> tuple[Path, PublicKey]:
    path = tmp_path / "client_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "client", "-f", str(path)],
                   check=True, timeout=60)  # fmt: skip
    return path, parse_public_key(path.with_name(path.name + ".pub").read_text(), "test")


def _served(done: subprocess.CompletedProcess[bytes], daemon_log: Path) -> None:
    said = f"{done.stderr.decode(errors='replace')}\ndaemon: {daemon_log.read_text()}"
    assert done.returncode == 0, said
    assert done.stdout[:8] == SERVER_HELLO[:8], said
    assert done.stdout[16:] == u64(0), said  # Z is not valid: the daemon answered


def _wanted(program: str = "nix-store --serve --write") -> str:
    name, arguments = program.split(" ", 1)
    return f'restrict,command="{shutil.which(name)} {arguments}" {KEY.line}'


def test_the_script_sets_a_builder_up_and_a_second_run_changes_nothing(host: Host) -> None:
    script = shell_script(BuilderSetup("nixremote", KEY))
    first = host.run(script)
    assert first.returncode == 0, first.stderr
    assert host.keys("nixremote") == [_wanted()]
    conf = (host.etc / "nix" / "nix.conf").read_text()
    assert conf.count("extra-trusted-users = nixremote\n") == 1
    sshd = (host.etc / "ssh" / "sshd_config").read_text()
    assert sshd.count("Match User nixremote\n") == 1
    # One connection carries a session per build slot: sshd's 10 refused those past it.
    spec = "user=nixremote,host=client,addr=127.0.0.1"
    said = host.run(f"/usr/sbin/sshd -T -C {spec} -f /etc/ssh/sshd_config")
    assert said.returncode == 0, said.stderr
    assert "maxsessions 256" in said.stdout.splitlines()
    nix_users = next(
        g for g in (host.etc / "group").read_text().splitlines() if g.startswith("nix-users:")
    )
    assert nix_users.endswith((":nixremote", ",nixremote")), nix_users
    restarts = ["daemon-reload", "restart nix-daemon"]
    assert host.systemctl.read_text().splitlines() == [*restarts, "reload ssh"]
    assert (
        first.stdout
        == "builder ready: user nixremote; now run offload setup client on the client\n"
    )
    before = host.files()
    again = host.run(script)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    # Nothing changed, so nothing restarted: a restart would end the builds running there.
    assert host.files() == before
    assert host.systemctl.read_text().splitlines() == [*restarts, "reload ssh"]
    assert host.keys("nixremote") == [_wanted()]
    assert not list(host.etc.rglob("*.offload-new"))
    # A drop-in that says something else is written again, and the daemon restarted.
    dropin = host.etc / WRITTEN[-1]
    dropin.write_text("[Service]\nMemoryMax=50%\n")
    third = host.run(script)
    assert third.returncode == 0, third.stderr
    assert host.files() == before
    assert host.systemctl.read_text().splitlines() == [*restarts, "reload ssh", *restarts]


def test_a_host_not_linux_is_refused_before_any_change(host: Host, tmp_path: Path) -> None:
    # macOS was told to install util-linux; a host without systemctl had the user, its key
    # and nix.conf made, then `systemctl daemon-reload` failed, and so did every run after.
    before = host.files()
    darwin = tmp_path / "darwin"
    darwin.mkdir()
    (darwin / "uname").write_text("#!/bin/sh\necho Darwin\n")
    (darwin / "uname").chmod(0o755)
    host.path = f"{darwin}:{host.path}"
    done = host.run(shell_script(BuilderSetup("nixremote", KEY)))
    assert done.returncode == 1
    assert done.stderr.startswith("this script is for Linux with systemd;")
    assert host.files() == before
    assert "nixremote" not in (host.etc / "passwd").read_text()


def test_an_sshd_config_sshd_refuses_is_said_before_any_change(host: Host) -> None:
    # Steps 1-4 were done, then step 5's check failed in sshd's words about a file the admin
    # never wrote (sshd_config.offload-new: line N), left behind.
    sshd = host.etc / "ssh" / "sshd_config"
    sshd.write_text(sshd.read_text() + "BogusOption yes\n")
    before = host.files()
    done = host.run(shell_script(BuilderSetup("nixremote", KEY)))
    assert done.returncode == 1
    said = " ".join(done.stderr.split())
    assert "/etc/ssh/sshd_config: line" in said
    assert "Bad configuration option: BogusOption" in said
    assert "sshd refuses /etc/ssh/sshd_config as it is (its words above): mend it" in said
    assert "offload-new" not in said
    assert host.files() == before
    assert "nixremote" not in (host.etc / "passwd").read_text()
    # A run again, where the block is there already, asks nothing of sshd (a new key only).
    sshd.write_text(sshd.read_text().replace("BogusOption yes\n", ""))
    assert host.run(shell_script(BuilderSetup("nixremote", KEY))).returncode == 0
    sshd.write_text(sshd.read_text() + "BogusOption yes\n")
    again = host.run(shell_script(BuilderSetup("nixremote", KEY)))
    assert again.returncode == 0, again.stderr


def test_an_earlier_runs_sshd_block_without_max_sessions_is_said(host: Host) -> None:
    # Step 5 leaves a block that is there alone: one from before MaxSessions kept sshd's 10.
    sshd = host.etc / "ssh" / "sshd_config"
    sshd.write_text(sshd.read_text() + "Match User nixremote\n  PermitTTY no\nMatch all\n")
    done = host.run(shell_script(BuilderSetup("nixremote", KEY)))
    assert done.returncode == 0, done.stderr
    assert "block in /etc/ssh/sshd_config sets no MaxSessions: add 'MaxSessions 256'" in (
        " ".join(done.stderr.split())
    )
    # One set for every user is the admin's, and in force in the block too: nothing to say.
    sshd.write_text("MaxSessions 300\n" + sshd.read_text())
    again = host.run(shell_script(BuilderSetup("nixremote", KEY)))
    assert again.returncode == 0, again.stderr
    assert "MaxSessions" not in again.stderr


def test_the_hosts_own_nix_tuning_wins(host: Host) -> None:
    # Appended last, the script's max-jobs, cores, min-free and max-free won over the
    # host's (Nix takes a setting's last line), where the NixOS module's mkDefault yields.
    conf = host.etc / "nix" / "nix.conf"
    conf.parent.mkdir(exist_ok=True)
    conf.write_text("cores = 4\n  min-free = 5000000000\n")
    done = host.run(shell_script(BuilderSetup("nixremote", KEY)))
    assert done.returncode == 0, done.stderr
    env = {"PATH": os.environ["PATH"], "NIX_CONF_DIR": str(conf.parent), "NIX_USER_CONF_FILES": ""}
    shown = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "show-config"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    settings = dict(line.split(" = ", 1) for line in shown.splitlines() if " = " in line)
    assert (settings["cores"], settings["min-free"]) == ("4", "5000000000")
    assert settings["max-free"] == str(10 * 1024**3)  # the host set none: the script's
    assert "nixremote" in settings["trusted-users"].split()


def test_a_session_through_the_build_user_reaches_the_nix_daemon(
    host: Host, daemon: Path, client_key: tuple[Path, PublicKey]
) -> None:
    # Debian's socket directory is 0770 root:nix-users: a user outside nix-users gets
    # "getting status of /nix/var/nix/daemon-socket/socket: Permission denied".
    path, key = client_key
    done = host.run(shell_script(BuilderSetup("nixremote", key)))
    assert done.returncode == 0, done.stderr
    _served(host.serve(path), daemon)


def test_with_ssh_ng_a_session_through_the_build_user_reaches_the_daemon(
    host: Host, daemon: Path, client_key: tuple[Path, PublicKey]
) -> None:
    # The key runs `nix-daemon --stdio` whatever the client asks: what Nix's ssh-ng store
    # opens. The serve program's hello is not let through.
    path, key = client_key
    done = host.run(shell_script(BuilderSetup("nixremote", key, scheme="ssh-ng")))
    assert done.returncode == 0, done.stderr
    (line,) = host.keys("nixremote")
    assert line == f'restrict,command="{shutil.which("nix-daemon")} --stdio" {key.line}'
    answer, ssh_said = host.daemon_session(path)
    said = f"{ssh_said}\ndaemon: {daemon.read_text()}"
    assert answer[:8] == u64(0x6478696F), said
    assert answer.endswith(DAEMON_LAST + u64(0)), said  # Z is not valid
    # The serve hello, on the same login, gets no serve answer: the daemon runs instead.
    refused = host.serve(path)
    assert b"Accepted publickey for nixremote" in refused.stderr, refused.stderr
    assert (refused.returncode, refused.stdout) == (0, b"")


def test_a_key_moved_from_one_program_to_the_other_is_said(host: Host) -> None:
    # The ssh:// machines lines that served the builder fail from then on.
    assert host.run(shell_script(BuilderSetup("nixremote", KEY))).returncode == 0
    moved = host.run(shell_script(BuilderSetup("nixremote", KEY, scheme="ssh-ng")))
    assert moved.returncode == 0, moved.stderr
    assert host.keys("nixremote") == [_wanted("nix-daemon --stdio")]
    assert " ".join(moved.stderr.split()) == (
        "note: the line of this key in /var/lib/nixremote/.ssh/authorized_keys is replaced; "
        "it ran nix-store --serve --write, which ssh:// machines lines for this builder need: "
        "use ssh-ng:// ones (setup client --ssh-ng writes them)"
    )


def test_a_socket_directory_only_root_may_enter_is_refused_before_any_change(host: Host) -> None:
    os.chown(host.sockets, 0, 0)
    before = host.files()
    done = host.run(shell_script(BuilderSetup("nixremote", KEY)))
    assert done.returncode == 1
    assert done.stderr == (
        f"{SOCKETS} is closed to all but root: no build user can reach the nix-daemon; give its "
        "directory a group of its own (Debian's: 0770 root:nix-users) and run this again\n"
    )
    assert host.files() == before
    assert not (host.var_lib / "nixremote").exists()


def test_a_socket_directory_of_another_group_is_refused_before_any_change(host: Host) -> None:
    # Closed to all but sudo (or wheel, docker, nixbld: Nix takes nixbld's members for build
    # users): the script adds the build user to no such group.
    made = host.run("getent group admins >/dev/null || groupadd --system admins")
    assert made.returncode == 0, made.stderr
    os.chown(host.sockets, 0, host.gid("admins"))
    before = host.files()
    done = host.run(shell_script(BuilderSetup("nixremote", KEY)))
    assert done.returncode == 1
    assert done.stderr.startswith(f"{SOCKETS} is closed to all but group admins, which this")
    assert host.files() == before
    assert not (host.var_lib / "nixremote").exists()


def test_a_service_account_is_not_made_a_build_user(host: Host) -> None:
    # A mistyped --user www-data: its nologin shell is no build user's to fix.
    made = host.run("useradd --system --home-dir /var/www --shell /usr/sbin/nologin webby")
    assert made.returncode == 0, made.stderr
    before = host.files()
    done = host.run(shell_script(BuilderSetup("webby", KEY)))
    assert done.returncode == 1
    assert done.stderr.startswith("user webby has no login shell and lives elsewhere")
    assert host.files() == before
    assert host.run("getent passwd webby").stdout.strip().endswith(":/usr/sbin/nologin")


def test_a_restart_that_failed_is_owed_to_the_next_run(host: Host) -> None:
    # The daemon reads trusted-users at start: a run whose restart failed left nix.conf changed
    # and the daemon not knowing it; the next run, finding nothing to change, restarted nothing.
    stub = Path(host.path.split(":")[0]) / "systemctl"
    failed = host.root / "failed-once"
    stub.write_text(
        f'#!/bin/sh\necho "$*" >>{host.systemctl}\n'
        f'if [ "$1" = restart ] && [ ! -e {failed} ]; then : >{failed}; exit 1; fi\n'
    )
    script = shell_script(BuilderSetup("nixremote", KEY))
    first = host.run(script)
    assert first.returncode == 1
    assert (host.etc / "nix" / ".offload-restart-pending").exists()
    again = host.run(script)
    assert again.returncode == 0, again.stderr
    restarts = [
        line for line in host.systemctl.read_text().splitlines() if line.startswith("restart")
    ]
    assert restarts == ["restart nix-daemon", "restart nix-daemon"]
    assert not (host.etc / "nix" / ".offload-restart-pending").exists()
    third = host.run(script)
    assert third.returncode == 0, third.stderr
    restarts = [
        line for line in host.systemctl.read_text().splitlines() if line.startswith("restart")
    ]
    assert len(restarts) == 2  # nothing owed, nothing changed


def test_a_build_user_made_without_a_shell_gets_one(
    host: Host, daemon: Path, client_key: tuple[Path, PublicKey]
) -> None:
    # `adduser --system`'s user has /usr/sbin/nologin: sshd runs the key's command through it.
    path, key = client_key
    made = host.run(
        "useradd --system --user-group --create-home --home-dir /var/lib/nixremote"
        " --shell /usr/sbin/nologin nixremote"
    )
    assert made.returncode == 0, made.stderr
    done = host.run(shell_script(BuilderSetup("nixremote", key)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        "user nixremote's shell was /usr/sbin/nologin: now /bin/sh (sshd runs the key's "
        "command through it)"
    )
    assert (host.etc / "passwd").read_text().count(":/var/lib/nixremote:/bin/sh\n") == 1
    _served(host.serve(path), daemon)


@pytest.mark.parametrize("mode", ["644", "600"])
def test_a_key_added_by_hand_without_restriction_is_restricted(host: Host, mode: str) -> None:
    # The seeds add the client's key as a plain line: it could run any command. Added as root
    # (the directory and file root's, 0600 even): the user's keys are written as the user,
    # who is given them first, so no other line is lost.
    made = host.run(
        "useradd --system --user-group --create-home --home-dir /var/lib/nixremote nixremote"
        " && mkdir -p /var/lib/nixremote/.ssh"
        f" && printf '%s\\n%s\\n' '{KEY.line}' '{OTHER}' >/var/lib/nixremote/.ssh/authorized_keys"
        f" && chmod {mode} /var/lib/nixremote/.ssh/authorized_keys"
    )
    assert made.returncode == 0, made.stderr
    done = host.run(shell_script(BuilderSetup("nixremote", KEY)))
    assert done.returncode == 0, done.stderr
    assert host.keys("nixremote") == [OTHER, _wanted()]
    # Said: that line may have served ssh-ng:// machines lines, which now fail.
    assert "the line of this key in /var/lib/nixremote/.ssh/authorized_keys is replaced" in (
        done.stderr
    )
    assert host.run(shell_script(BuilderSetup("nixremote", KEY))).stderr == ""  # once
    keys = host.var_lib / "nixremote" / ".ssh" / "authorized_keys"
    assert keys.stat().st_mode & 0o777 == 0o600
    assert keys.stat().st_uid == keys.parent.stat().st_uid != 0


@pytest.mark.parametrize("user", ["toor", "alice"])
def test_an_account_someone_logs_into_is_left_alone(host: Host, user: str) -> None:
    # toor is root under another name (`setup builder` refuses the name root itself); alice has
    # a password: the sshd block would take password and tty logins from them.
    made = host.run(
        "useradd --non-unique --uid 0 --gid 0 --no-create-home --home-dir /root toor"
        " && useradd --create-home -p '$6$salt$hash' alice"
    )
    assert made.returncode == 0, made.stderr
    files = [host.etc / "nix" / "nix.conf", host.etc / "ssh" / "sshd_config"]
    before = [f.read_bytes() for f in files]
    done = host.run(shell_script(BuilderSetup(user, KEY)))
    assert done.returncode == 1
    assert done.stderr == (
        f"user {user} is root or has a password: step 5 would take its logins away; "
        "give offload setup builder --user NAME a user of its own\n"
    )
    assert [f.read_bytes() for f in files] == before
    assert not (host.home / "alice" / ".ssh").exists()
    assert not (host.root / ".ssh").exists()
    assert not host.systemctl.exists()


@pytest.mark.parametrize("link", [".ssh", ".ssh/authorized_keys"])
def test_a_link_the_build_user_planted_is_not_followed_as_root(host: Host, link: str) -> None:
    # The user's home is the user's: a link there to a root-only file (or directory) had root
    # copy that file into the user's keys (or chown the directory to the user).
    secret = host.etc / "offload-secret"
    secret.write_text("root-secret-hash\n")
    secret.chmod(0o600)
    made = host.run(
        "useradd --system --user-group --create-home --home-dir /var/lib/nixremote nixremote"
        " && install -d -m 0700 -o nixremote -g nixremote /var/lib/nixremote/.ssh"
        f" && rm -rf /var/lib/nixremote/{link}"
        f" && ln -s /etc/{'offload-secret' if link.endswith('keys') else 'nix'}"
        f" /var/lib/nixremote/{link}"
    )
    assert made.returncode == 0, made.stderr
    nix_dir = (host.etc / "nix").stat()
    done = host.run(shell_script(BuilderSetup("nixremote", KEY)))
    assert done.returncode == 1
    assert done.stderr.strip().endswith(("is a symbolic link: remove it",
                                         "(this script writes there as root)"))  # fmt: skip
    assert secret.read_text() == "root-secret-hash\n"
    assert (secret.stat().st_uid, secret.stat().st_mode & 0o777) == (0, 0o600)
    assert ((host.etc / "nix").stat().st_uid, (host.etc / "nix").stat().st_mode) == (
        nix_dir.st_uid,
        nix_dir.st_mode,
    )
    ssh = host.var_lib / "nixremote" / ".ssh"
    if not ssh.is_symlink():  # no temporary file left beside the link either
        assert [p.name for p in ssh.iterdir()] == ["authorized_keys"]
