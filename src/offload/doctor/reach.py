"""Getting to a builder, judged from what the probes saw: the name, the port, ssh's login.

Pure functions of command results (``ssh -G`` output, an address list, a connect outcome, ssh's
exit code and stderr), so each verdict and its fix can be tested without a network. The
runner (``doctor.run``) does the probing.

ssh says why it could not log in only on stderr, in OpenSSH's own words; ``ssh_check`` maps
the ones users meet to the fix: a key the builder does not authorize ("Permission denied
(publickey)", ssh's own refusal: ``ssh_keys.refused_by_ssh``), a key file others may read
("UNPROTECTED PRIVATE KEY FILE", ssh then ignores the key), a host key that is not the pinned
one ("REMOTE HOST IDENTIFICATION HAS CHANGED") or that nothing pins ("Host key verification
failed" with no key in column 8); and before any of them, a key file ssh could not use at all
(missing, unreadable, not a private key: ``transport.ssh_keys``), which ssh only warns about
before the builder's refusal, or a key with a passphrase, which it skips without a word. A key
restricted to Nix's program runs that instead of `true`: when it stops on the builder's own
trouble (its Nix cannot reach the daemon's socket, ``transport.daemon_socket``), sshd took the
key, so the login is ok and the ``nix`` row says why.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from offload.config.machines.check import names_public_key
from offload.doctor.model import Check, Verdict
from offload.protocol.wire import SHELL_NOISE_HINT
from offload.transport.daemon_socket import daemon_trouble
from offload.transport.missing_program import forced_missing, forced_not_there
from offload.transport.ssh_keys import key_fix, key_trouble, passphrase_fix, refused_by_ssh

__all__ = [
    "SshConfig",
    "no_shell",
    "noisy_shell_check",
    "parse_ssh_g",
    "port_check",
    "resolve_check",
    "roots_key",
    "ssh_check",
]


def _port_fix(line: str) -> str:
    return (
        f"check the port (the ssh_config Port, host:port in {line} (Nix 2.31 on; an older"
        " Nix reads no port there), `-p` in NIX_SSHOPTS, or `port` in offload.toml) and that"
        " sshd runs on the builder"
    )


_CHANGED = (
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "has changed and you have requested strict checking",
)


@dataclass(frozen=True)
class SshConfig:
    """What ``ssh -G`` says it would connect to for a destination."""

    hostname: str
    port: int
    user: str | None = None
    proxy: str | None = None  # ProxyJump or ProxyCommand: the TCP connection is not ours
    identity: str | None = None  # the first IdentityFile, to name the key in messages
    # Why ssh connects nowhere whatever the host (an option of NIX_SSHOPTS it refuses, no ssh
    # here: ``transport.sshopts_check``), and the fix; None: it takes its command line.
    refused: str | None = None
    refused_fix: str | None = None


def parse_ssh_g(text: str, host: str, port: int | None) -> SshConfig:
    """``ssh -G`` output (``key value`` lines, keys lower-case); ``host``/``port`` fill gaps."""
    seen: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and value and key not in seen:
            seen[key] = value.strip()
    try:
        found_port = int(seen.get("port", ""))
    except ValueError:
        found_port = port or 22
    proxy = next(
        (f"{k} {seen[k]}" for k in ("proxyjump", "proxycommand") if seen.get(k, "none") != "none"),
        None,
    )
    return SshConfig(
        seen.get("hostname") or host, found_port, seen.get("user"), proxy, seen.get("identityfile")
    )


def resolve_check(
    config: SshConfig,
    addresses: Sequence[str],
    error: str | None,
    alias: str,
    line: str = "the machines line",
) -> Check:
    """The name ssh would connect to resolved to ``addresses``, or failed with ``error``;
    ``line`` is the machines line (file:line) that names ``alias``."""
    # ssh -G says a host name in lower case: a line's own name is no alias's HostName.
    aliased = config.hostname.lower() != alias.lower()
    name = f"{alias} -> {config.hostname}" if aliased else alias
    if config.refused is not None:
        return Check(
            "resolve", Verdict.FAIL, f"{config.refused}: it connects nowhere", config.refused_fix
        )
    if config.proxy is not None:
        return Check("resolve", Verdict.OK, f"{name}, reached through {config.proxy}")
    if error is not None or not addresses:
        fix = (
            f"check the host name in {line}, or add a Host alias with HostName "
            "to the ssh config (NIX_SSHOPTS=-F FILE for a config of its own)"
        )
        if aliased:  # an alias's HostName: that is what does not resolve
            fix = f"check the HostName the ssh config gives {alias} ({config.hostname})"
        return Check(
            "resolve", Verdict.FAIL, f"{name} does not resolve: {error or 'no addresses'}", fix
        )
    return Check("resolve", Verdict.OK, f"{name} ({', '.join(dict.fromkeys(addresses))})")


def port_check(
    where: str,
    *,
    error: str | None,
    banner: str | None,
    timeout: float,
    proxy: str | None,
    line: str = "the machines line",
) -> Check:
    """A TCP connect to ``where`` (``addr:port``) and the first line sshd sends there;
    ``line`` is the machines line (file:line) that names the builder."""
    if proxy is not None:
        return Check("port", Verdict.OK, f"not tried directly: ssh goes through {proxy}")
    if error is not None:
        lowered = error.lower()
        if "refused" in lowered:
            detail = f"nothing listens on {where} (connection refused)"
        elif "timed out" in lowered or "timeout" in lowered:
            detail = f"{where} did not answer within {timeout:g} s"
        else:
            detail = f"cannot connect to {where}: {error}"
        return Check("port", Verdict.FAIL, detail, _port_fix(line))
    if banner is None:
        return Check(
            "port",
            Verdict.FAIL,
            f"{where} accepts connections but sent no ssh greeting within {timeout:g} s",
            "sshd may be hung or overloaded (MaxStartups); " + _port_fix(line),
        )
    if not banner.startswith("SSH-"):
        return Check(
            "port",
            Verdict.FAIL,
            f"{where} answers, but not as sshd: {banner[:60]!r}",
            _port_fix(line),
        )
    return Check("port", Verdict.OK, f"{where}: {banner[:60]}")


def ssh_check(
    returncode: int,
    stderr: str,
    *,
    key: str | None,
    pinned: bool,
    destination: str,
    seconds: float,
    key_place: str | None = None,
    line: str = "the machines line",
    passphrase: bool = False,
    scanned: SshConfig | None = None,
) -> Check:
    """``ssh ... true`` ended with ``returncode`` after printing ``stderr``. ``key_place`` is
    where the machines line names ``key`` (``ssh_keys.key_place``); None when ``key`` is the
    ssh config's. ``line`` is the machines line (file:line) that names the builder.
    ``passphrase``: the key file has one (``ssh_keys.has_passphrase``). ``scanned``: where ssh
    connects (``ssh -G``), for the command that prints the host key to pin."""
    said = [text.strip() for text in stderr.splitlines() if text.strip()]
    last = said[-1] if said else "(ssh printed nothing)"
    key_name = key or "your ssh key"
    if "UNPROTECTED PRIVATE KEY FILE" in stderr and not (key and names_public_key(key)):
        fix = f"chmod 600 {key_name}: ssh ignores a private key that others may read"
        if returncode == 0:
            return Check("ssh", Verdict.WARN, f"logged in, but {key_name} is ignored", fix)
        return Check("ssh", Verdict.FAIL, f"{key_name} is readable by others: ssh refuses it", fix)
    trouble = key_trouble(stderr)
    unusable = None
    if trouble is not None:
        unusable = key_fix(trouble, key if key_place else None, key_place or "")
    locked = passphrase_fix(key, key_place) if passphrase and key else None
    if returncode == 0 or daemon_trouble(stderr) is not None:
        if unusable is not None:
            what, fix = unusable
            return Check("ssh", Verdict.WARN, f"logged in with another key, but {what}", fix)
        if locked is not None and key_place is not None:  # an ssh agent's, or another key
            what, fix = locked
            return Check(
                "ssh",
                Verdict.WARN,
                f"logged in with another key (or an ssh agent's), but {what}",
                fix,
            )
        return Check("ssh", Verdict.OK, f"logged in as {destination} in {seconds * 1000:.0f} ms")
    if (unusable or locked) is not None and refused_by_ssh(last):
        what, fix = unusable or locked or ("", "")
        return Check("ssh", Verdict.FAIL, f"{what}, and the builder took no other key: {last}", fix)
    return Check(
        "ssh",
        Verdict.FAIL,
        *_ssh_failure(
            stderr,
            last,
            key_name,
            pinned=pinned,
            line=line,
            scan=scan_command(scanned),
            user=destination.rpartition("@")[0] or None,
        ),
    )


def roots_key(stderr: str) -> Check | None:
    """The ``ssh`` row when ssh (``stderr``) could not read a key because it is root's and
    this user is not (the nix-daemon's key, as ``offload setup key`` makes it: 0600): whether
    the daemon gets in is not known from here, and loosening the key's mode is no fix."""
    trouble = key_trouble(stderr)
    if trouble is None or trouble.reason != "Permission denied" or os.geteuid() == 0:
        return None
    if _roots(Path(trouble.path)) is not True:
        return None
    return Check(
        "ssh",
        Verdict.UNKNOWN,
        f"cannot be checked as this user: {trouble.path} is root's (the nix-daemon's key)",
        "run `sudo offload doctor` to check as the nix-daemon connects",
    )


def _roots(path: Path) -> bool | None:
    """Whether ``path`` is root's: the file's owner, or, where this user may not look at it
    (``/root/.ssh/remotebuild`` under a 0700 ``/root``, the seeds' layout), the owner of the
    nearest directory above it this user can; None when nothing on the way can be looked at."""
    for place in (path, *path.parents):
        try:
            return place.stat().st_uid == 0
        except PermissionError:
            continue
        except OSError:
            return None
    return None


# What nologin(8) prints (shadow's and util-linux's alike) for an account with no shell.
_NOLOGIN = "This account is currently not available."


def no_shell(check: Check, stdout: str, destination: str) -> Check | None:
    """The ``ssh`` row for a failed login whose key was taken but whose user has no shell
    (``nologin``, as ``adduser --system`` and NixOS's ``isSystemUser`` make one): sshd runs
    every command through it, so every session ends before Nix starts. None otherwise."""
    if check.verdict != Verdict.FAIL or _NOLOGIN not in stdout:
        return None
    return Check(
        "ssh",
        Verdict.FAIL,
        f"{destination} has no login shell (its sessions say {_NOLOGIN!r}): sshd runs the"
        " serve command through it",
        "give the user a shell: `usermod --shell /bin/sh USER` on the builder (NixOS:"
        " users.users.<name>.useDefaultShell = true, or `offload setup builder` does it)",
    )


def noisy_shell_check(check: Check, stdout: str, reply: bytes) -> Check:
    """``check`` (the login's), or a failure when the builder user's shell printed something
    before the command ran (``stdout``: `true` prints nothing; a key forced to Nix's program
    answers ``reply`` first): that breaks every Nix session there, as Nix's manual warns."""
    answer = reply.decode(errors="replace")
    before = stdout.partition(answer)[0]
    said = [line.strip() for line in before.splitlines() if line.strip()]
    if check.verdict is not Verdict.OK or not said:
        return check
    return Check(
        "ssh",
        Verdict.FAIL,
        f"logged in, but the builder's shell prints {said[0][:60]!r} before any command: "
        "Nix's sessions there break on it",
        SHELL_NOISE_HINT,
    )


def scan_command(config: SshConfig | None) -> str:
    """The shell command that prints column 8 for the host key answering where ssh connects
    (``config``): ssh-keyscan's line is ``host type base64``, and Nix's column is the base64
    of ``type base64`` alone (a host field in it makes the key junk). HOST and PORT stand in
    for the builder's own when ssh goes through a proxy, which ssh-keyscan cannot take."""
    if config is None or config.proxy is not None:
        return "ssh-keyscan -t ed25519 -p PORT HOST | cut -d' ' -f2- | base64 -w0"
    host = shlex.quote(config.hostname)
    return f"ssh-keyscan -t ed25519 -p {config.port} {host} | cut -d' ' -f2- | base64 -w0"


def _ssh_failure(
    stderr: str, last: str, key: str, *, pinned: bool, line: str, scan: str, user: str | None
) -> tuple[str, str]:
    """(detail, fix) for a failed login, ssh having used every key it was given; ``user``:
    the one logged in as, if the line names one."""
    pin_fix = (
        f"pin the builder's key: column 8 of {line} is the base64 of its "
        f"/etc/ssh/ssh_host_ed25519_key.pub (`base64 -w0`), as `{scan}` prints it"
    )
    if any(marker in stderr for marker in _CHANGED) or (
        pinned and "Host key verification failed" in stderr
    ):
        return (
            f"the builder's host key is not the pinned one (column 8 of {line})",
            "if the builder was reinstalled, " + pin_fix + "; if not, find out who answers there",
        )
    if "Host key verification failed" in stderr or "No ED25519 host key is known" in stderr:
        return ("the builder's host key is unknown: nothing pins or trusts it", pin_fix)
    if refused_by_ssh(stderr):
        # sshd says the same of a user it does not have: the fix names the user.
        whose = f"{user}'s" if user else "the builder user's"
        exists = f", and check that {user} exists there" if user else ""
        return (
            f"the builder does not accept {key}: {last}",
            (
                f"add {key}.pub to {whose} authorized_keys on the builder (NixOS: "
                f"users.users.<name>.openssh.authorizedKeys.keys){exists}, or name the right"
                f" key in column 3 of {line}"
            ),
        )
    if "Could not resolve hostname" in stderr:
        return (last, f"check the host name in {line} or the ssh config")
    if (said := forced_not_there(stderr.splitlines())) is not None:
        return forced_missing(said)  # logged in: the key's forced command is not there
    return (last, "try `ssh -v` to the builder by hand to see why it fails")
