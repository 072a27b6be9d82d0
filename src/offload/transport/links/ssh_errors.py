"""What went wrong with an ssh builder, said from ssh's own last words, with the fix.

ssh exits 255 for every failure of its own and says why on stderr; these turn those lines (the
master's, or a session's) into one error naming the builder, and a hint chosen from what they
say: an option of NIX_SSHOPTS refused, a host key that does not match the pinned one, a key
file missing or refused, a name that does not resolve, a builder that is down. A first line that
is neither ssh's failure nor the ready line is the builder user's shell talking before the
command (``shell_noise``), which breaks every Nix session there.
"""

from __future__ import annotations

from collections.abc import Iterable

from offload.errors import SshError
from offload.protocol.wire import SHELL_NOISE_HINT
from offload.transport.daemon_socket import daemon_trouble
from offload.transport.ssh import said_lines
from offload.transport.ssh_keys import key_trouble, refused_by_ssh
from offload.transport.ssh_options import option_refused

__all__ = ["shell_noise", "ssh_error", "ssh_hint"]


def ssh_error(name: str, destination: str, what: str, tail: Iterable[str]) -> SshError:
    """``what`` (``"connect to"``, ``"open a session on"``...) failed on builder ``name`` at
    ``destination``, as ssh's last lines ``tail`` say."""
    lines = said_lines(*tail)  # a piece may be a whole stderr of several lines
    text = " | ".join(lines[-5:]) or "(ssh printed nothing)"
    return SshError(f"cannot {what} builder '{name}' ({destination}): {text}", hint=ssh_hint(text))


def shell_noise(name: str, destination: str, line: bytes) -> SshError | None:
    """The error for a first line that is text but not the ready line: what the builder
    user's shell printed before the command (a start-up file's echo); None otherwise (ssh
    failed, and says why on stderr)."""
    text = line.decode(errors="replace").strip()
    if not text or not text.isprintable():
        return None
    return SshError(
        f"cannot connect to builder '{name}' ({destination}): its shell "
        f"printed {text[:60]!r} before the command: Nix's sessions there break on it",
        hint=SHELL_NOISE_HINT,
    )


def ssh_hint(tail: str) -> str:
    """The fix ssh's words ``tail`` point to."""
    if option_refused(tail) is not None:
        return "ssh refused an option of NIX_SSHOPTS: fix or remove it there"
    if "Host key verification failed" in tail or "REMOTE HOST IDENTIFICATION" in tail:
        return "the builder's host key does not match the pinned one (column 8 of machines)"
    daemon = daemon_trouble(tail)
    if daemon is not None:
        return daemon.fix(None)
    refused = refused_by_ssh(tail)
    trouble = key_trouble(tail)
    if trouble is not None and refused:
        return f"ssh key file {trouble.path} {trouble.said()}: check column 3 of machines"
    if refused:
        return "check the ssh key (column 3 of machines) and the builder's authorized_keys"
    if "Could not resolve hostname" in tail:
        return "check the host name (machines line, or the ssh config's HostName), or --exclude it"
    if "Connection refused" in tail or "timed out" in tail:
        return "is the builder up and sshd listening? Leave it out with --exclude"
    return "try the same ssh command by hand, or leave the builder out with --exclude"
