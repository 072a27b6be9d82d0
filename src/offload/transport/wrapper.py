"""The shell a builder runs around its serve program: the start line, slots, and the kill.

Every remote serve session (and the local one) is started by a ``sh -c`` wrapper
(``serve_command``) that reports its pid on stdout before the serve program takes it over, so
that it can be stopped remotely: ssh without a PTY does not forward signals, and killing the
local ssh leaves the remote build running; with the pid goes when that process started (on
Linux), and the kill script stops the pid only while it is still that process, since pids are
used again (every few minutes on a busy host). The same line carries the builder's cores,
``/proc/loadavg`` and boot id (``offload.load``), read with shell builtins and one ``nproc``
(none once a session there told the cores: later ones are given them), so a builder's load
costs no round trip of its own.

A session asked to (``slots`` above 0) also holds one of the builder's slot files under
``flock(1)`` for as long as its serve program runs, and says which at the end of the start line
(``parse_slot``): every client on every host then counts the same slots, with no agent on the
builder; see the comment above ``_SLOT``.

A client that dies without a word (SIGKILL) needs nothing more on the builder to free its slots
(seen with OpenSSH 9.2 and Nix 2.8, ``tests/integration/test_killed_client.py``): its end of
each session's pipes closes with it, the master (which holds the session's stdio, passed over
the control socket) sends EOF on the channel, and sshd closes the serve program's stdin. Nix
watches that stdin for the hang-up while it builds (``MonitorFdHup`` in ``nix-store --serve``
and in the daemon's connections, so ``nix-daemon --stdio`` too): it interrupts the build, kills
the builder's processes and exits, and the slot lock goes with it. The sessions and then the
master, which waits for its sessions, exit by themselves. So no watcher runs beside the serve
program: it would cost every session a process to learn what Nix already acts on. A client host
that goes silent without closing anything (suspended) is noticed only by the builder's sshd
asking it (``ClientAliveInterval``, which ``offload.setup.builder`` turns on), which then drops
the connection and so closes that stdin too.

A builder whose key may run only the serve program (a forced command) ignores all of that and
runs the serve program at once: ``offload.transport.links.base.open_serve`` tells the two apart
by the first bytes on stdout, and such a builder is then asked for the bare serve program
(``serve_command(..., wrapped=False)``), as Nix asks for it. ``ssh-ng://`` builders get the
same wrapper around ``nix-daemon --stdio`` (``program``, from ``offload.transport.dialect``),
and the same detection of a key forced to run the daemon.

This module only builds argv lists and reads start lines; ``offload.transport.links`` runs them.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from offload.config.machines.model import nix_words
from offload.load import BOOT_ID_FILE, LOADAVG_FILE, RemoteLoad, parse_load_report
from offload.numerals import is_decimal

__all__ = [
    "CLIENT_ID_CHARS",
    "NO_CLIENT",
    "PID_MARKER",
    "SLOT_BUSY_EXIT",
    "SLOT_DIRS",
    "WANT_FRESH",
    "kill_script",
    "parse_born",
    "parse_count",
    "parse_pid_line",
    "parse_slot",
    "parse_start_line",
    "remote_program",
    "remove_partial_argv",
    "remove_want_argv",
    "serve_command",
    "serve_program",
    "store_flag",
    "store_program",
]

PID_MARKER = "offload-serve-pid"
# Where a builder keeps its slot files: under its Nix state when that is its own (root, the
# local fleet), else under the user's home (relative); the start line's wrapper picks one.
SLOT_DIRS = ("/nix/var/nix/offload-slots", ".cache/offload-slots")
SLOT_BUSY_EXIT = 75
# A client's want-<id> marker counts as "waiting" this long after its last busy answer: longer
# than offload-hook's clients ask again (Nix's build-poll-interval after a postpone, 5 s; an
# `offload build` asks every ``BUSY_POLL``), and short enough that a client gone or moved
# elsewhere holds others back little: each of their builds yields to it once at most.
WANT_FRESH = 6.0
# What a client id may be made of (it names a file on the builder); "-" is no id.
CLIENT_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
NO_CLIENT = "-"

# `exec "$@"` keeps the reported pid that of nix-store itself (the shell is replaced). The rest
# of the line is `offload.load`'s report: `read` is a builtin (no process for the two files), a
# file that cannot be read leaves its variable empty, and anything empty is printed as "-", so a
# builder without /proc (macOS) still gives a line whose pid parses. The line is the only thing
# on stdout before the serve protocol's bytes; nothing here reads stdin (`nproc`'s is
# /dev/null), which holds the serve hello already. The fourth argument is the cores an earlier
# session there reported (digits; anything else, "-", asks `nproc`): a process less per session.
#
# The first argument is how many builder-side slots there are (0: take none). The session then
# holds the first free one of `slot-0 .. slot-(N-1)` in SLOT_DIRS (flock(1) on fd 9, which the
# serve program inherits: the lock lives exactly as long as it does, a dead one frees it), and
# says which at the end of the start line: `slot=K`; `slot=busy` when every one is held (the
# wrapper then exits 75 without starting the serve program), `slot=noflock` / `slot=nodir`
# when it cannot lock (the client falls back to its own host's count), `slot=-` when not asked.
# The slot directory is made only when it is not there (a process less per session after the
# first). `command exec` keeps a redirection failure from ending the shell, as a special
# builtin would.
#
# Turns (README, the slots paragraph): the second argument is the client's id (CLIENT_ID_CHARS
# only; anything else is taken for none, "-"), the third "1" when this client waits there
# itself (``Link``: this build, or another of the client's within WANT_FRESH s, was answered
# busy). A busy answer touches `want-<id>` there: this client waits. A session of a client
# that does not wait itself answers `yield` without trying a slot while another client's marker
# is fresh (touched within WANT_FRESH s: GNU find's fractional -mmin, as Debian and NixOS have;
# a find that cannot tell finds none, and nobody yields), so the waiter gets the slot its holder
# lets go of (``Link`` ends a session after its turn). A yield touches no marker, and the client
# that yielded goes on not waiting (``Link``): it yields again at each ask until the waiter's
# marker goes stale or is removed, so a waiter that asks seldom (a lone offload-hook, each 5 s)
# still finds the slot free. A client that waits itself never yields, and only a real busy
# answer makes one wait, so two clients never yield to each other for good. A client that gets
# a slot removes its marker, whether it asked as a waiter or not: it waits no more there, and a
# marker left fresh has others yield to it, a slot idle for up to WANT_FRESH s (another of its
# builds still waiting touches it again at its next busy answer). Sessions a client opens
# ahead or as a probe ask as no client (``Link``): no build of theirs waits. Markers older
# than 10 minutes are deleted, younger stale ones are ignored by age. With no marker there,
# the check is one glob and the removal one test: no process.
_WANTED = (
    'ofl_wanted() { for ofl_f in "$ofl_d"/want-*; do [ -e "$ofl_f" ] || return 1; break; done; '
    "ofl_f=$(find \"$ofl_d\" -maxdepth 1 -name 'want-*' \\( -mmin +10 -delete -o "
    f'! -name "want-$ofl_id" -mmin -{WANT_FRESH / 60:.4f} -print \\) 2>/dev/null); '
    '[ -n "$ofl_f" ]; }; '
)
_SLOT = (
    _WANTED + "ofl_n=$1; ofl_id=$2; ofl_w=$3; ofl_c=$4; shift 4; ofl_s=-; ofl_u=-; "
    "case $ofl_id in ''|*[!A-Za-z0-9_.-]*) ofl_id=-;; esac; "
    'if [ "$ofl_n" -gt 0 ] 2>/dev/null; then '
    "if ! command -v flock >/dev/null 2>&1; then ofl_s=noflock; else "
    f"if [ -w {SLOT_DIRS[0].rsplit('/', 1)[0]} ]; then ofl_d={SLOT_DIRS[0]}; ofl_u=nix; "
    f"else ofl_d=${{HOME:-/nonexistent}}/{SLOT_DIRS[1]}; ofl_u=home; fi; ofl_s=nodir; "
    'if [ -d "$ofl_d" ] || (umask 077 && mkdir -p "$ofl_d") 2>/dev/null; then '
    "ofl_s=busy; ofl_i=0; ofl_y=0; "
    '[ "$ofl_w" != 1 ] && ofl_wanted && { ofl_i=$ofl_n; ofl_y=1; }; '
    'while [ "$ofl_i" -lt "$ofl_n" ]; do '
    'if { command exec 9>>"$ofl_d/slot-$ofl_i"; } 2>/dev/null && flock -n 9; then '
    'ofl_s=$ofl_i; echo "offload pid=$$" >"$ofl_d/slot-$ofl_i"; break; fi; '
    "ofl_i=$((ofl_i + 1)); done; "
    'if [ "$ofl_y" = 1 ]; then ofl_s=yield; elif [ "$ofl_id" = - ]; then :; '
    'elif [ "$ofl_s" = busy ]; then '
    'touch "$ofl_d/want-$ofl_id" 2>/dev/null; '
    'elif [ -e "$ofl_d/want-$ofl_id" ]; then rm -f "$ofl_d/want-$ofl_id"; fi; fi; fi; fi; '
)
# `ofl_born LINE` sets ofl_t to a /proc/PID/stat line's 22nd field, when that process started
# (clock ticks since boot), counted after the last ") " as proc(5) says (the command name may
# hold anything); "-" for a line without one (no /proc: macOS). Builtins only. The start line
# says it as `start=T` for the serve process (`exec` keeps the shell's pid and start), and the
# kill script stops a pid only while it is still that process: pids are used again.
_BORN = (
    "ofl_born() { ofl_t=-; ofl_k=2; for ofl_x in ${1##*) }; do ofl_k=$((ofl_k + 1)); "
    'if [ "$ofl_k" = 22 ]; then ofl_t=$ofl_x; return; fi; done; }; '
)
_REPORT_PID = (
    _SLOT + _BORN + "case $ofl_c in ''|*[!0-9]*) ofl_c=$(nproc 2>/dev/null </dev/null);; esac; "
    "ofl_l=; ofl_b=; ofl_p=; "
    f"{{ read -r ofl_l <{LOADAVG_FILE}; }} 2>/dev/null; "
    f"{{ read -r ofl_b <{BOOT_ID_FILE}; }} 2>/dev/null; "
    '{ read -r ofl_p </proc/$$/stat; } 2>/dev/null; ofl_born "$ofl_p"; '
    f'echo "{PID_MARKER} $$ ${{ofl_c:--}} ${{ofl_l:--}} ${{ofl_b:--}} start=$ofl_t '
    'count=$ofl_u slot=$ofl_s"; '
    f"case $ofl_s in busy|yield) exit {SLOT_BUSY_EXIT};; esac; "
    'exec "$@"'
)

# Stops a serve process and every process group below it. Nix 2.8 on SIGTERM kills its
# builder's top process but not the builder's children (they sit in the builder's own session
# and are reparented to init; seen with /bin/sleep on 2.8.0), so the groups of all descendants
# are collected first and signalled too. SIGTERM, up to $2 seconds, then SIGKILL. With $3, the
# start the start line told (`_BORN`), a pid that another process holds by then is left alone,
# at every signal and look (`taken`), and so is the group that pid names. A pid merely gone is
# not taken: Linux gives no process a pid still in use as a group's id, so its group, if any
# of it lives, is still ours. `kill -s 0`: dash reads `kill -0 -- -G` as a bad number. A zombie
# is not alive (`running`): one gone to init holds its pid and group until init reaps it, and a
# container's init may take a second (a copy stopped on this machine's builders waited out the
# whole grace, its slot held), so what kill -s 0 finds is looked up in ps, where one is "Z" ("Zl":
# its main thread gone, others running: alive). The groups go to awk on one line: BWK awk
# (macOS) refuses a -v value holding a newline.
_KILL = (
    _BORN
    + r"""p=$1; grace=${2:-5}; born=${3:--}
taken() {
  [ "$born" = - ] && return 1
  st=; { read -r st </proc/"$p"/stat; } 2>/dev/null || return 1
  ofl_born "$st"
  [ "$ofl_t" != "$born" ]
}
taken && exit 0
groups=$(ps -e -o pid= -o ppid= -o pgid= 2>/dev/null | awk -v root="$p" '
  { pg[$1] = $3; kids[$2] = kids[$2] " " $1 }
  END {
    n = 1; st[1] = root
    while (n > 0) {
      x = st[n]; n--
      if (pg[x] > 1) out[pg[x]] = 1
      m = split(kids[x], k, " ")
      for (i = 1; i <= m; i++) st[++n] = k[i]
    }
    for (g in out) print g
  }')
signal() {
  taken || kill -s "$1" "$p" 2>/dev/null
  for g in $groups; do
    if [ "$g" != "$p" ] || ! taken; then kill -s "$1" -- "-$g" 2>/dev/null; fi
  done
}
alive() {
  own=-; taken || own=$p; found=
  [ "$own" != - ] && kill -s 0 "$p" 2>/dev/null && found=1
  for g in $groups; do
    [ -n "$found" ] && break
    if [ "$g" != "$p" ] || [ "$own" != - ]; then kill -s 0 -- "-$g" 2>/dev/null && found=1; fi
  done
  [ -n "$found" ] && running
}
running() {
  table=$(ps -e -o pid= -o pgid= -o stat= 2>/dev/null) || return 0
  printf '%s\n' "$table" | awk -v p="$p" -v own="$own" -v gs="$(echo $groups)" '
    BEGIN {
      n = split(gs, a, " ")
      for (i = 1; i <= n; i++) if (a[i] != p || own != "-") g[a[i]] = 1
    }
    ($3 !~ /^Z/ || $3 ~ /l/) && (($1 == p && own != "-") || ($2 in g)) { found = 1 }
    END { exit !found }'
}
signal TERM
i=0
while alive; do
  if [ "$i" -ge $((grace * 10)) ]; then signal KILL; break; fi
  sleep 0.1
  i=$((i + 1))
done
exit 0"""
)


def remove_want_argv(client_id: str) -> list[str]:
    """Removes ``client_id``'s want marker from the builder's slot directories (the one the
    wrapper picks is either): a client that ends without a slot there leaves none behind."""
    dirs = f'{SLOT_DIRS[0]} "${{HOME:-/nonexistent}}/{SLOT_DIRS[1]}"'
    script = f'for d in {dirs}; do rm -f "$d/want-$1"; done'
    return ["sh", "-c", script, "sh", client_id]


def serve_program(params: Mapping[str, str] | None = None) -> list[str]:
    """``nix-store --serve --write [--store URI]`` as Nix's ssh:// store runs it."""
    return [*remote_program(params, "nix-store"), "--serve", "--write", *store_flag(params)]


def store_program(params: Mapping[str, str] | None = None) -> list[str]:
    """``nix-store [--store URI]``: the store program the store URI's parameters name."""
    return [*remote_program(params, "nix-store"), *store_flag(params)]


def remote_program(params: Mapping[str, str] | None, default: str) -> list[str]:
    """The words of the URI's ``remote-program`` (``sudo -n nix-store``), else ``default``.
    Nix 2.8 put the text into the remote command as it was, Nix 2.20 on splits it on its
    blanks (a list setting): both run its words; offload quotes each."""
    return nix_words((params or {}).get("remote-program") or "") or [default]


# Deletes partial outputs: $1 nix-store's words, each quoted (run by eval), $2 its --store URI
# or "", then the paths. A valid path (or one that is not there) is never touched; one that
# cannot go yet does not stop the rest.
_REMOVE_PARTIAL = r"""nix=$1; store=$2; shift 2
for p; do
  [ -n "$store" ] || [ -e "$p" ] || continue
  eval "$nix"' ${store:+--store "$store"} --check-validity "$p"' >/dev/null 2>&1 && continue
  eval "$nix"' ${store:+--store "$store"} --delete "$p"' >/dev/null || failed=1
done
exit ${failed:-0}"""


def remove_partial_argv(
    params: Mapping[str, str] | None, paths: Sequence[str], serve: bool = True
) -> list[str]:
    """``sh -c ...`` deleting what of ``paths`` is in the store and not valid, with the store
    program the URI's parameters name (``serve``: its remote-program is the store program,
    not an ``ssh-ng://`` builder's daemon)."""
    words = remote_program(params if serve else None, "nix-store")
    program = " ".join(shlex.quote(word) for word in words)
    store = (params or {}).get("remote-store") or ""
    return ["sh", "-c", _REMOVE_PARTIAL, "sh", program, store, *paths]


def store_flag(params: Mapping[str, str] | None) -> list[str]:
    """``--store URI`` for the URI's ``remote-store``, or nothing."""
    store = (params or {}).get("remote-store")
    return ["--store", store] if store else []


def serve_command(
    params: Mapping[str, str] | None = None,
    *,
    wrapped: bool = True,
    program: Sequence[str] | None = None,
    slots: int = 0,
    client: str = NO_CLIENT,
    waited: bool = False,
    cores: int | None = None,
) -> list[str]:
    """The serve program (or ``program``: the daemon for ssh-ng://) wrapped so that it first
    reports its pid and load on stdout, holding one of ``slots`` builder-side slots if that is
    above 0 for ``client`` (an id of ``CLIENT_ID_CHARS``; ``waited``: this build was answered
    busy before, see the comment above ``_SLOT``); ``cores``: the machine's, as an earlier
    session reported them (None: the wrapper asks ``nproc``). The bare program
    (``wrapped=False``) for a builder known to run only that."""
    remote = list(program) if program is not None else serve_program(params)
    if not wrapped:
        return remote
    if not client or not CLIENT_ID_CHARS.issuperset(client):
        raise ValueError(f"invalid client id {client!r}")
    told = str(cores) if cores is not None and cores > 0 else "-"
    return [
        "sh",
        "-c",
        _REPORT_PID,
        "sh",
        str(max(0, slots)),
        client,
        str(int(waited)),
        told,
        *remote,
    ]


_TAIL_KEYS = frozenset({"slot", "count", "start"})


def _split_tail(rest: str) -> tuple[str, dict[str, str]]:
    """A start line's words after its pid: the load report, and the ``slot=``, ``count=`` and
    ``start=`` words that end the line (by name: an older line has none)."""
    words = rest.split()
    told: dict[str, str] = {}
    while words and (key := words[-1].partition("=")[0]) in _TAIL_KEYS - told.keys():
        told[key] = words.pop().partition("=")[2]
    return " ".join(words), told


def parse_start_line(line: str) -> tuple[int, RemoteLoad | None] | None:
    """``offload-serve-pid PID [REPORT] [start=T] [count=K] [slot=S]``: the pid and the load
    it reports (None if it cannot be told); None for any other line. Never raises."""
    marker, _, rest = line.strip().partition(" ")
    pid, _, report = rest.strip().partition(" ")
    if marker != PID_MARKER or not is_decimal(pid) or len(pid) > 12:
        return None
    return int(pid), parse_load_report(_split_tail(report)[0])


def parse_slot(line: str) -> str | None:
    """What a start line says of its builder-side slot: its number (``"0"``), ``"busy"``,
    ``"yield"`` (left to a client waiting there), ``"noflock"``, ``"nodir"``; None when none
    was asked for or the line is not a start line."""
    slot = _told(line).get("slot")
    return None if slot in {None, "-"} else slot


def parse_count(line: str) -> str | None:
    """Whose slots a start line's slot is one of: ``"nix"``, every account's that can write
    the builder's Nix state (SLOT_DIRS[0]: root, the Nix daemon's); ``"home"``, the builder
    user's own (SLOT_DIRS[1]: clients logging in as another user count theirs apart); None
    when none was asked for or it cannot be told."""
    count = _told(line).get("count")
    return count if count in {"nix", "home"} else None


def parse_born(line: str) -> str | None:
    """When the serve process a start line names started (``_BORN``: digits), for its kill;
    None when the builder could not tell (no /proc) or the line is not a whole start line:
    the wrapper says ``slot=`` after it, and a line cut short could end in a shorter number."""
    told = _told(line)
    born = told.get("start", "")
    whole = "slot" in told and is_decimal(born) and len(born) <= 20
    return born if whole else None


def _told(line: str) -> dict[str, str]:
    """The ``key=value`` words that end a start line (``_split_tail``); none for another line."""
    return {} if parse_start_line(line) is None else _split_tail(line.strip())[1]


def parse_pid_line(line: str) -> int | None:
    """The pid from ``offload-serve-pid N ...``, or None for any other line."""
    start = parse_start_line(line)
    return None if start is None else start[0]


def kill_script(pid: int, grace: int = 5, born: str | None = None) -> list[str]:
    """argv (to run locally, or remotely after quoting) that stops ``pid`` and its builders;
    with ``born`` (``parse_born``), only while ``pid`` is still the process that started then."""
    return ["sh", "-c", _KILL, "sh", str(pid), str(grace), born or "-"]
