"""Why a builder was left out of a run, in the user's words and with the fix.

A link's error carries ssh's own last words, which speak of files the user never edits (the
private known_hosts file offload writes a pinned key to, removed when the run ends) and leave
the fix to guess. ``explain`` turns the error into one line: what happened, then the fix,
naming the file the user edits: the machines line the builder comes from (its host-key column
when the key is pinned there, its key column when ssh could not use the key file named there),
or the known_hosts file ssh named when nothing is pinned.
A changed host key is said to be what it may be, a man-in-the-middle; a pinned key ssh looked
up under another name (an ssh config alias without ``HostKeyAlias``) is said to be that.
Every failed connection names the machines line and how to leave the builder out (a name
that does not resolve, too).
A refused key that has a passphrase is said to have one (ssh skips it without a word where no
terminal is: the nix-daemon's). Only ssh's own "Permission denied (publickey)" is a refused
key: the same words from the builder's Nix, which could not reach its daemon's socket, are
said as that, with its fix. A key forced to the other scheme's program ("protocol mismatch")
is said to be that. A builder where Nix (or the program ``remote-program=`` names) is not
found is said so, with the fix. A builder whose own Nix stopped on one of its binary caches
as it substituted the inputs (builders-use-substitutes: an ``ssh://`` cache it cannot reach,
without fallback, or one it used lately, now down) is said to be that, not a connection of
offload's to it, with the fix on the builder. An option ssh refused on its command line is one
of ``NIX_SSHOPTS``' (offload's own are valid): said so, with the fix there, not in machines.
"""

from __future__ import annotations

import re

from offload.config.machines import Machine
from offload.protocol.trust import is_untrusted, untrusted_hint
from offload.protocol.wire import SHELL_NOISE_HINT
from offload.transport.daemon_socket import daemon_trouble
from offload.transport.dialect import mismatch_fix, mismatched
from offload.transport.host_key_alias import alias_fix, looked_up_elsewhere
from offload.transport.missing_program import (
    NOT_ON_PATH,
    forced_missing,
    forced_not_there,
    install_nix,
    mend_settings,
    stopped_by_nix,
)
from offload.transport.ssh_keys import (
    has_passphrase,
    key_fix,
    key_place,
    key_trouble,
    passphrase_fix,
    refused_by_ssh,
)
from offload.transport.ssh_options import option_refused

__all__ = ["explain"]

_CHANGED = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "has changed and you have requested strict")
# ssh's words when the name it connects to does not resolve: the name, then getaddrinfo's why.
_UNRESOLVED = re.compile(r"Could not resolve hostname (\S+?): ([^|]+?)\s*(?:\||$)")
# How a link's error starts when its ssh master could not connect (``SshTransport._error``).
_CONNECT = "cannot connect to builder "
# ... and either that or offload-hook's own ssh's (``SharedSshTransport``): ssh's words then.
_OPENING = (_CONNECT, "cannot open a session on builder ")
# The builder's Nix stopping on a cache of its own: an ssh:// one (legacy-ssh-store.cc: the
# user@host or host it connects to, in quotes; offload's own words name a "builder"), or an
# http(s) one it skips opening, whose narinfo query fails (filetransfer.cc).
_OWN_CACHE = re.compile(
    r"(?:^|: )(?:cannot connect to '[^']+'|unable to download '[^']+\.narinfo')"
)
# How a link's error starts where a session opened (``_OPENING``), to the builder's words.
_OPENED = re.compile(
    r"(?:cannot connect to builder|cannot open a session on builder) '[^']*' \([^)]*\): "
)
# Text where a session's reply belongs (``links.base.open_serve``): a start-up file's words.
_ANSWERED = re.compile(r"the builder answered (['\"])(.*?)\1 where the \w+ program's reply belongs")
# A closed session's last line, as ``ProtocolConnection._translate`` quotes it.
_LAST_LINE = re.compile(r" \((?:its last line|ssh's word): .*\)$")
# The line in which ssh names the known_hosts file and line that hold the old key.
_OFFENDING = re.compile(r"Offending \S+ key in (\S+?):(\d+)")


# How a builder is left out, after "or leave it out ": offload build's, and offload-hook's,
# whose nix-build takes no --exclude (it would refuse the flag).
HOOK_LEAVE_OUT = "by choosing the others with `offload use`"


def explain(machine: Machine, error: str, leave_out: str | None = None) -> str:
    """One line: why ``machine`` cannot be used (from its link's ``error``), then the fix;
    ``leave_out``: how to do without it (else offload build's ``--exclude NAME``). The last
    line a closed session said, which ``error`` may quote, is a build's own as often as not
    (curl's "Connection refused"): it is kept, but no rule reads it."""
    quoted = _LAST_LINE.search(error)
    if quoted is None:
        return _explained(machine, error, leave_out)
    head = error[: quoted.start()]
    said = _explained(machine, head, leave_out)
    return said + error[quoted.start() :] if said == _last_words(head) else said


def _explained(machine: Machine, error: str, leave_out: str | None) -> str:
    """``explain``'s rules, over an error that quotes no session's last line."""
    where = machine.source
    away = f"leave it out {leave_out or f'with --exclude {machine.name}'}"
    looked_up = looked_up_elsewhere(error, machine.host, machine.port)
    if machine.public_host_key and machine.host and looked_up is not None:
        what, fix = alias_fix(machine.host, looked_up)
        return f"{what} ({where}); {fix}, or {away}"
    if any(marker in error for marker in _CHANGED) or (
        machine.public_host_key and "Host key verification failed" in error
    ):
        return _changed_key(machine, error)
    if "Host key verification failed" in error:
        return (
            f"its host key is unknown (nothing pins or trusts it); pin it in column 8 of {where}, "
            "the base64 of the builder's /etc/ssh/ssh_host_ed25519_key.pub"
        )
    daemon = daemon_trouble(error)
    if daemon is not None:
        return f"{daemon.detail}; {daemon.fix(machine.user)}"
    if refused_by_ssh(error):
        return _refused(machine, error)
    if (its_nix := _builders_nix(machine, error)) is not None:
        return its_nix
    # Where the session opens (a new master's, or one over a kept master: the hook's).
    if mismatched(error, machine.scheme) and error.startswith(_OPENING):
        what, fix = mismatch_fix(machine.scheme, where)
        return f"{what}; {fix}"
    if (forced := _forced_not_there(error)) is not None:
        return forced
    noise = _ANSWERED.search(error)
    # Text, not bytes shown as escapes (``{shown!r}``: a binary answer's "\x00").
    if noise is not None and error.startswith(_OPENING) and "\\" not in noise[2]:
        return (  # a session's, not the master's: a start-up file's words
            f"its shell printed {noise[2]!r} before the command: Nix's sessions there break on "
            f"it; {SHELL_NOISE_HINT}"
        )
    refused_option = option_refused(error) if error.startswith(_CONNECT) else None
    if refused_option is not None:  # not the machines line's fault: NIX_SSHOPTS' (ssh_options)
        return (
            f"ssh refused an option of NIX_SSHOPTS ({refused_option}); fix or remove it there "
            f"(`ssh -G $NIX_SSHOPTS {machine.host or machine.name}` shows how ssh reads them)"
        )
    connecting = error.startswith(_OPENING)  # ssh's own words, not a build's
    if connecting and "Connection refused" in error:
        return (
            f"connection refused by {_address(machine)}: is sshd running and listening there? "
            f"(check {where}, or {away})"
        )
    if connecting and ("timed out" in error or "no answer within" in error):
        return (
            f"no answer from {_address(machine)} in time: is it up and reachable? "
            f"(check {where}, or {away})"
        )
    unresolved = _UNRESOLVED.search(error) if connecting else None
    if unresolved:
        return _unresolved(machine, unresolved[1], unresolved[2].rstrip(". "), away)
    if error.startswith(_CONNECT):  # any other failed connection: still the line to check
        return f"{_last_words(error)} (check {where}, or {away})"
    return _last_words(error)


def _forced_not_there(error: str) -> str | None:
    """Logged in, and the key's forced command (or sshd's ForceCommand) is not there: the
    shell's words where offload's own program never ran, said with the fix; None otherwise."""
    opening = _OPENED.match(error)
    if opening is None:
        return None
    said = forced_not_there(error[opening.end() :].split(" | "))
    if said is None:
        return None
    what, fix = forced_missing(said)
    return f"{what}; {fix}"


def _builders_nix(machine: Machine, error: str) -> str | None:
    """What the builder's Nix said of itself, with its fix: not there, stopped by its own
    settings, not trusting the user, stopped on a cache of its own; None for anything else."""
    if NOT_ON_PATH in error:  # Nix, or the program remote-program= names, is not there
        if (named := machine.params.get("remote-program")) is not None:
            said = _last_words(error.split(f"{NOT_ON_PATH}: ", 1)[-1])  # the shell's words
            return (
                f"remote-program={named} in {machine.source} names a program the builder has "
                f"not ({said}): name one it has (`command -v` on the builder)"
            )
        return f"{_last_words(error)}; {install_nix(machine.source)}"
    if stopped_by_nix(error):  # it ran: its own settings or files stopped it
        return f"{_last_words(error)}; {mend_settings()}"
    if is_untrusted(error):  # said as ``protocol.trust`` says it, with its fix
        return f"{_last_words(error)}; {untrusted_hint(machine.name)}"
    if not error.startswith(_CONNECT) and _OWN_CACHE.search(error):
        return (
            f"its Nix stopped on a binary cache of its own as it substituted the inputs"
            f" (builders-use-substitutes): {_last_words(error)}; fix the substituters (or set"
            f" fallback = true) in the builder's nix.conf, or give"
            f" --option builders-use-substitutes false"
        )
    return None


def _refused(machine: Machine, error: str) -> str:
    """ssh's login was refused: the key's own trouble, its passphrase, or the key itself."""
    trouble = key_trouble(error)
    if trouble is not None:
        what, fix = key_fix(trouble, machine.ssh_key, key_place(machine))
        return f"{what}, and the builder took no other key; {fix}"
    if has_passphrase(machine.ssh_key):
        assert machine.ssh_key is not None
        what, fix = passphrase_fix(machine.ssh_key, key_place(machine))
        return f"{what}; {fix}"
    # A user the URI names may be the mistake (a typo: 'rooot@'), not the key.
    user = f" for user '{machine.user}'" if machine.user else ""
    whose = f"{machine.user}'s" if machine.user else "the builder's"
    check = f"is {machine.user} the user meant in {machine.uri}? else " if machine.user else ""
    if machine.ssh_key:
        key = machine.ssh_key
        return (
            f"the builder refused the ssh key {key}{user}; {check}add {key}.pub to {whose} "
            f"authorized_keys there, or name the right key in column 3 of {machine.source}"
        )
    # The key is the ssh config's (NIX_SSHOPTS' -F), or ssh's.
    return (
        f"the builder refused the ssh keys offered{user} (your ssh config's IdentityFile, or "
        f"ssh's default keys); {check}add the right public key to {whose} authorized_keys "
        f"there, or name its private key in column 3 of {machine.source}"
    )


def _unresolved(machine: Machine, name: str, why: str, away: str) -> str:
    """The name ssh was to connect to does not resolve: the machines line's host, or the
    HostName an ssh config gives it."""
    what, check = f"host name {name}", machine.source
    question = (
        # A name only an ssh config knows (`offload fleet env` forgotten, a Host alias that
        # `setup client` wrote): ssh was given no config that has it.
        "is it right, or an ssh Host alias from a config ssh was not given (NIX_SSHOPTS='-F FILE')?"
    )
    if name != machine.host:
        what += f", the ssh config's HostName for {machine.host},"
        check = f"the ssh config and {check}"
        question = "is it right?"
    return f"{what} does not resolve ({why}): {question} (check {check}, or {away})"


def _changed_key(machine: Machine, error: str) -> str:
    head = (
        "HOST KEY CHANGED: the builder answered with a key that is not the one trusted for it; "
        "someone may be intercepting the connection (man-in-the-middle)"
    )
    if machine.public_host_key:
        fix = f"column 8 of {machine.source}"
    else:
        offending = _OFFENDING.search(error)
        fix = f"{offending[1]} line {offending[2]}" if offending else "your known_hosts file"
    return (
        f"{head}; if the builder was reinstalled, check its new key and put it in {fix}, "
        "else find out who answers there"
    )


def _address(machine: Machine) -> str:
    host = machine.host or machine.uri
    return f"{host}:{machine.port}" if machine.port else host


def _last_words(error: str) -> str:
    """The error as it is, on one line, less any path to a file offload made for the run."""
    text = " ".join(error.split())
    return re.sub(r"/\S*/ofl-[^/\s]+/\S*", "(offload's pinned key file)", text)
