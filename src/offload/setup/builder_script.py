"""``offload setup builder``'s script, for a host without NixOS, run as root on the builder.

It is safe to run twice (each step looks first), writes each file whole or not at all, and
checks sshd's configuration before it is used. It leaves alone an account someone logs into
(root, or a user with a password), whose logins the sshd lines would take away, gives an
existing user without a shell that runs commands (``adduser --system`` makes one with nologin)
``/bin/sh``, and makes the client's key line the one asked for, replacing one added by hand
(the seeds' plain line, which may run any command).
"""

from __future__ import annotations

import shlex

from offload.forced import FORCED
from offload.setup.build_user import (
    MAX_SESSIONS,
    TUNING,
    BuilderSetup,
    authorized_keys_line,
    daemon_limits,
    sshd_lines,
)

__all__ = ["shell_script"]


def _heredoc(text: str) -> str:
    return f"<<'OFFLOAD_EOF'\n{text}OFFLOAD_EOF\n"


def _preamble(setup: BuilderSetup) -> str:
    """The checks before any change: Nix is there, and its daemon can be let in to."""
    name = setup.program[0]
    return f"""#!/bin/sh
# offload setup builder, for a host without NixOS: run as root on the builder, after reading it.
# Safe to run again: each step looks before it changes anything.
set -eu
user={shlex.quote(setup.user)}
home=/var/lib/{setup.user}
# Linux with systemd (useradd, setpriv, stat -c and the nix-daemon's unit): elsewhere a step
# failed halfway, after the user, the key and nix.conf were made, and every run again.
[ "$(uname -s)" = Linux ] && command -v systemctl >/dev/null ||
  {{ echo "this script is for Linux with systemd; on another host, make the user, its" \
      "authorized_keys line and trusted-users by hand (README, A short tour)" >&2; exit 1; }}
# The {name} the key's command runs: the system profile's where there is one (root's
# PATH may start at /root/.nix-profile, which the build user cannot reach), else PATH's.
program=/nix/var/nix/profiles/default/bin/{name}
[ -x "$program" ] || program=$(command -v {name}) ||
  {{ echo "{name} is not on PATH: install Nix first" >&2; exit 1; }}
# A file appended to ends its last line first: else the first line added joins it
# ("...sftp-serverMatch User ...": every restriction for the build user made global).
ended() {{
  if [ -s "$1" ] && [ -n "$(tail -c 1 "$1")" ]; then
    echo >>"$1"
  fi
}}
# Step 2 writes the user's keys as the user (util-linux's setpriv, in every Linux's base).
command -v setpriv >/dev/null ||
  {{ echo "setpriv is not on PATH: install util-linux first" >&2; exit 1; }}

# The user must reach the nix-daemon's socket. Debian's nix-bin makes its directory 0770
# root:nix-users (at every boot): a user outside that group fails every session with
# "getting status of .../socket: Permission denied". So the user joins nix-users (where it
# exists: a boot closes an open directory again). A directory closed to all but another group
# (sudo, wheel, nixbld: whose members Nix takes for build users) is the admin's to open.
sockets=/nix/var/nix/daemon-socket
group=nix-users
if [ -d "$sockets" ]; then
  case "$(stat -L -c %A "$sockets")" in
    *[!xt]) group=$(stat -L -c %G "$sockets") ;;
  esac
fi
if [ "$group" = root ] || [ "$group" = UNKNOWN ]; then
  echo "$sockets is closed to all but root: no build user can reach the nix-daemon;" \\
    "give its directory a group of its own (Debian's: 0770 root:nix-users) and run this again" >&2
  exit 1
fi
if [ "$group" != nix-users ] && ! id -nG "$user" 2>/dev/null | tr ' ' '\\n' | grep -qxF "$group"
then
  echo "$sockets is closed to all but group $group, which this script adds no one to:" \\
    "give the directory the group nix-users, or add $user to $group yourself if that" \\
    "group is meant for Nix's users, and run this again" >&2
  exit 1
fi
"""


_SSHD_CHECK = """\
# Step 5 checks sshd_config with its block added: one sshd refuses as it is failed there, after
# steps 1-4, in sshd's words about a file of the script's (.offload-new). Asked only when step
# 5 will add the block; sshd may be off PATH (`su` without `-` keeps a user's).
sshd=$(command -v sshd || echo /usr/sbin/sshd)
if ! grep -qxF "Match User $user" /etc/ssh/sshd_config 2>/dev/null; then
  [ -x "$sshd" ] ||
    { echo "sshd is not on PATH nor in /usr/sbin: install OpenSSH's server first" >&2; exit 1; }
  if ! sshd_said=$("$sshd" -t 2>&1); then
    printf '%s\\n' "$sshd_said" >&2
    echo "sshd refuses /etc/ssh/sshd_config as it is (its words above): mend it (sshd -t)," \\
      "then run this again; nothing was changed" >&2
    exit 1
  fi
fi
"""


def _user() -> str:
    return """
# 1. A system user and group for builds, with a shell (sshd runs the key's command through it),
#    in the daemon socket's group. An account someone logs into (root, or one with a password)
#    is left alone: step 5 takes password and tty logins away from the user.
if id "$user" >/dev/null 2>&1; then
  case "$(id -u "$user"):$(getent shadow "$user" | cut -d: -f2)" in
    0:* | *:\\$*)
      echo "user $user is root or has a password: step 5 would take its logins away;" \\
        "give offload setup builder --user NAME a user of its own" >&2
      exit 1 ;;
  esac
  # A system user made by hand (adduser --system) has nologin: every session would only say
  # "This account is currently not available."
  shell=$(getent passwd "$user" | cut -d: -f7)
  case "${shell:-/bin/sh}" in
    */nologin | */false) usable=no ;;
    *) if [ -x "${shell:-/bin/sh}" ]; then usable=yes; else usable=no; fi ;;
  esac
  # Only an account with a build user's home (this script's, or adduser's): a service's own
  # (www-data in /var/www, nobody) is not made an ssh login by a mistyped --user.
  if [ "$usable" = no ]; then
    case "$(getent passwd "$user" | cut -d: -f6)" in
      "/var/lib/$user" | "/home/$user") ;;
      *)
        echo "user $user has no login shell and lives elsewhere than /var/lib/$user or" \\
          "/home/$user: a service's account, not a build user; give offload setup builder" \\
          "--user NAME a user of its own" >&2
        exit 1 ;;
    esac
    usermod --shell /bin/sh "$user"
    echo "user $user's shell was $shell: now /bin/sh (sshd runs the key's command through it)"
  fi
else
  useradd --system --user-group --create-home --home-dir "$home" --shell /bin/sh "$user"
fi
if getent group "$group" >/dev/null && ! id -nG "$user" | tr ' ' '\\n' | grep -qxF "$group"; then
  usermod -a -G "$group" "$user"
fi
"""


# Step 2's ground, as root: the build user's .ssh, made or taken over without following a link.
_SSH_DIR = """home=$(getent passwd "$user" | cut -d: -f6)
# The user's home may be the user's: a link planted there would have root follow it (chown a
# system directory, copy a root-only file into the user's keys), and one swapped in after a
# look as well, anywhere along the path. So root works inside .ssh itself, once it has made
# sure the directory it stands in is the home's own .ssh (not a link's target): there it only
# refuses links and gives the user what is there (chown -h); or it makes .ssh in a home the
# user cannot write. The keys are written as the user, who opens only what it may itself.
uid=$(id -u "$user")
if [ -L "$home/.ssh" ]; then
  echo "$home/.ssh is a symbolic link: remove it (this script writes there as root)" >&2
  exit 1
fi
if [ -e "$home/.ssh" ]; then
  (
    real=$(cd -P "$home" && pwd -P)/.ssh
    cd -P "$home/.ssh"
    if [ "$(pwd -P)" != "$real" ]; then
      echo "$home/.ssh changed while this script ran: run it again" >&2
      exit 1
    fi
    if [ -L authorized_keys ]; then
      echo "$home/.ssh/authorized_keys is a symbolic link: remove it" >&2
      exit 1
    fi
    for p in . authorized_keys; do
      if [ -e "$p" ] && [ "$(stat -c %u "$p")" != "$uid" ]; then
        chown -h "$user:$(id -gn "$user")" "$p"
      fi
    done
  )
elif [ "$(stat -c %u "$home")" != "$uid" ]; then
  install -d -m 0700 -o "$user" -g "$(id -gn "$user")" "$home/.ssh"
fi

"""


def _replaced_note(setup: BuilderSetup) -> str:
    """Said where the new line restricts the key and replaces one that served the other
    scheme's machines lines: those fail from now on. (Inside the user's single-quoted
    ``sh -c``: no quote of that kind, and no backquote, which that shell would run.)"""
    other = next(s for s in FORCED if s != setup.scheme)
    writes = "setup client --ssh-ng" if setup.scheme == "ssh-ng" else "setup client"
    use = f"use {setup.scheme}:// ones ({writes} writes them)"
    # The key's line as it was serves both schemes: what --unrestricted writes (alone).
    keep = "--unrestricted" if setup.scheme == "ssh" else "--unrestricted without --ssh-ng"
    other_program = FORCED[other]
    return f"""\
    if grep -F "$key" "$keys" | grep -qv "command="; then
      echo "note: the line of this key in $keys is replaced; it ran any command, which" \\
        "{other}:// machines lines for this builder need:" \\
        "{use}, or {keep}" >&2
    elif grep -F "$key" "$keys" | grep -qF -e "{other_program}"; then
      echo "note: the line of this key in $keys is replaced; it ran {other_program}," \\
        "which {other}:// machines lines for this builder need: {use}" >&2
    fi
"""


def _key(setup: BuilderSetup) -> str:
    key_data = shlex.quote(setup.key.data)
    if setup.restricted:
        name, arguments = setup.program
        line = (
            f"printf 'restrict,command=\"%s {arguments}\" %s' "
            f'"$program" {shlex.quote(setup.key.line)}'
        )
        shown = authorized_keys_line(setup, f"/path/to/{name}")
    else:
        line = f"printf '%s' {shlex.quote(authorized_keys_line(setup))}"
        shown = authorized_keys_line(setup)
    replaced = _replaced_note(setup) if setup.restricted else ""
    step = f"""\
# 2. The client's key ({setup.key.fingerprint}), as this authorized_keys line, replacing any
#    other line of that key (one added by hand has no restriction):
#    {shown}
want=$({line})
setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups sh -c '
  ssh=$1/.ssh want=$2 key=$3
  keys=$ssh/authorized_keys
  for p in "$ssh" "$keys"; do
    if [ -L "$p" ]; then
      echo "$p is a symbolic link: remove it" >&2
      exit 1
    fi
  done
  [ -d "$ssh" ] || mkdir -m 0700 "$ssh" || exit 1
  chmod 0700 "$ssh"
  [ -e "$keys" ] || : >"$keys" || exit 1
  if ! grep -qxF "$want" "$keys"; then
{replaced}    new=$(mktemp "$keys.XXXXXX") || exit 1
    {{ grep -vF "$key" "$keys" || [ $? -eq 1 ]; }} >"$new" && printf "%s\\n" "$want" >>"$new" &&
      mv "$new" "$keys" || {{ rm -f "$new"; exit 1; }}
  fi
  chmod 0600 "$keys"
' sh "$home" "$want" {key_data}
"""
    return _SSH_DIR + step


def _nix() -> str:
    limits = _heredoc(daemon_limits())
    return f"""\
# 3. nix.conf: the user is trusted, and the tuning (garbage collection at 1 GiB free until
#    10 GiB are, every core) where nix.conf has none of its own. Later lines win in nix.conf:
#    check nothing below overrides them.
#    Written whole or not at all (a copy replaces it), so the mark is never there alone.
#    A restart owed (a run that changed them and stopped before restarting) is marked by a
#    file, so that running this again restarts the daemon: it reads trusted-users at start.
pending=/etc/nix/.offload-restart-pending
restart=no
if [ -e "$pending" ]; then
  restart=yes
fi
if ! grep -qxF "# offload setup builder: $user" /etc/nix/nix.conf 2>/dev/null; then
  mkdir -p /etc/nix
  touch /etc/nix/nix.conf
  new=/etc/nix/nix.conf.offload-new
  cp -p /etc/nix/nix.conf "$new"
  ended "$new"
  {{
    echo "# offload setup builder: $user"
    echo "extra-trusted-users = $user"
    # Appended last, a line here won over the host's own: max-jobs, cores and the
    # garbage collection's bounds are set only where nix.conf does not set them yet.
    for setting in {" ".join(shlex.quote(f"{k} = {v}") for k, v in TUNING)}; do
      grep -qE "^[[:space:]]*${{setting%% *}}[[:space:]]*=" "$new" || echo "$setting"
    done
  }} >>"$new"
  touch "$pending"
  mv "$new" /etc/nix/nix.conf
  restart=yes
fi

# 4. The nix-daemon may use at most 90% of the memory, and goes first when memory runs out.
#    It is restarted (which ends the builds it runs) only when this or nix.conf changed.
dropin=/etc/systemd/system/nix-daemon.service.d/offload.conf
mkdir -p "${{dropin%/*}}"
cat >"$dropin.offload-new" {limits}if cmp -s "$dropin.offload-new" "$dropin"; then
  rm "$dropin.offload-new"
else
  touch "$pending"
  mv "$dropin.offload-new" "$dropin"
  systemctl daemon-reload
  restart=yes
fi
if [ "$restart" = yes ]; then
  systemctl restart nix-daemon
  rm -f "$pending"
fi
"""


def _sshd(setup: BuilderSetup) -> str:
    return f"""
# 5. sshd: nothing but commands for that user. A Match block runs to the next Match, so it goes
#    at the end, and the new file is checked before it replaces the old one.
if ! grep -qxF "Match User $user" /etc/ssh/sshd_config; then
  cp -p /etc/ssh/sshd_config /etc/ssh/sshd_config.offload-new
  ended /etc/ssh/sshd_config.offload-new
  cat >>/etc/ssh/sshd_config.offload-new {_heredoc(sshd_lines(setup))}\
  if ! "$sshd" -t -f /etc/ssh/sshd_config.offload-new; then
    rm -f /etc/ssh/sshd_config.offload-new
    echo "sshd refuses /etc/ssh/sshd_config with offload's Match block added (its words" \\
      "above); the file is left as it was" >&2
    exit 1
  fi
  mv /etc/ssh/sshd_config.offload-new /etc/ssh/sshd_config
  systemctl reload ssh 2>/dev/null || systemctl reload sshd
elif "$sshd" -T -C "user=$user,host=localhost,addr=127.0.0.1" 2>/dev/null |
  grep -qix "maxsessions 10"
then
  # An earlier run's block, from before it set MaxSessions, and sshd's 10 in force for the
  # user (set anywhere else, it is the admin's): changed by hand, not here.
  echo "note: the Match User $user block in /etc/ssh/sshd_config sets no MaxSessions: add" \\
    "'MaxSessions {MAX_SESSIONS}' to it, or sshd refuses the sessions past 10 that offload" \\
    "runs over one connection" >&2
fi

echo "builder ready: user $user; now run offload setup client on the client"
"""


def shell_script(setup: BuilderSetup) -> str:
    """The script for a host without NixOS: the user and key, nix.conf and the daemon, sshd."""
    return f"{_preamble(setup)}{_SSHD_CHECK}{_user()}{_key(setup)}\n{_nix()}{_sshd(setup)}"
