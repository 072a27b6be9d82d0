"""What a reachable builder is, judged against what the machines line claims about it.

A builder whose key runs only the serve program answers none of those commands: its rows are
``unknown`` (``restricted_checks``), except what the serve session itself tells.

Pure functions of remote command results: ``nix-store --version``, the serve handshake and its
start line (pid, cores, load: ``offload.load``), ``nix show-config`` (JSON from Nix >= 2.4 with
``nix-command``, ``name = value`` lines otherwise), ``df -Pk /nix/store``, ``id``, and timings.

The systems and features the line claims are judged in ``claims``.

The ``slots`` rows (counted on the builder or not, its own ``max-jobs``) are in ``slot_facts``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Collection, Mapping, Sequence

from offload.ansi import last_nix_error
from offload.doctor.model import Check, Verdict
from offload.load import RemoteLoad, effective_slots
from offload.numerals import is_decimal
from offload.transport.ciphers import cpu_has_aes
from offload.transport.daemon_socket import daemon_trouble
from offload.transport.missing_program import (
    install_nix,
    mend_settings,
    missing,
    nix_stopped,
    not_on_path,
)

__all__ = [
    "RESTRICTED",
    "NixConfig",
    "cannot_tell",
    "daemon_trust",
    "disk_check",
    "listed_trusted",
    "load_check",
    "nix_check",
    "parse_nix_config",
    "restricted_checks",
    "rtt_check",
    "serve_check",
    "throughput_check",
    "trusted_check",
    "words",
]

NixConfig = Mapping[str, str]
# A builder whose key runs only the serve program (a forced command; offload.transport.links).
RESTRICTED = "the builder's key runs only `nix-store --serve`"
_SERVE = "`nix-store --serve`"

_VERSION = re.compile(r"\(Nix\)\s+(\S+)|nix-store\s+\S*\s*(\d+\.\d+\S*)")
_KIB_PER_GIB = 1024 * 1024
# Below these, builds soon fail with "No space left on device" / only small ones fit.
_DISK_FAIL_GIB = 1.0
_DISK_WARN_GIB = 5.0
_RTT_WARN = 0.5
# Below 1 MB/s (a poor uplink), a gigabyte of outputs takes a quarter of an hour to come home.
_THROUGHPUT_WARN = 1e6
_NIX_FIX = install_nix()


def _daemon_unreachable(name: str, said: str, user: str | None) -> Check | None:
    """The row ``name`` failed with Nix's words for a daemon socket it could not use, if
    ``said`` holds them: Nix is there, so installing it is no fix."""
    trouble = daemon_trouble(said)
    if trouble is None:
        return None
    return Check(name, Verdict.FAIL, trouble.detail, trouble.fix(user))


def nix_check(
    returncode: int,
    stdout: str,
    stderr: str,
    program: str,
    user: str | None = None,
    *,
    missing_fix: str = _NIX_FIX,
) -> Check:
    """``PROGRAM --version`` on the builder, as ``user``; ``missing_fix``: the fix when the
    program is not there or fails (installing Nix, unless the line names the program)."""
    if returncode == 0:
        match = _VERSION.search(stdout)
        version = (match.group(1) or match.group(2)) if match else stdout.strip()[:40]
        return Check("nix", Verdict.OK, f"Nix {version}")
    if (unreachable := _daemon_unreachable("nix", stderr, user)) is not None:
        return unreachable
    lines = stderr.strip().splitlines()
    last = (lines or [f"exit code {returncode}"])[-1]
    if returncode == 127 or missing(last):
        detail = not_on_path(program, last)
        return Check("nix", Verdict.FAIL, detail, missing_fix)
    if (said := last_nix_error(lines)) is not None:  # it ran: its settings stopped it
        detail = nix_stopped(f"`{program} --version`", said)
        return Check("nix", Verdict.FAIL, detail, mend_settings())
    return Check("nix", Verdict.FAIL, f"`{program} --version` failed: {last}", missing_fix)


def serve_check(
    version: int | None,
    pid: int | None,
    error: str | None,
    *,
    restricted: bool = False,
    daemon: str | None = None,
    user: str | None = None,
    missing_fix: str = _NIX_FIX,
) -> Check:
    """The session's handshake (of the serve program, or of ``daemon``, the program an
    ssh-ng:// builder runs, as ``user``): its protocol version and the remote pid, or an
    error, whose fix is ``missing_fix`` unless a daemon could not be reached."""
    program = daemon or _SERVE
    if error is not None and (unreachable := _daemon_unreachable("serve", error, user)):
        return unreachable
    if error is not None or version is None:
        return Check(
            "serve",
            Verdict.FAIL,
            f"{program} did not start: {error or 'no handshake'}",
            missing_fix,
        )
    where = f", remote pid {pid}" if pid is not None else ""
    if restricted:
        where = f", {_restricted(program)}: builds there are stopped by closing their session"
    what = "daemon protocol" if daemon else "protocol"
    return Check("serve", Verdict.OK, f"{what} {version >> 8}.{version & 0xFF}{where}")


def _restricted(program: str) -> str:
    return RESTRICTED if program == _SERVE else f"the builder's key runs only {program}"


def restricted_checks(slots: int, daemon: str | None = None) -> list[Check]:
    """What only a command of our own could learn, on a builder whose key runs only the serve
    program (or the daemon): ``unknown``, all with one detail (the report says it once), which
    also says what offload does without the load. The session itself answers ``serve`` and
    ``rtt``."""
    detail = (
        f"cannot be asked: {_restricted(daemon or _SERVE)} (a forced command); "
        f"offload uses all {slots} of its slots, not knowing its load"
    )
    names = ("nix", "systems", "features", "trusted", "disk", "load", "throughput", "cipher")
    return [Check(name, Verdict.UNKNOWN, detail) for name in names]


def _value(raw: object) -> str:
    # `nix show-config --json` gives {"name": {"value": ...}} (2.4+) or {"name": value}; lists
    # and sets are JSON arrays, the text form separates them with spaces.
    if isinstance(raw, dict):
        raw = raw.get("value", "")
    if isinstance(raw, list):
        return " ".join(str(item) for item in raw)
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return "" if raw is None else str(raw)


def parse_nix_config(text: str) -> dict[str, str]:
    """Settings from ``nix show-config`` output, JSON or text; empty when it is neither."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return {str(name): _value(raw) for name, raw in data.items()}
    settings: dict[str, str] = {}
    for line in text.splitlines():
        name, eq, value = line.partition(" = ")
        if eq and name.strip() and " " not in name.strip():
            settings[name.strip()] = value.strip()
    return settings


def words(config: NixConfig, name: str) -> set[str]:
    return set(config.get(name, "").split())


def cannot_tell(name: str, error: str) -> Check:
    return Check(
        name,
        Verdict.WARN,
        f"cannot tell: `nix show-config` on the builder failed: {error}",
        "install a Nix with the `nix` command on the builder to have this checked",
    )


# Run on the builder: NIX_REMOTE, then how Nix's `auto` store would open it for this user (its
# state directory writable: itself; else a daemon socket there: through the nix-daemon).
ROUTE_PROBE = (
    'printf "%s\\n" "${NIX_REMOTE:-auto}"; '
    "if [ -r /nix/var/nix ] && [ -w /nix/var/nix ]; then echo local; "
    "elif [ -S /nix/var/nix/daemon-socket/socket ]; then echo daemon; else echo local; fi"
)


def store_route(config: NixConfig | None, probe: str, named: str | None = None) -> str | None:
    """How Nix on the builder reaches its store for this user: ``daemon`` (a nix-daemon, which
    asks for trust), ``local`` (it writes the store itself) or None (cannot be told); from the
    store the machines line ``named`` (``remote-store``, which offload passes as ``--store``),
    else the ``store`` setting (NIX_REMOTE when set), and for ``auto`` what ``ROUTE_PROBE``
    printed."""
    said = probe.split()
    store = named or (config.get("store", "auto") if config else (said[0] if said else ""))
    if store == "daemon" or store.startswith("unix://"):
        return "daemon"
    if store == "local" or store.startswith(("/", "local?")):
        return "local"
    if store == "auto" and len(said) == 2 and said[1] in {"local", "daemon"}:
        return said[1]
    return None


def trusted_check(
    user: str,
    groups: Collection[str],
    config: NixConfig | None,
    error: str,
    route: str | None = None,
) -> Check:
    """May ``user`` build derivations sent over the wire and import unsigned paths (what
    offload sends)? Only a nix-daemon asks (``route``, ``store_route``): there it must."""
    if route == "local":
        return Check("trusted", Verdict.OK, f"{user} writes the store itself: no daemon asks")
    listed = listed_trusted(user, groups, config)
    if listed is None:
        return cannot_tell("trusted", error)
    if (user == "root" and route is None) or listed:
        return Check("trusted", Verdict.OK, f"{user} is a trusted user")
    through = "the builder's nix-daemon" if route == "daemon" else "a nix-daemon there"
    return Check(
        "trusted",
        Verdict.FAIL if route == "daemon" else Verdict.WARN,
        f"{user} is not in trusted-users: {through} refuses the derivations and unsigned "
        "inputs offload sends",
        f"add {user} to trusted-users in the builder's nix.conf "
        "(NixOS: nix.settings.trusted-users) and restart its nix-daemon",
    )


def listed_trusted(user: str, groups: Collection[str], config: NixConfig | None) -> bool | None:
    """Does the builder's nix.conf, as its nix-daemon reads it, list ``user`` (or one of its
    ``groups``, or everyone) in ``trusted-users``? None when it cannot be read. The running
    nix-daemon read it when it started, and may not have since (``trust.probed_trust_check``)."""
    if not config or "trusted-users" not in config:
        return None
    return bool({user, "*", *(f"@{group}" for group in groups)} & words(config, "trusted-users"))


def daemon_trust(trusted: bool | None, check: Check) -> Check:
    """The ``trusted`` row of an ssh-ng:// builder: the daemon's own word when it gives it
    (Nix 2.15 and later), else ``check`` (read from nix.conf, or unknown) saying it could not."""
    if check.name != "trusted":
        return check
    if trusted is True:
        return Check("trusted", Verdict.OK, "the nix-daemon reports this user trusted")
    if trusted is False:
        return Check(
            "trusted",
            Verdict.FAIL,
            "the nix-daemon reports this user not trusted: it refuses to build the "
            "input-addressed derivations offload sends",
            "add the user to trusted-users in the builder's nix.conf "
            "(NixOS: nix.settings.trusted-users) and restart its nix-daemon",
        )
    note = "its nix-daemon does not report trust (Nix before 2.15)"
    return dataclasses.replace(check, detail=f"{check.detail}; {note}")


def disk_check(returncode: int, stdout: str, stderr: str) -> Check:
    """``df -Pk /nix/store``: the second line's fourth field is the free KiB."""
    lines = stdout.strip().splitlines()
    fields = lines[-1].split() if len(lines) >= 2 else []
    if returncode != 0 or len(fields) < 4 or not is_decimal(fields[3]):
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        return Check("disk", Verdict.WARN, f"cannot tell: `df -Pk /nix/store` said {last}")
    free = int(fields[3]) / _KIB_PER_GIB
    detail = f"{free:.1f} GiB free on /nix/store"
    fix = "collect garbage on the builder (nix-collect-garbage), or set min-free/max-free there"
    if free < _DISK_FAIL_GIB:
        return Check("disk", Verdict.FAIL, detail, fix)
    if free < _DISK_WARN_GIB:
        return Check("disk", Verdict.WARN, detail, fix)
    return Check("disk", Verdict.OK, detail)


def load_check(load: RemoteLoad | None, slots: int, local_boot_id: str | None) -> Check:
    """The load the serve session's start line reported, and what offload makes of it."""
    if load is None:
        return Check("load", Verdict.OK, "not reported (no /proc on the builder)")
    detail = load.describe()
    if load.boot_id is not None and load.boot_id == local_boot_id:
        return Check("load", Verdict.OK, f"{detail} (this host's kernel: not counted)")
    given = effective_slots(slots, load, local_boot_id)
    if given < slots:
        return Check(
            "load",
            Verdict.WARN,
            f"{detail}: other work keeps it busy, offload uses {given} of its {slots} slots",
            "nothing to fix here if the builder is shared; lower its max-jobs otherwise",
        )
    return Check("load", Verdict.OK, detail)


def throughput_check(size: int, received: int, seconds: float, compressed: bool) -> Check:
    """``size`` bytes of zeros asked of the builder over the open connection: the rate outputs
    come home at. ``received`` short of ``size`` means the transfer broke off."""
    if received != size or seconds <= 0:
        return Check("throughput", Verdict.WARN, f"not measured: got {received} of {size} bytes")
    rate = size / seconds
    detail = f"{rate / 1e6:.0f} MB/s from the builder ({size >> 20} MiB in {seconds:.2f} s)"
    if compressed:
        detail += "; compressed (ssh -C), so real data is slower"
    if rate < _THROUGHPUT_WARN:
        return Check(
            "throughput",
            Verdict.WARN,
            detail,
            f"a slow link: 1 GB of outputs takes {1e9 / rate:.0f} s to come home (and"
            " inputs as long to go: builders-use-substitutes lets the builder fetch those it"
            " can from caches itself; compress=true in its URI helps text-heavy paths)",
        )
    return Check("throughput", Verdict.OK, detail)


# The first processor's flags (x86) or features (ARM): ``cipher_check``.
CPU_PROBE = "grep -m1 -E '^(flags|Features)[[:space:]]*:' /proc/cpuinfo"


def cipher_check(offered: str | None, code: int, cpu: str) -> Check:
    """The cipher its master offers first (``offload.transport.ciphers``: AES-GCM where its
    systems and this host say both ends have AES) against the builder's CPU, as ``CPU_PROBE``
    read it (``code``, ``cpu``): AES-GCM without AES instructions (a VM's ``kvm64`` CPU model)
    is slower than ssh's own chacha20."""
    if not offered:
        return Check("cipher", Verdict.OK, "ssh's own order (offload offers none of its own)")
    first = offered.split(",")[0]
    if code != 0 or not cpu.strip():
        return Check("cipher", Verdict.OK, f"{first} offered first; its CPU not asked")
    if cpu_has_aes(cpu):
        return Check("cipher", Verdict.OK, f"{first} offered first: both ends have AES")
    return Check(
        "cipher",
        Verdict.WARN,
        f"{first} offered first (its systems are x86-64 or a Mac's), but its CPU has no AES"
        " instructions: chacha20 moves bytes faster there",
        "set `Ciphers chacha20-poly1305@openssh.com` for it in the ssh config (its Host"
        " entry), or `-c chacha20-poly1305@openssh.com` in NIX_SSHOPTS: offload keeps yours",
    )


def rtt_check(seconds: Sequence[float]) -> Check:
    """Round trips of ``true`` over the open connection (the best of them)."""
    if not seconds:
        return Check("rtt", Verdict.WARN, "not measured")
    best = min(seconds)
    detail = f"{best * 1000:.0f} ms per command over the open connection"
    if best > _RTT_WARN:
        return Check(
            "rtt",
            Verdict.WARN,
            detail,
            "a slow link: many small builds there cost more than building them locally",
        )
    return Check("rtt", Verdict.OK, detail)
