"""What ssh makes of the options on its command line: its keepalive settings, read from the
same words ssh is given (``NIX_SSHOPTS`` first, then offload's own), as OpenSSH reads them.

offload gives ssh ``ServerAliveInterval`` and ``ServerAliveCountMax`` after ``NIX_SSHOPTS``
(``offload.transport.ssh.ssh_argv``), and ssh keeps the first value it is given for an option:
a user's ``NIX_SSHOPTS="-o ServerAliveInterval=1"`` is what ssh uses, the master's keepalives
included. How long a silent builder's connection can last is therefore the effective pair's
(``Keepalive``), which is what decides whether a session that ended had stopped answering
(``offload.transport.links.streams``).

The words are read as ssh 9.2 reads them: its getopt (flags may be bundled, ``-xo Key=Value``;
an option's argument is the rest of its word or the next word; ``--`` ends the options), and
each ``-o`` argument as a line of ssh_config (``readconf.c``): the keyword up to a blank or one
``=`` (``Key=Value``, ``Key Value``, ``Key = Value``), matched whatever its case, a line
starting with ``#`` ignored, the value unquoted (``"1"``), a ``#`` word ending the line; the
interval a time (``90``, ``1m30s``), the count a whole number. A value ssh refuses (``x``,
``-1``, ``1.5``) makes ssh exit 255 before connecting: the builder is down, said with ssh's
words ("command-line line 0: invalid time value.") and the fix in NIX_SSHOPTS
(``option_refused``). Here it is left out (offload's value then counts, though no connection is
ever made with it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "SERVER_ALIVE_COUNT_MAX",
    "SERVER_ALIVE_INTERVAL",
    "Keepalive",
    "flag_arguments",
    "keepalive",
    "o_lines",
    "option_refused",
    "without_sharing",
]

# offload's own keepalives (nix#13513, nix#16437): with no ServerAlive* of the user's, ssh
# gives up 12 s after the builder's last word. OpenSSH 9.2 measured 20 s with 5 and 3.
SERVER_ALIVE_INTERVAL = 4
SERVER_ALIVE_COUNT_MAX = 2
# ssh's own, for an option it is not given.
_SSH_INTERVAL, _SSH_COUNT_MAX = 0, 3

# ssh's words for an -o line it refuses ("command-line line 0: invalid time value.",
# "command-line: line 0: Bad configuration option: x"), up to the next line of a link's error.
_REFUSED = re.compile(r"command-line:? line [0-9]+: [^|]*")
# ssh's options that take an argument (ssh(1), 9.2: its getopt string).
_WITH_ARGUMENT = frozenset("BbcDEeFIiJLlmOopQRSWw")
_WHITESPACE = " \t\r\n"
_INT_MAX = 2**31 - 1
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIME_PART = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)([sSmMhHdDwW]?)")
_INTEGER = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")


@dataclass(frozen=True)
class Keepalive:
    """ssh's ``ServerAliveInterval`` (seconds; 0: no keepalives) and ``ServerAliveCountMax``.

    ssh asks a silent server every ``interval`` s since it last heard from it (any packet
    counts), and gives the connection up at the ask after ``count_max`` went unanswered
    (``clientloop.c``): at most ``(count_max + 1) x interval`` after the server's last word
    (``gives_up``). Its clock counts whole seconds (``monotime()``), so the first ask may come
    up to 1 s early: ssh gives up more than ``(count_max + 1) x interval - 1`` s after that
    word. offload goes by ``count_max x interval`` (``budget``: below that, by an interval
    less 1 s); with ``count_max`` 0 (ssh gives up at its first ask, waiting for no answer), by
    ``interval - 1``."""

    interval: int = SERVER_ALIVE_INTERVAL
    count_max: int = SERVER_ALIVE_COUNT_MAX

    @property
    def budget(self) -> float:
        """A silence no longer than any after which ssh gives the connection up (inf: never)."""
        if self.interval <= 0:
            return math.inf
        if self.count_max <= 0:
            return float(self.interval - 1)
        return float(self.interval * self.count_max)

    @property
    def gives_up(self) -> float:
        """How long after the server's last word ssh gives the connection up (inf: never)."""
        if self.interval <= 0:
            return math.inf
        return float(self.interval * (self.count_max + 1))

    def options(self) -> list[str]:
        """These values as ssh options."""
        return [
            "-o",
            f"ServerAliveInterval={self.interval}",
            "-o",
            f"ServerAliveCountMax={self.count_max}",
        ]


def keepalive(words: Sequence[str]) -> Keepalive:
    """The keepalive ssh uses when run with ``words`` (its arguments, without ``ssh``: offload's
    own options among them, ``ssh_argv``): the first valid value of each option, or ssh's
    default (0 and 3) for one ``words`` never give it. Config files are not read: ssh reads
    them after its command line, which always sets both here."""
    interval: int | None = None
    count_max: int | None = None
    for line in o_lines(words):
        said = _config_line(line)
        if said is None:
            continue
        key, value = said
        if key == "serveraliveinterval" and interval is None:
            interval = _seconds(value)
        elif key == "serveralivecountmax" and count_max is None:
            count_max = _integer(value)
    return Keepalive(
        _SSH_INTERVAL if interval is None else interval,
        _SSH_COUNT_MAX if count_max is None else count_max,
    )


def option_refused(said: str) -> str | None:
    """ssh's words, in ``said``, for an option of its command line it refused (it then exits
    before connecting); None if there are none. offload's own options are valid: such an
    option is one of NIX_SSHOPTS'."""
    found = _REFUSED.search(said)
    return None if found is None else found[0].strip()


def o_lines(words: Sequence[str]) -> Iterator[str]:
    """The arguments of ``-o`` among ``words``, in order (``flag_arguments``)."""
    return flag_arguments(words, "o")


@dataclass(frozen=True)
class _Word:
    """One option word of ssh's command line as its getopt reads it (with the next word when
    that is its argument), or a word that is not an option (``plain``: the destination, a
    remote command's, ``--`` or ``-``). ``at``: where it is in the words."""

    at: int
    text: str = ""  # a plain word itself
    letters: str = ""  # the flags before one that takes an argument (or all of them)
    flag: str | None = None  # the flag that takes an argument, if the word has one
    argument: str | None = None  # its argument (None: the words end before it)
    inline: bool = False  # the argument is the rest of the word
    plain: bool = False


def _getopt(words: Sequence[str]) -> Iterator[_Word]:
    """``words`` as ssh's getopt reads them: flags may be bundled (``-xo Key=Value``), and an
    option's argument is the rest of its word or the next word."""
    at = 0
    while at < len(words):
        word, start = words[at], at
        at += 1
        if word in {"--", "-"} or not word.startswith("-"):
            yield _Word(start, text=word, plain=True)
            continue
        for index, flag in enumerate(word[1:], start=2):
            if flag not in _WITH_ARGUMENT:
                continue
            if inline := word[index:]:
                yield _Word(start, letters=word[1 : index - 1], flag=flag, argument=inline,
                            inline=True)  # fmt: skip
            else:
                argument = words[at] if at < len(words) else None
                at += 1
                yield _Word(start, letters=word[1 : index - 1], flag=flag, argument=argument)
            break
        else:
            yield _Word(start, letters=word[1:])


def flag_arguments(words: Sequence[str], wanted: str) -> Iterator[str]:
    """The arguments of option ``wanted`` (``o``, ``F``...) among ``words``, in order, as ssh's
    getopt finds them. The first word that is not an option is the destination, and ssh reads
    options after it too, up to the next such word (the remote command) or ``--``."""
    destination = False
    for word in _getopt(words):
        if word.plain:
            if destination or word.text in {"--", "-"}:
                return
            destination = True
        elif word.flag == wanted and word.argument is not None:
            yield word.argument


# ssh's connection-sharing flags: a master (-M), its socket (-S) and a command to it (-O).
_SHARING = frozenset("MSO")


def without_sharing(words: Sequence[str]) -> list[str]:
    """``words`` (NIX_SSHOPTS) less ssh's connection-sharing flags and their arguments, read
    as ssh's getopt reads them, up to the first word that is not an option (ssh would take it
    for the destination: a NIX_SSHOPTS neither Nix's ssh commands nor offload's work with;
    what follows it is left as it is). offload keeps its own connections, and its ``-o
    ControlPath`` came first in vain: a ``-S`` replaces it, so sessions rode whatever master
    listened there, whose host key no pin had checked, and ``-M`` made each session a
    master."""
    kept: list[str] = []
    for word in _getopt(words):
        if word.plain:
            return [*kept, *words[word.at :]]
        letters = "".join(flag for flag in word.letters if flag not in _SHARING)
        taken = word.flag is not None and word.flag not in _SHARING
        if taken:
            letters += f"{word.flag}{word.argument if word.inline else ''}"
        if letters:
            kept.append("-" + letters)
        if taken and not word.inline and word.argument is not None:
            kept.append(word.argument)
    return kept


def _config_line(line: str) -> tuple[str, str] | None:
    """An ssh_config line's keyword (lower case) and its one value, as ``readconf.c`` splits
    them; None for a line ssh ignores (empty, a comment) or refuses (no value, bad quotes, more
    than one value)."""
    rest: str | None = line.rstrip(_WHITESPACE + "\f")
    keyword, rest = _delimited(rest)
    if keyword == "":  # leading blanks, or one '='
        keyword, rest = _delimited(rest)
    if not keyword or keyword.startswith("#") or rest is None:
        return None
    values = _split(rest.lstrip(_WHITESPACE))
    if values is None or len(values) != 1:
        return None
    return keyword.lower(), values[0]


def _delimited(text: str | None) -> tuple[str | None, str | None]:
    """``strdelim``: the first token of ``text`` (up to a blank or one '=', or a quoted one)
    and what follows it (None: nothing, or an unmatched quote)."""
    if text is None:
        return None, None
    match = re.search(r'[ \t\r\n"=]', text)
    if match is None:
        return text, None
    at = match.start()
    if text[at] == '"':
        token, quote, after = text[at + 1 :].partition('"')
        if not quote:
            return None, None
        return text[:at] + token, after.lstrip(_WHITESPACE)
    after = text[at + 1 :].lstrip(_WHITESPACE)
    if text[at] != "=" and after.startswith("="):
        after = after[1:].lstrip(_WHITESPACE)
    return text[:at], after


def _split(text: str) -> list[str] | None:
    """``argv_split`` with comments: ``text``'s words, quotes and escapes taken out, up to a
    word starting with '#'; None for an unmatched quote."""
    words: list[str] = []
    at = 0
    while at < len(text):
        if text[at] in " \t":
            at += 1
            continue
        if text[at] == "#":
            break
        word: list[str] = []
        quote = ""
        while at < len(text):
            char, following = text[at], text[at + 1 : at + 2]
            if char == "\\" and following and following in ("'\"\\" if quote else "'\"\\ "):
                word.append(following)
                at += 2
                continue
            if not quote and char in " \t":
                break
            if not quote and char in "\"'":
                quote = char
            elif quote and char == quote:
                quote = ""
            else:
                word.append(char)
            at += 1
        if quote:
            return None
        words.append("".join(word))
    return words


def _seconds(text: str) -> int | None:
    """``convtime``: ``90``, ``1m30s``, ``2h`` in seconds; None where ssh refuses it."""
    total, at = 0, 0
    if not text:
        return None
    while at < len(text):
        part = _TIME_PART.match(text, at)
        if part is None or (not part.group(2) and part.end() != len(text)):
            return None
        value = int(part.group(1))
        if value < 0:
            return None
        total += value * _UNITS[part.group(2).lower()]
        if total > _INT_MAX:
            return None
        at = part.end()
    return total


def _integer(text: str) -> int | None:
    """``atoi_err``: a whole number from 0 to INT_MAX; None where ssh refuses it."""
    if _INTEGER.fullmatch(text) is None:
        return None
    value = int(text)
    return value if 0 <= value <= _INT_MAX else None
