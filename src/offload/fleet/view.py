"""The fleet as its users see it: the members started, where their stores are, and how to
reach them over ssh (``NIX_SSHOPTS``, the machines file)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from offload.errors import FleetError
from offload.fleet.spec import CLIENT_KEY, MemberSpec, member_uri
from offload.process import run

__all__ = ["Fleet", "Member", "MemberStatus"]


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

    @property
    def uri(self) -> str:
        """Its store URI in the fleet's machines file, which its slot locks are named after."""
        return member_uri(self.spec, self.root.parent / CLIENT_KEY)


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
