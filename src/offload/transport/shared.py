"""ssh connections that outlive the process that opened them, for ``offload-hook``.

Nix starts a hook process per worker and ends it after one accepted build, so a connection
owned by one process (``SshTransport``) would cost every derivation an ssh handshake
(nix#3651, nix#8499). Here every session is started with ``ControlMaster=auto`` and
``ControlPersist``: the first one to a builder starts a master in the background (ssh detaches
it from our process group and points its stdio at /dev/null, so it neither holds Nix's pipes nor
dies with the hook), and every later session, from any hook process, multiplexes over it until
it has been idle for ``PERSIST_SECONDS``. Two sessions racing to start a master are fine: the
loser runs unmultiplexed once. Where the sockets live, and that ``offload build`` shares them:
``offload.transport.persist``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from offload.errors import SshError
from offload.process import run_async, spawn
from offload.transport.ciphers import offered_ciphers
from offload.transport.dialect import SERVE, Dialect
from offload.transport.links import SessionPipes, open_serve
from offload.transport.persist import PERSIST_SECONDS, SharedPaths, master_alive
from offload.transport.ssh import (
    CONNECT_TIMEOUT,
    SshTarget,
    remote_command,
    said_lines,
    ssh_argv,
    ssh_keepalive,
    ssh_path,
)
from offload.transport.wrapper import NO_CLIENT, kill_script, remove_partial_argv, serve_command

__all__ = ["PERSIST_SECONDS", "SharedSshTransport"]

_AUTH_SLACK = 15.0
_KILL_GRACE = 2
# How long a remote kill may take before the builder counts as not answering.
KILL_TIMEOUT = 15.0


class SharedSshTransport:
    """Sessions (serve, or the daemon's: ``dialect``) to one builder over a master shared by
    every hook process."""

    def __init__(
        self,
        target: SshTarget,
        *,
        name: str,
        directory: Path,
        params: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        connect_timeout: int = CONNECT_TIMEOUT,
        dialect: Dialect = SERVE,
    ) -> None:
        self.name = name
        self.target = target
        self.dialect = dialect
        self._params = params
        self._env = dict(os.environ if env is None else env)
        self._sshopts = self._env.get("NIX_SSHOPTS", "")
        self._connect_timeout = connect_timeout
        # ssh's keepalives here, the user's first: how long a silent builder keeps a session.
        self.keepalive = ssh_keepalive(target, self._sshopts)
        self._paths = SharedPaths(directory, target, self._sshopts)
        self.control_path = self._paths.control
        self.known_hosts = self._paths.known_hosts
        # The builder's key runs only the serve program (offload.transport.links.base): learnt
        # from the first session and kept for as long as this object (the coordinator's link).
        self.restricted = False
        self.cores: int | None = None  # as a session said: later ones are told them (ssh.py)
        # What a session offers if it starts the master (``offload.transport.ciphers``), once
        # ``_offer`` has asked.
        self._ciphers: str | None = None
        self._offer_asked = False

    def argv(self, remote: list[str]) -> list[str]:
        """ssh over the shared master (started on demand) running ``remote``."""
        base = ssh_argv(
            self.target,
            known_hosts=self.known_hosts,
            nix_sshopts=self._sshopts,
            connect_timeout=self._connect_timeout,
            ciphers=self._ciphers,
        )
        # The socket before NIX_SSHOPTS (ssh takes the first value: a ControlPath there put
        # the master out of offload's sight) and before ssh_argv's "no master", its
        # persistence after (ControlPersist=no wins).
        first = ["-o", "ControlMaster=auto", "-o", f"ControlPath={ssh_path(self.control_path)}"]
        last = ["-o", f"ControlPersist={PERSIST_SECONDS}"]
        # ssh's options must come before `--`, which ssh_argv puts before the destination.
        return [base[0], *first, *base[1:-2], *last, *base[-2:], remote_command(remote)]

    async def start(
        self,
        stack: contextlib.AsyncExitStack,
        slots: int = 0,
        *,
        client: str = NO_CLIENT,
        waited: bool = False,
    ) -> SessionPipes:
        """A session; with ``slots`` above 0, one holding a builder-side slot of that many for
        ``client`` (``Link.build_session``: ``pipes.slot`` says which, or ``busy``)."""
        self._paths.pin()
        program = self.dialect.program(self._params)
        command = serve_command(
            wrapped=not self.restricted,
            program=program,
            slots=slots,
            client=client,
            waited=waited,
            cores=self.cores,
        )
        await self._offer(command)
        argv = self.argv(command)
        # Over a master that answers there is nothing to connect or log in: a builder that
        # does not answer within the connect timeout is hung, or the network to it is down.
        # Waited for until the master's keepalives ended it, Nix waited for the hook's reply
        # with every build of the nix-build (16 s); a new master gets the login's slack too.
        warm = master_alive(self.control_path) is True
        limit = self._connect_timeout + (0.0 if warm else _AUTH_SLACK)
        proc = await stack.enter_async_context(spawn(argv, env=self._env))
        assert proc.stdin is not None
        opening = await open_serve(proc, limit, self.dialect)
        if opening.failure is not None:
            lines = [line for line in [*opening.early[-5:], opening.failure] if line.strip()]
            raise SshError(
                f"cannot open a session on builder '{self.name}' "
                f"({self.target.destination}): {' | '.join(lines)}",
                hint="try `ssh` to it by hand, or leave it out with `offload use`",
            )
        self.restricted = self.restricted or opening.restricted
        if opening.load is not None:
            self.cores = opening.load.cores
        control = self.control_path
        return opening.pipes(
            proc,
            over_ssh=True,
            connection_gone=lambda: master_alive(control) is False,
            keepalive=self.keepalive,
        )

    async def _offer(self, command: list[str]) -> None:
        """Decide once which ciphers a session offers: any of them may start the master."""
        if not self._offer_asked and self.target.aes:
            self._ciphers = await offered_ciphers(self.argv(command), self._env)
        self._offer_asked = True

    def kill_argv(self, pid: int, born: str | None = None) -> list[str]:
        return self.argv(kill_script(pid, _KILL_GRACE, born))

    async def kill(self, pid: int, born: str | None = None) -> None:
        try:
            done = await asyncio.wait_for(
                run_async(self.kill_argv(pid, born), env=self._env, check=False), KILL_TIMEOUT
            )
        except TimeoutError:
            # An error of the link's: a bare TimeoutError skipped the session's teardown.
            raise SshError(
                f"cannot stop process {pid} on builder '{self.name}': no answer"
            ) from None
        if done.returncode != 0:
            said = " | ".join(said_lines(done.stderr))
            raise SshError(f"cannot stop process {pid} on builder '{self.name}': {said}")

    async def remove_partial(self, paths: Sequence[str]) -> None:
        """Delete what a stopped build left of ``paths`` in the builder's store: each path
        there that is not valid (``offload.scheduler.run.disk``). Refused where the key runs
        only the store program."""
        if self.restricted:
            raise SshError(
                f"builder '{self.name}' runs only {self.dialect.describe(self._params)} "
                "for this key"
            )
        argv = self.argv(remove_partial_argv(self._params, paths, self.dialect is SERVE))
        done = await run_async(argv, env=self._env, check=False)
        if done.returncode != 0:
            said = " | ".join(said_lines(done.stderr))
            raise SshError(f"cannot delete partial outputs on builder '{self.name}': {said}")

    async def run(self, remote: list[str]) -> tuple[int, str, str]:
        """``remote`` run on the builder over the master: exit code, stdout, stderr."""
        done = await run_async(self.argv(remote), env=self._env, check=False)
        return done.returncode, done.stdout, done.stderr

    async def close(self) -> None:
        """The master stays for the next hook process; it exits after being idle a while."""
