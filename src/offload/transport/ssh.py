"""ssh argv for talking to builders, built the way Nix's own ssh store builds it.

offload shells out to OpenSSH like Nix does, so users' ``~/.ssh/config``, agents and ProxyJump
keep working, and ``NIX_SSHOPTS`` applies to offload as it does to Nix (split on blanks, no
quoting, as Nix's ``tokenizeString``). Host keys are never trusted on first use: a machine's
pinned key (column 8 of the machines file) is written to a private known_hosts file and passed
with ``UserKnownHostsFile`` and ``StrictHostKeyChecking=yes`` *before* ``NIX_SSHOPTS``, because
ssh keeps the first value it sees for an option: nothing later can turn the check off. offload's
keepalives (``ServerAliveInterval``, ``ServerAliveCountMax``) come after ``NIX_SSHOPTS`` too, so
a user's values there are the ones ssh uses, master included, and offload reads them back from
the same words (``ssh_keepalive``, ``offload.transport.ssh_options``) for how long a silent
builder's connection lasts.

One builder gets one ssh connection: a master (``ControlMaster=yes``, run in the foreground as a
child of ours, never forked into the background) and any number of sessions multiplexed over it
(``ControlMaster=no``), which skip the key exchange and authentication. Every remote argument is
quoted on its own because ssh joins them into one string for the remote shell; what runs there
around the serve program (the start line, slots, the kill) is ``offload.transport.wrapper``'s.

This module only builds argv lists and strings; ``offload.transport.links`` runs them.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from offload.booleans import nix_bool
from offload.config.machines.model import ssh_name_problem
from offload.config.reading import local_nix_version
from offload.errors import ConfigError
from offload.transport.ciphers import builds_on_aes
from offload.transport.host_key_alias import pinned_name
from offload.transport.ssh_options import Keepalive, keepalive, without_sharing
from offload.transport.wrapper import NO_CLIENT, serve_command

if TYPE_CHECKING:
    from offload.config.machines import Machine

__all__ = [
    "CONNECT_TIMEOUT",
    "MASTER_READY",
    "SshTarget",
    "known_hosts_line",
    "master_argv",
    "remote_command",
    "said_lines",
    "serve_argv",
    "split_sshopts",
    "ssh_argv",
    "ssh_keepalive",
    "ssh_path",
    "ssh_target",
]

CONNECT_TIMEOUT = 10

MASTER_READY = "offload-master-ready"


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    public_host_key: str | None = None  # "type base64 [comment]", pinned
    compress: bool = False
    # Its CPU has AES instructions, as its systems tell (``offload.transport.ciphers``).
    aes: bool = False

    def __post_init__(self) -> None:
        # A host that starts with '-' would be read by ssh as an option; one with a shell's
        # metacharacters reaches a shell through a ProxyCommand's %h (an ssh before 9.6). A
        # machines line with such a name is left out of the pool (``Machine.not_connected``).
        host, user = self.host, self.user
        if (problem := ssh_name_problem(host)) is not None:
            raise ConfigError(
                f"invalid ssh host {host!r}: it {problem}", hint="use a host name or alias"
            )
        if user is not None and (problem := ssh_name_problem(user)) is not None:
            raise ConfigError(f"invalid ssh user {user!r}: it {problem}", hint="use a user name")

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host


def ssh_target(machine: Machine) -> SshTarget:
    """The ssh side of a machines-file entry; ``compress=true`` in its URI gives ``-C``."""
    if machine.host is None or not machine.is_ssh:
        raise ConfigError(f"{machine.source}: {machine.name} is not an ssh:// builder")
    return SshTarget(
        host=machine.host,
        user=machine.user,
        port=machine.port,
        identity_file=machine.ssh_key,
        public_host_key=machine.public_host_key,
        compress=nix_bool(machine.params.get("compress")),
        aes=builds_on_aes(machine.systems),
    )


def known_hosts_line(target: SshTarget) -> str:
    """The known_hosts entry that pins ``target``'s key, as ssh looks it up."""
    assert target.public_host_key is not None
    return f"{pinned_name(target.host, target.port)} {target.public_host_key.strip()}\n"


def ssh_path(path: Path) -> str:
    """``path`` as the value of an ssh option that reads ``%`` as its tokens (ControlPath,
    UserKnownHostsFile): ``%%`` is a plain ``%``, so a state directory named so still works.
    ssh reads an ``-o`` value as words, as a line of ssh_config: a path with a blank, a quote
    or a backslash is given in double quotes, those two escaped (ssh refused ControlPath with
    "extra arguments at end of line", and took the known_hosts file for two)."""
    text = str(path).replace("%", "%%")
    if not any(char in text for char in " \t\"'\\"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# The first Nix that splits NIX_SSHOPTS as a shell would (shellSplitString, nix#12020).
SHELL_SPLIT_SINCE = (2, 26)


def split_sshopts(text: str, nix_version: tuple[int, ...] | None = None) -> list[str]:
    """NIX_SSHOPTS as this host's Nix splits it: as a POSIX shell splits words (quotes,
    backslashes) from Nix 2.26 on, so ``-o "ProxyCommand=ssh -W %h:%p jump"`` is one option;
    before, on blanks with no quoting of any kind. The version (``nix --version``, asked only
    of a text the two would split apart) is taken for a new one when it cannot be told."""
    if not any(char in text for char in "'\"\\\n\r"):
        # Where both Nixes split alike: on blanks and tabs only (str.split() took a newline,
        # a form feed or a no-break space for one too, and ssh got other words than Nix's).
        return [word for word in re.split(r"[ \t]+", text) if word]
    version = local_nix_version() if nix_version is None else nix_version
    if version is not None and version < SHELL_SPLIT_SINCE:
        # tokenizeString's separators: blank, tab, newline, carriage return.
        return [word for word in re.split(r"[ \t\n\r]+", text) if word]
    return shell_words(text)


def shell_words(text: str) -> list[str]:
    """``text`` split as Nix's ``shellSplitString`` splits it (the POSIX reading of Nix 2.28
    on): words end at a blank or tab outside quotes; a backslash keeps the next character
    (in double quotes only ``$ ` " \\``, else it stays too); single quotes keep everything; an
    unclosed quote is an error (``ConfigError``), a backslash at the end is dropped."""
    words: list[str] = []
    word: list[str] | None = None  # None: no word begun (quotes begin one, even empty)
    chars = iter(text)
    for char in chars:
        if char in " \t":
            if word is not None:
                words.append("".join(word))
            word = None
            continue
        following = next(chars, None) if char == "\\" else char
        if following is None:
            break  # a backslash at the very end: dropped, and no word begun (as Nix's)
        word = [] if word is None else word
        if char == "\\":
            word.append(following)
        elif char == "'":
            word.extend(_quoted(chars, "'", text))
        elif char == '"':
            word.extend(_quoted(chars, '"', text))
        else:
            word.append(char)
    if word is not None:
        words.append("".join(word))
    return words


def _quoted(chars: Iterator[str], quote: str, text: str) -> list[str]:
    """The characters of a quoted string up to its closing ``quote`` (consumed)."""
    found: list[str] = []
    for char in chars:
        if char == quote:
            return found
        if char == "\\" and quote == '"':
            following = next(chars, "")
            found.append(following if following in '$`"\\' and following else "\\" + following)
            continue
        found.append(char)
    kind = "single" if quote == "'" else "double"
    raise ConfigError(
        f"NIX_SSHOPTS: unterminated {kind} quote: {text[:200]!r}",
        hint="close its quotes: Nix 2.26 and later read it as a shell reads words",
    )


def ssh_argv(
    target: SshTarget,
    *,
    known_hosts: Path | None = None,
    nix_sshopts: str = "",
    control_path: Path | None = None,
    master: bool = False,
    connect_timeout: int = CONNECT_TIMEOUT,
    persist: int = 0,
    ciphers: str | None = None,
) -> list[str]:
    """ssh and its options up to and including ``--`` and the destination.

    With ``control_path``, the command is a session over that master (``master=False``) or the
    master itself (``master=True``): kept in the foreground (``ControlPersist=no``), or with
    ``persist`` seconds, left in the background once its first session ends, until idle that
    long (``offload.transport.persist``). ``ciphers``: the connection's ``Ciphers``, after
    ``NIX_SSHOPTS`` (``offload.transport.ciphers``).
    """
    argv = ["ssh"]
    if known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={ssh_path(known_hosts)}"]
        argv += ["-o", "StrictHostKeyChecking=yes"]
    # The master's socket and mode before NIX_SSHOPTS, whose values ssh would take first: a
    # ControlPath there put the master out of offload's sight (never reused, never ended:
    # it ran on in the background after the run), and ControlMaster=auto rode a master whose
    # host key offload never pinned. A kept master's ControlPersist comes after them, so that
    # the user's ControlPersist=no keeps nothing (README).
    if control_path is not None:
        mode = "yes" if master else "no"
        argv += ["-o", f"ControlMaster={mode}", "-o", f"ControlPath={ssh_path(control_path)}"]
        if not master or persist <= 0:
            argv += ["-o", "ControlPersist=no"]
    else:
        # No master of offload's, and none of the user's ~/.ssh/config either: a kill or a
        # doctor's login rode a connection whose host key no pin had checked, or left a
        # master of its own behind (ControlMaster=auto, ControlPersist=yes).
        argv += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    # Less NIX_SSHOPTS' -S, -M and -O, which would override these (``without_sharing``).
    argv += [*without_sharing(split_sshopts(nix_sshopts)), "-x", "-a"]
    argv += [
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={connect_timeout}",
        # offload's keepalives: after NIX_SSHOPTS, whose values ssh takes first (ssh_keepalive).
        *Keepalive().options(),
    ]
    if ciphers is not None:
        argv += ["-o", f"Ciphers={ciphers}"]
    if target.identity_file:
        argv += ["-i", target.identity_file]
    if target.port is not None:
        argv += ["-p", str(target.port)]
    if target.compress:
        argv.append("-C")
    if control_path is not None and master and persist > 0:
        argv += ["-o", f"ControlPersist={persist}"]
    return [*argv, "--", target.destination]


def ssh_keepalive(target: SshTarget, nix_sshopts: str = "") -> Keepalive:
    """The keepalive ssh uses for ``target``'s connections (its master's), read from the words
    ``ssh_argv`` gives it: a ServerAlive* value in ``nix_sshopts`` comes before offload's."""
    return keepalive(ssh_argv(target, nix_sshopts=nix_sshopts)[1:])


def remote_command(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(arg) for arg in argv)


def said_lines(*pieces: str) -> list[str]:
    """What ssh (or a command through it) printed, as bare lines: ssh ends its own with
    "\r\n", and an error made of them is one line of a log."""
    return [line.strip() for piece in pieces for line in piece.splitlines() if line.strip()]


def serve_argv(
    target: SshTarget,
    *,
    params: Mapping[str, str] | None = None,
    known_hosts: Path | None = None,
    nix_sshopts: str = "",
    control_path: Path | None = None,
    connect_timeout: int = CONNECT_TIMEOUT,
    wrapped: bool = True,
    program: Sequence[str] | None = None,
    slots: int = 0,
    client: str = NO_CLIENT,
    waited: bool = False,
    cores: int | None = None,
) -> list[str]:
    """``ssh ... -- host 'sh -c ... nix-store --serve --write'``: one serve session (or one of
    ``program``, e.g. ``nix-daemon --stdio``), holding a builder-side slot of ``slots``, if
    above 0, for ``client``, told the builder's ``cores`` if known (``serve_command``)."""
    return [
        *ssh_argv(
            target,
            known_hosts=known_hosts,
            nix_sshopts=nix_sshopts,
            control_path=control_path,
            connect_timeout=connect_timeout,
        ),
        remote_command(
            serve_command(
                params,
                wrapped=wrapped,
                program=program,
                slots=slots,
                client=client,
                waited=waited,
                cores=cores,
            )
        ),
    ]


def master_argv(
    target: SshTarget,
    *,
    control_path: Path,
    known_hosts: Path | None = None,
    nix_sshopts: str = "",
    connect_timeout: int = CONNECT_TIMEOUT,
    persist: int = 0,
    ciphers: str | None = None,
) -> list[str]:
    """The master connection: says it is ready on stdout, then holds until its stdin closes
    (the master itself then stays ``persist`` seconds idle, if above 0: ``ssh_argv``), its
    traffic under ``ciphers`` if given.

    A builder restricted to the serve program (or the daemon) runs that instead; it answers the
    hello the master is sent (``SshTransport``) and likewise ends when stdin closes."""
    remote = ["sh", "-c", f"echo {MASTER_READY}; exec cat >/dev/null"]
    return [
        *ssh_argv(
            target,
            known_hosts=known_hosts,
            nix_sshopts=nix_sshopts,
            control_path=control_path,
            master=True,
            connect_timeout=connect_timeout,
            persist=persist,
            ciphers=ciphers,
        ),
        remote_command(remote),
    ]
