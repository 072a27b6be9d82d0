"""Bringing the local fleet up and down, and looking at it.

``fleet_up`` starts one sshd per member (see ``spec`` for the layout), waits until each one
really answers over ssh with the pinned host key, and records what it started in ``fleet.json``.
``fleet_down`` needs nothing but that directory: it stops each recorded sshd (only if the pid
still has the recorded start time), then every process left in the member's mount namespace
(per-connection sshd children run in their own sessions, and ``nix-store --serve`` under them).
Nothing is unmounted: a namespace and its bind mounts disappear with its last process.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from offload.errors import FleetError, OffloadError
from offload.fleet.spec import (
    CLIENT_KEY,
    MEMBER_AUTHORIZED_KEYS,
    MEMBER_SPEED_FILE,
    FleetState,
    MemberRecord,
    MemberSpec,
    check_host,
    home_to_replace,
    known_hosts_line,
    machines_line,
    member_argv,
    nix_conf,
    parse_proc_stat,
    proc_override_file,
    speed_text,
    ssh_config,
    sshd_config,
    validate_specs,
)
from offload.process import run, start_detached, stop_process_group

__all__ = [
    "Fleet",
    "Member",
    "MemberStatus",
    "fleet_down",
    "fleet_status",
    "fleet_up",
    "open_fleet",
]

STATE_FILE = "fleet.json"
_READY_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Member:
    """A started member. Its store is ``root / "nix" / "store"`` on the host."""

    spec: MemberSpec
    port: int
    pid: int
    root: Path
    start_time: int = 0
    mnt_ns: str = ""

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class MemberStatus:
    member: Member
    running: bool

    def as_dict(self) -> dict[str, object]:
        spec = self.member.spec
        return {
            "name": spec.name,
            "port": self.member.port,
            "speed": spec.speed,
            "jobs": spec.jobs,
            "pid": self.member.pid,
            "running": self.running,
        }


@dataclass(frozen=True)
class Fleet:
    dir: Path
    members: tuple[Member, ...]
    system: str

    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    @property
    def machines_file(self) -> Path:
        return self.dir / "machines"

    @property
    def client_key(self) -> Path:
        return self.dir / CLIENT_KEY

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def sshopts(self) -> str:
        return f"-F {self.ssh_config}"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with NIX_SSHOPTS pointing at the fleet."""
        merged = dict(os.environ if base is None else base)
        merged["NIX_SSHOPTS"] = self.sshopts
        return merged

    def member(self, name: str) -> Member:
        for member in self.members:
            if member.name == name:
                return member
        raise FleetError(f"no fleet member named {name!r} in {self.dir}")

    def ssh_argv(self, name: str, *remote: str) -> list[str]:
        # ssh joins the remote words with spaces for the remote shell: quote each one.
        self.member(name)
        return ["ssh", "-F", str(self.ssh_config), name, "--", *(shlex.quote(r) for r in remote)]

    def store_has(self, name: str, path: str) -> bool:
        """Is ``path`` a valid path in member ``name``'s own store?"""
        done = run(self.ssh_argv(name, "nix-store", "--check-validity", path), check=False)
        if done.returncode == 255:
            raise FleetError(f"cannot reach fleet member {name}: {done.stderr.strip()}")
        return done.returncode == 0


def fleet_up(
    dir: Path,  # noqa: A002 - mirrors --dir
    specs: Sequence[MemberSpec],
    *,
    euid: int | None = None,
    platform: str | None = None,
) -> Fleet:
    """Start (or keep) the members ``specs`` in ``dir``; idempotent for an unchanged fleet.

    A running member with a different spec, or a running member not asked for, is an error:
    bring the fleet down first. Dead members are started again.
    """
    check_host(
        os.geteuid() if euid is None else euid, sys.platform if platform is None else platform
    )
    specs = validate_specs(specs)
    fleet_dir = dir.absolute()
    previous = _load_state(fleet_dir)
    wanted = {s.name: s for s in specs}
    kept: dict[str, MemberRecord] = {}
    dead: list[MemberRecord] = []
    for record in previous.members if previous else ():
        if not _is_ours(record.pid, record.start_time):
            dead.append(record)
            continue
        if wanted.get(record.spec.name) != record.spec:
            asked = wanted.get(record.spec.name)
            raise FleetError(
                f"fleet member {record.spec.text} is running in {fleet_dir}, "
                + (f"asked for {asked.text}" if asked else "but was not asked for"),
                hint=f"run `offload fleet down --dir {fleet_dir}` first",
            )
        kept[record.spec.name] = record
    _prepare_dir(fleet_dir)
    for record in dead:
        # Its sshd is gone, but sessions may linger in its namespace holding the store.
        _stop_member(fleet_dir, record)
    system = previous.system if previous else _current_system()
    records: dict[str, MemberRecord] = dict(kept)
    started: list[MemberRecord] = []
    try:
        for spec in specs:
            if spec.name in kept:
                continue
            record = _start_member(fleet_dir, spec)
            started.append(record)
            records[spec.name] = record
            _write_state(fleet_dir, FleetState(system, _ordered(records, specs)))
        _write_client_files(fleet_dir, system, specs, records)
        # One ssh round trip per new member, concurrently: each costs a key exchange.
        with ThreadPoolExecutor(max_workers=max(1, len(started))) as pool:
            for future in [pool.submit(_check_ssh, fleet_dir, r) for r in started]:
                future.result()
    except BaseException:
        for record in started:
            _stop_member(fleet_dir, record)
        _write_state(fleet_dir, FleetState(system, tuple(kept.values())))
        raise
    return _fleet(fleet_dir, FleetState(system, _ordered(records, specs)))


def fleet_down(dir: Path, purge: bool = False) -> None:  # noqa: A002
    """Stop every member recorded in ``dir``; with ``purge``, remove the directory too."""
    fleet_dir = dir.absolute()
    state = _load_state(fleet_dir)
    errors: list[str] = []
    for record in state.members if state else ():
        try:
            _stop_member(fleet_dir, record)
        except FleetError as exc:
            errors.append(exc.message)
    if errors:
        raise FleetError("; ".join(errors), hint="stop the listed processes by hand")
    if purge and fleet_dir.exists():
        if state is None and any(fleet_dir.iterdir()) and not (fleet_dir / CLIENT_KEY).exists():
            raise FleetError(
                f"{fleet_dir} does not look like a fleet directory; not removing it",
                hint="remove it by hand if it is really yours",
            )
        shutil.rmtree(fleet_dir)


def fleet_status(dir: Path) -> tuple[MemberStatus, ...]:  # noqa: A002
    fleet_dir = dir.absolute()
    state = _load_state(fleet_dir)
    if state is None:
        return ()
    return tuple(
        MemberStatus(_member(fleet_dir, r), _is_ours(r.pid, r.start_time)) for r in state.members
    )


def open_fleet(dir: Path) -> Fleet:  # noqa: A002
    """The fleet recorded in ``dir``, as started by ``fleet_up`` (possibly in another process)."""
    fleet_dir = dir.absolute()
    state = _load_state(fleet_dir)
    if state is None or not state.members:
        raise FleetError(
            f"no fleet in {fleet_dir}", hint=f"run `offload fleet up --dir {fleet_dir}`"
        )
    return _fleet(fleet_dir, state)


# --- state -----------------------------------------------------------------------------------


def _load_state(fleet_dir: Path) -> FleetState | None:
    path = fleet_dir / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FleetError(f"cannot read {path}: {exc.strerror}") from exc
    return FleetState.from_json(text, origin=str(path))


def _write_state(fleet_dir: Path, state: FleetState) -> None:
    _write_private(fleet_dir / STATE_FILE, state.to_json())


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write atomically (temp file + rename) with ``mode`` from the start."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.chmod(mode)
    tmp.replace(path)


def _ordered(
    records: Mapping[str, MemberRecord], specs: Sequence[MemberSpec]
) -> tuple[MemberRecord, ...]:
    return tuple(records[s.name] for s in specs if s.name in records)


def _member(fleet_dir: Path, record: MemberRecord) -> Member:
    return Member(
        record.spec,
        record.port,
        record.pid,
        fleet_dir / record.spec.name,
        record.start_time,
        record.mnt_ns,
    )


def _fleet(fleet_dir: Path, state: FleetState) -> Fleet:
    return Fleet(fleet_dir, tuple(_member(fleet_dir, r) for r in state.members), state.system)


# --- processes -------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    try:
        return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def _is_ours(pid: int, start_time: int) -> bool:
    """Is ``pid`` alive and still the process we started (not a recycled pid, not a zombie)?"""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in {"Z", "X"} and stat[1] == start_time


def _mnt_ns(pid: int) -> str | None:
    try:
        return str(Path(f"/proc/{pid}/ns/mnt").readlink())
    except OSError:
        return None


def _namespace_pids(record: MemberRecord, root: Path) -> list[int]:
    """Live processes that see the member's own directory at /nix, other than this one.

    That is the member's sshd and everything below it, including nix-store, which runs in a
    mount namespace of its own (Nix 2.8 unshares one to remount the store) and so does not
    share the member's namespace id. No other process can see that directory at /nix.
    """
    if not record.mnt_ns or record.mnt_ns == _mnt_ns(os.getpid()):
        return []
    try:
        want = (root / "nix").stat()
    except OSError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "root" / "nix").stat()
        except OSError:
            continue
        if (seen.st_dev, seen.st_ino) == (want.st_dev, want.st_ino):
            pids.append(int(entry.name))
    return pids


def _stop_member(fleet_dir: Path, record: MemberRecord) -> None:
    root = fleet_dir / record.spec.name
    stat = _proc_stat(record.pid)
    # A zombie with our start time is our own dead child: stopping it reaps it.
    if stat is not None and stat[1] == record.start_time:
        stop_process_group(record.pid, grace=_STOP_TIMEOUT / 2)
    deadline = time.monotonic() + _STOP_TIMEOUT
    sig = signal.SIGTERM
    while pids := _namespace_pids(record, root):
        if time.monotonic() > deadline:
            raise FleetError(
                f"processes {', '.join(map(str, pids))} of fleet member {record.spec.name} "
                "did not stop"
            )
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        # Give SIGTERM a moment, then insist.
        time.sleep(0.05)
        sig = signal.SIGKILL


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 10) -> str:
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return " | ".join(tail) or "(empty log)"


def _start_member(fleet_dir: Path, spec: MemberSpec) -> MemberRecord:
    root = fleet_dir / spec.name
    _prepare_member(fleet_dir, root, spec)
    last_error: FleetError | None = None
    # A free port can be taken between our probe and sshd's bind: try a few.
    for _ in range(3):
        port = _free_port()
        config = root / "sshd_config"
        _write_private(config, sshd_config(root, port))
        log = root / "sshd.log"
        log.write_text("")
        argv = member_argv(root, config, spec.proc_overrides, home=_login_home(fleet_dir))
        pid = start_detached(argv, log=log)
        stat = _proc_stat(pid)
        record = MemberRecord(spec, port, pid, stat[1] if stat else 0, "")
        try:
            _wait_listening(record, log)
        except FleetError as exc:
            _stop_member(fleet_dir, record)
            last_error = exc
            if "Address already in use" in _log_tail(log):
                continue
            raise
        except BaseException:
            _stop_member(fleet_dir, record)
            raise
        ns = _mnt_ns(pid)
        if ns is None or ns == _mnt_ns(os.getpid()):
            _stop_member(fleet_dir, record)
            raise FleetError(f"fleet member {spec.name} is not in its own mount namespace")
        return MemberRecord(spec, port, pid, record.start_time, ns)
    assert last_error is not None
    raise last_error


def _wait_listening(record: MemberRecord, log: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    name = record.spec.name
    while True:
        if not _is_ours(record.pid, record.start_time):
            raise FleetError(
                f"sshd of fleet member {name} exited: {_log_tail(log)}",
                hint=f"see {log}",
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            try:
                sock.connect(("127.0.0.1", record.port))
            except OSError:
                pass
            else:
                return
        if time.monotonic() > deadline:
            raise FleetError(
                f"sshd of fleet member {name} does not listen on port {record.port}: "
                f"{_log_tail(log)}",
                hint=f"see {log}",
            )
        time.sleep(0.02)


def _check_ssh(fleet_dir: Path, record: MemberRecord) -> None:
    """Prove auth and the pinned host key work, the member sees its own /etc/nix, and has Nix."""
    name = record.spec.name
    remote = f"cat {MEMBER_SPEED_FILE} && nix-store --version"
    argv = ["ssh", "-F", str(fleet_dir / "ssh_config"), name, "--", remote]
    try:
        done = run(argv, check=False, timeout=_READY_TIMEOUT)
    except OffloadError as exc:
        done_err = exc.message
    else:
        lines = done.stdout.splitlines()
        if (
            done.returncode == 0
            and lines[:1] == [speed_text(record.spec.speed)]
            and "Nix" in done.stdout
        ):
            return
        done_err = done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}"
    log = fleet_dir / name / "sshd.log"
    raise FleetError(
        f"fleet member {name} does not answer over ssh ({done_err}); sshd log: {_log_tail(log)}",
        hint=f"try `{shlex.join(argv)}`",
    )


# --- files -----------------------------------------------------------------------------------


def _prepare_dir(fleet_dir: Path) -> None:
    fleet_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fleet_dir.chmod(0o700)
    # Mount points and sshd's privilege-separation directory must exist on the host.
    for needed, mode in (
        (Path("/nix"), 0o755),
        (Path("/etc/nix"), 0o755),
        (Path("/run/sshd"), 0o755),
    ):
        if not needed.is_dir():
            needed.mkdir(mode=mode, parents=True)
    key = fleet_dir / CLIENT_KEY
    if not key.exists():
        _keygen(key, "offload-fleet-client")


def _keygen(path: Path, comment: str) -> None:
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    path.chmod(0o600)


def _prepare_member(fleet_dir: Path, root: Path, spec: MemberSpec) -> None:
    # sshd's StrictModes wants the authorized keys and every directory above them (inside the
    # member: /etc/nix, /etc, /) owned by root and not group/world-writable.
    root.mkdir(mode=0o700, exist_ok=True)
    root.chmod(0o700)
    for sub in (root / "nix", root / "etc-nix"):
        sub.mkdir(mode=0o755, exist_ok=True)
        # The member's /nix and /etc/nix, readable as on any Nix machine.
        sub.chmod(0o755)
    (root / "home").mkdir(mode=0o700, exist_ok=True)
    etc = root / "etc-nix"
    _write_private(etc / "nix.conf", nix_conf(spec), 0o644)
    _write_private(etc / "offload-speed", f"{speed_text(spec.speed)}\n", 0o644)
    client_pub = (fleet_dir / f"{CLIENT_KEY}.pub").read_text()
    _write_private(etc / Path(MEMBER_AUTHORIZED_KEYS).name, client_pub, 0o600)
    if spec.proc_overrides:
        (root / "proc").mkdir(mode=0o755, exist_ok=True)
    for index, (_, text) in enumerate(spec.proc_overrides):
        _write_private(proc_override_file(root, index), text, 0o644)
    host_key = root / "ssh_host_ed25519_key"
    if not host_key.exists() or not host_key.with_name(host_key.name + ".pub").exists():
        _keygen(host_key, f"offload-fleet-{spec.name}")


def _login_home(fleet_dir: Path) -> Path | None:
    """The home directory to give members a clean one over (``spec.home_to_replace``)."""
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    return home_to_replace(home.resolve(), fleet_dir.resolve()) if home.is_dir() else None


def _host_pub(fleet_dir: Path, name: str) -> str:
    return (fleet_dir / name / "ssh_host_ed25519_key.pub").read_text()


def _write_client_files(
    fleet_dir: Path,
    system: str,
    specs: Sequence[MemberSpec],
    records: Mapping[str, MemberRecord],
) -> None:
    ports = {s.name: records[s.name].port for s in specs}
    _write_private(fleet_dir / "ssh_config", ssh_config(fleet_dir, ports))
    _write_private(
        fleet_dir / "known_hosts",
        "".join(known_hosts_line(s.name, _host_pub(fleet_dir, s.name)) for s in specs),
    )
    _write_private(
        fleet_dir / "machines",
        "".join(
            machines_line(s, system, fleet_dir / CLIENT_KEY, _host_pub(fleet_dir, s.name))
            for s in specs
        ),
        0o644,
    )


def _current_system() -> str:
    done = run(["nix-instantiate", "--eval", "-E", "builtins.currentSystem"], timeout=60)
    system = done.stdout.strip().strip('"')
    if not system:
        raise FleetError("cannot tell the local Nix system from `nix-instantiate`")
    return system
