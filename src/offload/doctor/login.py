"""The doctor's probes from the outside in, up to the login: ``LoginProbe``.

``ssh -G`` says which host and port ssh would really use (the user's or ``NIX_SSHOPTS``'s ssh
config decides, as for Nix), ``getaddrinfo`` resolves it, a bare TCP connect reads sshd's
greeting, and ``ssh ... true`` logs in (its own connection, so its stderr is ssh's alone; the
pinned host key as for builds). Each is bounded: connecting by ``timeout`` (the TCP connect
and the greeting together, ssh's ``ConnectTimeout``), the login by the timeout plus
``SLACK`` for the authentication. A login whose forced program said "protocol mismatch" to
the scheme's hello is tried once more with the other scheme's, so the row can say which
program the key runs (``dialect.mismatch_fix``). The other verdicts are ``doctor.reach``'s;
``doctor.run`` goes on from a login that worked.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from offload.config.machines import Machine
from offload.doctor.model import Check, Verdict
from offload.doctor.reach import (
    SshConfig,
    no_shell,
    noisy_shell_check,
    parse_ssh_g,
    port_check,
    resolve_check,
    roots_key,
    ssh_check,
)
from offload.errors import NotStarted, OffloadError
from offload.process import Completed, run_async, run_greeted
from offload.transport.dialect import (
    DAEMON,
    Dialect,
    dialect_of,
    mismatch_fix,
    mismatched,
    other_dialect,
)
from offload.transport.host_key_alias import alias_fix, looked_up_elsewhere
from offload.transport.ssh import (
    known_hosts_line,
    remote_command,
    split_sshopts,
    ssh_argv,
    ssh_target,
)
from offload.transport.ssh_keys import has_passphrase, key_place
from offload.transport.ssh_options import option_refused
from offload.transport.sshopts_check import SSHOPTS_FIX, sshopts_refused

__all__ = ["DEFAULT_TIMEOUT", "SLACK", "DoctorOptions", "LoginProbe"]

DEFAULT_TIMEOUT = 5.0
# Authentication and a remote command may take a while after the TCP connect.
SLACK = 10.0
# ssh's exit status for its own errors (anything else is the remote command's).
_SSH_FAILED = 255
_T = TypeVar("_T")


@dataclass(frozen=True)
class DoctorOptions:
    timeout: float = DEFAULT_TIMEOUT
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


class LoginProbe:
    """One machine's probes up to the login; ``doctor.run`` adds the ones after it."""

    def __init__(self, machine: Machine, options: DoctorOptions) -> None:
        self.machine = machine
        self.target = ssh_target(machine)
        self.options = options
        self.timeout = options.timeout
        self.sshopts = options.env.get("NIX_SSHOPTS", "")
        self.user = self.target.user or "?"
        self.dialect = dialect_of(machine)
        # The program an ssh-ng:// builder runs, as the rows name it; None for serve.
        self.daemon = self.dialect.describe(machine.params) if self.dialect is DAEMON else None

    @property
    def known_user(self) -> str | None:
        """The user ssh logs in as, for fixes that name it; None when not known."""
        return None if self.user == "?" else self.user

    async def _bounded(self, awaitable: Awaitable[_T], limit: float) -> _T:
        return await asyncio.wait_for(awaitable, limit)

    async def _ssh_config(self) -> SshConfig:
        port = ["-p", str(self.target.port)] if self.target.port is not None else []
        argv = ["ssh", "-G", *split_sshopts(self.sshopts), *port, "--", self.target.destination]
        host, port_or_22 = self.target.host, self.target.port or 22
        try:
            done = await self._bounded(
                run_async(argv, env=self.options.env, check=False), self.timeout
            )
        except NotStarted as exc:  # no ssh here: no host name is at fault
            said = f"ssh could not be run here: {exc.message}"
            return SshConfig(host, port_or_22, refused=said, refused_fix=exc.hint)
        except (TimeoutError, OffloadError):
            return SshConfig(host, port_or_22)
        if done.returncode != 0 and (refused := option_refused(done.stderr)) is not None:
            said = f"ssh refused an option of NIX_SSHOPTS ({refused})"
            return SshConfig(host, port_or_22, refused=said, refused_fix=SSHOPTS_FIX)
        if done.returncode != 0 and (whole := await sshopts_refused(self.options.env)):
            return SshConfig(host, port_or_22, refused=whole, refused_fix=SSHOPTS_FIX)
        text = done.stdout if done.returncode == 0 else ""
        return parse_ssh_g(text, self.target.host, self.target.port)

    async def _resolve(self, config: SshConfig) -> tuple[Check, list[str]]:
        def verdict(addresses: list[str], error: str | None) -> Check:
            return resolve_check(config, addresses, error, self.target.host, self.machine.source)

        if config.proxy is not None or config.refused is not None:
            return verdict([], None), []
        loop = asyncio.get_running_loop()
        lookup = loop.getaddrinfo(config.hostname, config.port, type=socket.SOCK_STREAM)
        try:
            infos = await self._bounded(lookup, self.timeout)
        except TimeoutError:
            return verdict([], "no answer"), []
        except OSError as exc:
            return verdict([], exc.strerror or str(exc)), []
        except UnicodeError:  # bytes that were not UTF-8, or a label IDNA refuses
            return verdict([], "not a host name DNS can look up"), []
        addresses = [str(info[4][0]) for info in infos]
        return verdict(addresses, None), addresses

    async def _port(self, config: SshConfig, addresses: list[str]) -> Check:
        if config.proxy is not None or not addresses:
            where = f"{config.hostname}:{config.port}"
            return port_check(
                where,
                error=None,
                banner="",
                timeout=0,
                proxy=config.proxy,
                line=self.machine.source,
            )
        address = addresses[0]
        where = f"[{address}]:{config.port}" if ":" in address else f"{address}:{config.port}"
        connected = False

        async def greeting() -> str:
            nonlocal connected
            reader, writer = await asyncio.open_connection(address, config.port)
            connected = True
            try:
                return (await reader.readline()).decode(errors="replace").strip()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        error: str | None = None
        banner: str | None = None
        try:
            banner = await self._bounded(greeting(), self.timeout) or None
        except TimeoutError:
            error = None if connected else "timed out"
        except OSError as exc:
            # asyncio's strerror is "Connect call failed (addr, port)"; the errno says why.
            error = os.strerror(exc.errno) if exc.errno else str(exc)
        return port_check(
            where,
            error=error,
            banner=banner,
            timeout=self.timeout,
            proxy=None,
            line=self.machine.source,
        )

    async def _greeted(self, argv: list[str], dialect: Dialect) -> Completed:
        """``ssh ... true`` with ``dialect``'s hello: `true` ignores its stdin; a key restricted
        to that protocol's program runs that instead, which answers the hello and ends (status
        0) at the EOF after it."""
        login = run_greeted(
            [*argv, remote_command(["true"])],
            greeting=dialect.hello,
            answer_size=len(dialect.reply),
            env=self.options.env,
        )
        return await self._bounded(login, self.timeout + SLACK)

    async def _speaks_other(self, argv: list[str], done: Completed) -> bool | None:
        """After a login whose forced program said ``MISMATCH`` to the hello: does it answer
        the other protocol's? None when the login said no such thing."""
        if done.returncode == _SSH_FAILED or not mismatched(done.stderr, self.machine.scheme):
            return None
        other = other_dialect(self.dialect)
        said = (await self._greeted(argv, other)).stdout
        return said.startswith(other.reply.decode(errors="replace"))

    async def _login(self, config: SshConfig) -> Check:
        key = self.machine.ssh_key or config.identity
        self.user = config.user or self.target.user or "?"
        with tempfile.TemporaryDirectory(prefix="ofl-doctor-") as tmp:
            known = None
            if self.target.public_host_key:
                known = Path(tmp) / "known_hosts"
                known.write_text(known_hosts_line(self.target))
            argv = ssh_argv(
                self.target,
                known_hosts=known,
                nix_sshopts=self.sshopts,
                connect_timeout=math.ceil(self.timeout),
            )
            started = time.monotonic()
            try:
                done = await self._greeted(argv, self.dialect)
                seconds = time.monotonic() - started
                speaks_other = await self._speaks_other(argv, done)
            except TimeoutError:
                return Check(
                    "ssh",
                    Verdict.FAIL,
                    f"no login within {self.timeout + SLACK:g} s",
                    "try `ssh -v` to the builder by hand to see where it stops",
                )
        if speaks_other is not None:
            return Check(
                "ssh",
                Verdict.FAIL,
                *mismatch_fix(self.machine.scheme, self.machine.source, speaks_other),
            )
        looked_up = looked_up_elsewhere(done.stderr, self.target.host, self.target.port)
        if known is not None and looked_up is not None:
            return Check("ssh", Verdict.FAIL, *alias_fix(self.target.host, looked_up))
        code = done.returncode
        if self.dialect is DAEMON and done.stdout.startswith(DAEMON.reply.decode()):
            code = 0  # a key forced to the daemon: it answered, then met EOF mid-handshake
        check = ssh_check(
            code,
            done.stderr,
            key=key,
            pinned=known is not None,
            destination=f"{self.user}@{self.target.host}",
            seconds=seconds,
            key_place=key_place(self.machine) if self.machine.ssh_key else None,
            line=self.machine.source,
            passphrase=has_passphrase(key),
            scanned=config,
        )
        if (roots := roots_key(done.stderr)) is not None:
            return roots
        if (shell := no_shell(check, done.stdout, f"{self.user}@{self.target.host}")) is not None:
            return shell
        return noisy_shell_check(check, done.stdout, self.dialect.reply)
