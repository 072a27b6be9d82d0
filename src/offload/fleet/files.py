"""The fleet directory's files: the client key, each member's own ``/nix``, ``/etc/nix``,
host key and ``/proc`` overrides, and the client's ``ssh_config``, ``known_hosts`` and machines
file (their text comes from ``spec``). Every file is written atomically with its final mode."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from offload.errors import FleetError
from offload.fleet.records import MemberRecord
from offload.fleet.spec import (
    CLIENT_KEY,
    MEMBER_AUTHORIZED_KEYS,
    MemberSpec,
    authorized_keys,
    home_to_replace,
    known_hosts_line,
    machines_line,
    nix_conf,
    proc_override_file,
    speed_text,
    ssh_config,
)
from offload.process import run

__all__ = [
    "check_owned",
    "login_home",
    "prepare_dir",
    "prepare_member",
    "write_client_files",
    "write_private",
]


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write atomically (temp file + rename) with ``mode`` from the start."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.chmod(mode)
    tmp.replace(path)


def check_owned(fleet_dir: Path) -> None:
    """Refuse a fleet directory (or a symbolic link to one) that is not this user's: whoever
    owns it could change the ssh_config that ssh reads as root (a ProxyCommand), or the state
    whose process ids `fleet down` stops. Nothing to check where there is none yet."""
    for path, info in _infos(fleet_dir):
        if info.st_uid != os.geteuid():
            raise FleetError(
                f"fleet directory {path} belongs to uid {info.st_uid}, not to this user:"
                " its owner could change what the fleet runs",
                hint="name a directory of your own with --dir (a new one is made 0700)",
            )


def _infos(path: Path) -> list[tuple[Path, os.stat_result]]:
    """The path itself and, through a symbolic link, what it names; none where it is not."""
    try:
        found = [(path, path.lstat())]
        if path.is_symlink():
            found.append((path.resolve(), path.stat()))
    except OSError:
        return []
    return found


def prepare_dir(fleet_dir: Path) -> None:
    # Made and told to be this user's by the fleet's lock (``manager._locked``).
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
    if not _whole_pair(key):
        _keygen(key, "offload-fleet-client")


def _whole_pair(key: Path) -> bool:
    """A key and its public half, neither empty: one ssh-keygen cut short (a full disk, a
    Ctrl-C between the two files) left is made again, not taken."""
    try:
        return key.stat().st_size > 0 and _public(key).stat().st_size > 0
    except OSError:
        return False


def _public(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


def _keygen(path: Path, comment: str) -> None:
    """A new pair at ``path``, made beside it and moved in whole: the public half first, so
    a private key is there only with its public half."""
    made = Path(tempfile.mkdtemp(prefix=".keygen-", dir=path.parent))
    try:
        new = made / "key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(new)])
        new.chmod(0o600)
        path.unlink(missing_ok=True)
        _public(new).replace(_public(path))
        new.replace(path)
    finally:
        shutil.rmtree(made, ignore_errors=True)


def prepare_member(fleet_dir: Path, root: Path, spec: MemberSpec) -> None:
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
    write_private(etc / "nix.conf", nix_conf(spec), 0o644)
    write_private(etc / "offload-speed", f"{speed_text(spec.speed)}\n", 0o644)
    client_pub = (fleet_dir / f"{CLIENT_KEY}.pub").read_text()
    keys = authorized_keys(spec, client_pub)
    write_private(etc / Path(MEMBER_AUTHORIZED_KEYS).name, keys, 0o600)
    if spec.proc_overrides:
        (root / "proc").mkdir(mode=0o755, exist_ok=True)
    for index, (_, text) in enumerate(spec.proc_overrides):
        write_private(proc_override_file(root, index), text, 0o644)
    host_key = root / "ssh_host_ed25519_key"
    if not _whole_pair(host_key):
        _keygen(host_key, f"offload-fleet-{spec.name}")


def login_home(fleet_dir: Path) -> Path | None:
    """The home directory to give members a clean one over (``spec.home_to_replace``)."""
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    return home_to_replace(home.resolve(), fleet_dir.resolve()) if home.is_dir() else None


def _host_pub(fleet_dir: Path, name: str) -> str:
    return (fleet_dir / name / "ssh_host_ed25519_key.pub").read_text()


def write_client_files(
    fleet_dir: Path,
    system: str,
    specs: Sequence[MemberSpec],
    records: Mapping[str, MemberRecord],
) -> None:
    ports = {s.name: records[s.name].port for s in specs}
    write_private(fleet_dir / "ssh_config", ssh_config(fleet_dir, ports))
    write_private(
        fleet_dir / "known_hosts",
        "".join(known_hosts_line(s.name, _host_pub(fleet_dir, s.name)) for s in specs),
    )
    write_private(
        fleet_dir / "machines",
        "".join(
            machines_line(s, system, fleet_dir / CLIENT_KEY, _host_pub(fleet_dir, s.name))
            for s in specs
        ),
        0o644,
    )
