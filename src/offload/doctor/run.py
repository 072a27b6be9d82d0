"""The doctor's probes: one ``_Probe`` per machine, all machines at once.

For one machine the checks run in ``CHECKS`` order. The prerequisites go from the outside in,
each with its own probe so that a failure is named where it happens: up to the login, those of
``doctor.login``; then one ``MachineLink`` (the master connection builds use) runs
``nix-store --version`` and opens a serve session, whose start line also reports the load; a
build session as builds open it says whether its slot is counted on the builder (flock(1) and a
slot directory there) or on this host only. Last, 8 MiB come down the same connection, for its
throughput. A builder whose key runs only the serve program is told as that master connects:
its ``nix`` row and those only a command could answer are ``unknown``, its round trip is timed
on serve queries, and its slots are counted on this host only. The first prerequisite that
fails ends the machine's probing; the remaining checks are ``skipped``. The rest ask the
builder over the same master, one command at a time so the round-trip times are not skewed.

Every probe is bounded: connecting by ``timeout`` (the TCP connect and the greeting together,
ssh's ``ConnectTimeout``), a login or remote command by the timeout plus slack for the
authentication. Machines are probed concurrently, so a dead one costs about ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from offload.booleans import nix_bool
from offload.config.machines import Machine
from offload.doctor import claims, facts, slot_facts
from offload.doctor.login import DEFAULT_TIMEOUT, SLACK, DoctorOptions, LoginProbe
from offload.doctor.model import CHECKS, PREREQUISITES, Check, MachineReport, Verdict, skipped
from offload.doctor.trust import probe_item, probed_trust_check, trust_probe_check
from offload.errors import OffloadError, RemoteError
from offload.load import RemoteLoad, local_boot_id
from offload.store.nar import Sink
from offload.transport.dialect import DAEMON
from offload.transport.links import BuilderFullError, MachineLink
from offload.transport.missing_program import install_nix

__all__ = [
    "DEFAULT_TIMEOUT",
    "BuilderFacts",
    "DoctorOptions",
    "diagnose",
    "diagnose_machine",
    "examine",
]

_RTT_SAMPLES = 3
_THROUGHPUT_BYTES = 8 << 20
# Nix as a nix-daemon (root's) reads its configuration: NIX_CONF_DIR/nix.conf with its includes,
# the system XDG dirs and root's own files, never the NIX_CONFIG of an ssh session's shell, nor
# another user's ~/.config/nix (NIX_USER_CONF_FILES empty on Nix 2.4+, XDG_CONFIG_HOME on 2.3).
_NO_SESSION = ["env", "-u", "NIX_CONFIG"]
_NO_USER_FILES = ["NIX_USER_CONF_FILES=", "XDG_CONFIG_HOME=/nonexistent"]
# And NIX_CONF_DIR is the daemon's, not the session's (a shell's profile may set it for the
# user's own Nix): read from the running daemon's environment where it may be read (root: the
# nix-daemon in this mount namespace, not a `nix-daemon --stdio` of an ssh session), else from
# its systemd unit (`systemctl show`, open to every user), else unset: Nix's default, /etc/nix.
# Then the command given runs with it.
_DAEMON_CONF_DIR = (
    "d=; f=; m=$(readlink /proc/self/ns/mnt 2>/dev/null); "
    "for p in /proc/[0-9]*; do "
    '{ read -r c <"$p/comm"; } 2>/dev/null || continue; [ "$c" = nix-daemon ] || continue; '
    '[ -n "$m" ] && [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$m" ] || continue; '
    "case $(tr '\\0' ' ' <\"$p/cmdline\" 2>/dev/null) in *--stdio*) continue ;; esac; "
    "e=$(tr '\\0' '\\n' <\"$p/environ\" 2>/dev/null) || continue; "
    "d=$(printf '%s\\n' \"$e\" | sed -n 's/^NIX_CONF_DIR=//p' | head -n 1); f=1; break; "
    "done; "
    'if [ -z "$f" ] && command -v systemctl >/dev/null 2>&1; then '
    "for w in $(systemctl show -p Environment --value nix-daemon.service 2>/dev/null); do "
    "case $w in NIX_CONF_DIR=*) d=${w#NIX_CONF_DIR=} ;; esac; done; fi; "
    'if [ -n "$d" ]; then NIX_CONF_DIR=$d; export NIX_CONF_DIR; else unset NIX_CONF_DIR; fi; '
    'exec "$@"'
)


async def diagnose(machines: Sequence[Machine], options: DoctorOptions) -> list[MachineReport]:
    """Every machine's report, probed concurrently, in the order given."""
    return list(await asyncio.gather(*(diagnose_machine(m, options) for m in machines)))


@dataclass(frozen=True)
class BuilderFacts:
    """What the probes learned beyond the verdicts: the builder's Nix settings (None when they
    could not be read) and the load its serve session reported (cores too)."""

    config: Mapping[str, str] | None = None
    load: RemoteLoad | None = None


async def diagnose_machine(machine: Machine, options: DoctorOptions) -> MachineReport:
    return (await examine(machine, options))[0]


async def examine(machine: Machine, options: DoctorOptions) -> tuple[MachineReport, BuilderFacts]:
    """The machine's report, and the facts behind it (``offload setup client`` writes them)."""
    started = time.monotonic()
    checks: list[Check] = []
    probe = None
    try:
        probe = _Probe(machine, options, checks)
        await probe.run()
    except (OffloadError, OSError) as exc:  # e.g. a host ssh would read as an option
        name = next(n for n in CHECKS if n not in {c.name for c in checks})
        message, hint = (
            (exc.message, exc.hint) if isinstance(exc, OffloadError) else (str(exc), None)
        )
        checks.append(Check(name, Verdict.FAIL, message, hint))
    failed = next((c.name for c in checks if c.verdict == Verdict.FAIL), None)
    if failed in PREREQUISITES:
        done = {c.name for c in checks}
        checks += skipped([n for n in CHECKS if n not in done], failed)
    elif checks and checks[-1].name == "ssh" and checks[-1].verdict is Verdict.UNKNOWN:
        checks += skipped(CHECKS[CHECKS.index("ssh") + 1 :], "ssh", "could not be checked")
    report = MachineReport(machine.name, machine.uri, tuple(checks), time.monotonic() - started)
    facts = BuilderFacts(probe.config, probe.load) if probe is not None else BuilderFacts()
    return report, facts


class _Probe(LoginProbe):
    def __init__(self, machine: Machine, options: DoctorOptions, checks: list[Check]) -> None:
        super().__init__(machine, options)
        self.checks = checks
        self.load: RemoteLoad | None = None
        self.config: dict[str, str] | None = None
        # What the daemon said of our user's trust (ssh-ng:// on Nix 2.15 and later), or None.
        self.trusted: bool | None = None

    def _passed(self, check: Check) -> bool:
        self.checks.append(check)
        return check.verdict != Verdict.FAIL

    async def run(self) -> None:
        config = await self._ssh_config()
        check, addresses = await self._resolve(config)
        if not self._passed(check) or not self._passed(await self._port(config, addresses)):
            return
        login = await self._login(config)
        if not self._passed(login) or login.verdict is Verdict.UNKNOWN:
            return
        link = MachineLink.from_machine(
            self.machine,
            env=self.options.env,
            max_sessions=1,
            connect_timeout=math.ceil(self.timeout),
        )
        link.refuse_untrusted = False  # the ``trusted`` row says it, with the fix
        async with link:
            if not self._passed(await self._nix(link)) or not self._passed(await self._serve(link)):
                return
            if link.ssh.restricted:
                unknown = {
                    c.name: c for c in facts.restricted_checks(self.machine.max_jobs, self.daemon)
                }
                if self.dialect is DAEMON:
                    unknown = {n: facts.daemon_trust(self.trusted, c) for n, c in unknown.items()}
                if unknown["trusted"].verdict is Verdict.UNKNOWN:
                    unknown["trusted"] = await self._trust_probe(link)
                unknown["rtt"] = facts.rtt_check(await self._serve_rtts(link))
                unknown["slots"] = await self._slots(link)
                self.checks += [
                    unknown[name] for name in CHECKS if name in unknown.keys() - {"nix"}
                ]
                return
            await self._facts(link)

    async def _remote(self, link: MachineLink, argv: list[str]) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of ``argv`` on the builder; -1 when it could not run."""
        try:
            return await self._bounded(link.ssh.run(argv), self.timeout + SLACK)
        except TimeoutError:
            return -1, "", f"no answer within {self.timeout + SLACK:g} s"
        except OffloadError as exc:
            return -1, "", exc.message

    async def _nix(self, link: MachineLink) -> Check:
        program = self.dialect.program(self.machine.params)[0]
        code, out, err = await self._remote(link, [program, "--version"])
        if link.ssh.restricted:  # learnt as the master connected, before the command
            return facts.restricted_checks(self.machine.max_jobs, self.daemon)[0]
        return facts.nix_check(
            code, out, err, program, self.known_user, missing_fix=self._missing_fix()
        )

    async def _serve(self, link: MachineLink) -> Check:
        async def handshake() -> tuple[int | None, int | None]:
            async with link.session() as client:
                self.trusted = getattr(client, "trusted", None)
                # Nix opens its store at the first question, not at the hello: a store it
                # cannot reach (`?remote-store=daemon` where no daemon runs) fails only here,
                # as every build there would.
                await client.query_valid_paths([probe_item()[0].path])
                return client.server_version, link.remote_pid(client)

        program = self.daemon
        try:
            version, pid = await self._bounded(handshake(), self.timeout + SLACK)
        except TimeoutError:
            error = f"no handshake within {self.timeout + SLACK:g} s"
            return facts.serve_check(None, None, error, daemon=program, user=self.known_user)
        except OffloadError as exc:
            return facts.serve_check(
                None, None, exc.message, daemon=program, user=self.known_user,
                missing_fix=self._missing_fix(),
            )  # fmt: skip
        self.load = link.load
        restricted = link.ssh.restricted
        return facts.serve_check(version, pid, None, restricted=restricted, daemon=program)

    def _missing_fix(self) -> str:
        """The fix for a program that is not there or fails: installing Nix, or, where the
        line names its program (``remote-program``: a missing one, or one of the other
        protocol's), that parameter."""
        named = self.machine.params.get("remote-program")
        if not named:
            return install_nix()
        wanted = "nix-daemon (it runs it with --stdio)" if self.daemon else "nix-store"
        return (
            f"remote-program={named} in {self.machine.source} names a program the builder has"
            f" not, or not of this protocol: {self.machine.scheme}:// runs {wanted}; name"
            " that, or remove the parameter"
        )

    async def _trust_probe(self, link: MachineLink) -> Check:
        """Whether the builder takes an unsigned path from the user (``doctor.trust``)."""
        return trust_probe_check(await self._offer_probe(link), self.user)

    async def _offer_probe(self, link: MachineLink) -> str | None:
        """Offer the builder the probe path: what it said if it did not take it, else None."""
        info, nar = probe_item()

        async def offer() -> None:
            async def push(sink: Sink) -> None:
                await sink(nar)

            async with link.session() as client:
                await client.add_to_store_nar(info, push)

        try:
            await self._bounded(offer(), self.timeout + SLACK)
        except TimeoutError:
            return f"no answer within {self.timeout + SLACK:g} s"
        except OffloadError as exc:
            said = exc.said if isinstance(exc, RemoteError) else None
            return said or exc.message
        return None

    async def _trusted(
        self,
        link: MachineLink,
        who: tuple[str, list[str]],
        config: dict[str, str] | None,
        error: str,
        route: str | None,
    ) -> Check:
        """The ``trusted`` row of an unrestricted builder, ``who`` being the user and its
        groups there: nix.conf says, where no daemon asks (``route`` local) or the daemon
        itself said (ssh-ng://, Nix 2.15 and later); else the daemon is asked with the probe."""
        user, groups = who
        if route != "local":  # the daemon's own settings decide, never the ssh user's
            config, error = await self._nix_config(link, daemon_for=user)
        conf = facts.trusted_check(user, groups, config, error, route)
        if route == "local" or self.trusted is not None:
            return facts.daemon_trust(self.trusted, conf) if self.dialect is DAEMON else conf
        listed = facts.listed_trusted(user, groups, config)
        require_sigs = nix_bool((config or {}).get("require-sigs"), default=True)
        said = await self._offer_probe(link)
        return probed_trust_check(listed, conf, said, user, require_sigs=require_sigs)

    async def _slots(self, link: MachineLink) -> Check:
        """A build session as builds open it: is its slot counted on the builder?"""

        def full() -> None:
            raise BuilderFullError(self.machine.name)

        async def open_one() -> None:
            async with link.build_session(on_wait=full):
                pass

        slots = self.machine.max_jobs
        try:
            await self._bounded(open_one(), self.timeout + SLACK)
        except BuilderFullError:
            now: Literal["busy", "yield"] = "yield" if link.slot_yielded else "busy"
            return slot_facts.slots_check(slots, None, full=now, counted=link.slots_counted)
        except (TimeoutError, OffloadError) as exc:
            error = exc.message if isinstance(exc, OffloadError) else "no answer in time"
            return Check("slots", Verdict.WARN, f"not checked: {error}")
        return slot_facts.slots_check(slots, link.slot_fallback, counted=link.slots_counted)

    async def _serve_rtts(self, link: MachineLink) -> list[float]:
        """Round trips of an empty serve query, where no command of ours may run."""
        rtts = []
        with contextlib.suppress(TimeoutError, OffloadError):
            async with link.session() as client:
                for _ in range(_RTT_SAMPLES):
                    started = time.monotonic()
                    await self._bounded(client.query_valid_paths([]), self.timeout + SLACK)
                    rtts.append(time.monotonic() - started)
        return rtts

    async def _nix_config(
        self, link: MachineLink, *, daemon_for: str | None = None
    ) -> tuple[dict[str, str] | None, str]:
        """``nix show-config`` there, as the ssh user's Nix reads it; with ``daemon_for`` (the
        ssh user), as the nix-daemon reads it: in the daemon's NIX_CONF_DIR, without the
        session's NIX_CONFIG, and without the user's own files unless the user is root, whose
        files the daemon reads too."""
        # JSON needs the nix-command feature on Nix 2.4-2.x; Nix 2.3 knows neither the flag nor
        # JSON but prints `name = value` lines.
        error = ""
        prefix: list[str] = []
        if daemon_for is not None:
            own = [] if daemon_for == "root" else _NO_USER_FILES
            prefix = ["sh", "-c", _DAEMON_CONF_DIR, "sh", *_NO_SESSION, *own]
        for argv in (
            ["nix", "--extra-experimental-features", "nix-command", "show-config", "--json"],
            ["nix", "show-config"],
        ):
            code, out, err = await self._remote(link, [*prefix, *argv])
            config = facts.parse_nix_config(out) if code == 0 else {}
            if config:
                return config, ""
            error = (err.strip().splitlines() or [f"exit code {code}"])[-1]
        return None, error

    async def _facts(self, link: MachineLink) -> None:
        machine = self.machine
        config, error = await self._nix_config(link)
        self.config = config
        code, out, _ = await self._remote(link, ["sh", "-c", "id -un; id -Gn"])
        who = out.split("\n") if code == 0 else []
        user = who[0].strip() if who and who[0].strip() else self.user
        groups = who[1].split() if len(who) > 1 else []
        probe = await self._remote(link, ["sh", "-c", facts.ROUTE_PROBE])
        named = self.machine.params.get("remote-store")
        route = facts.store_route(config, probe[1] if probe[0] == 0 else "", named)
        disk = await self._remote(link, ["df", "-Pk", "/nix/store"])
        rtts = []
        for _ in range(_RTT_SAMPLES):
            started = time.monotonic()
            if (await self._remote(link, ["true"]))[0] == 0:
                rtts.append(time.monotonic() - started)
        self.checks += [
            claims.systems_check(
                machine.systems,
                config,
                error,
                machine.source,
                table=machine.toml_table("systems"),
            ),
            claims.features_check(
                machine.supported_features,
                machine.mandatory_features,
                config,
                error,
                machine.source,
                table=machine.toml_table("supported_features")
                or machine.toml_table("mandatory_features"),
            ),
            await self._trusted(link, (user, groups), config, error, route),
            facts.disk_check(*disk),
            facts.load_check(self.load, machine.max_jobs, local_boot_id()),
            slot_facts.builder_jobs_check(
                config,
                await self._slots(link),
                serve=self.daemon is None,
                own=await self._own_builders(link, config),
            ),
            facts.rtt_check(rtts),
            await self._throughput(link),
            await self._cipher(link),
        ]

    async def _own_builders(self, link: MachineLink, config: dict[str, str] | None) -> int:
        """How many machines the builder's own ``builders`` setting lists, its files read
        there; asked only where its max-jobs is 0 (``slot_facts.builder_jobs_check``)."""
        if self.daemon is not None or not slot_facts.max_jobs_zero(config):
            return 0
        files = {}
        for path in slot_facts.builders_files(config):
            code, out, _ = await self._remote(link, ["cat", "--", path])
            files[path] = out if code == 0 else ""
        return slot_facts.own_builders(config, files)

    async def _cipher(self, link: MachineLink) -> Check:
        """What its master offered against what the builder's CPU has."""
        code, cpu, _ = await self._remote(link, ["sh", "-c", facts.CPU_PROBE])
        return facts.cipher_check(link.ssh.ciphers_offered, code, cpu)

    async def _throughput(self, link: MachineLink) -> Check:
        """A short download over the open connection: zeros, so nothing is read on the builder
        but the pipe (ssh's compression, where the machine asks for it, flatters the rate)."""
        started = time.monotonic()
        code, out, err = await self._remote(
            link, ["head", "-c", str(_THROUGHPUT_BYTES), "/dev/zero"]
        )
        seconds = time.monotonic() - started
        if code != 0:
            return Check("throughput", Verdict.WARN, f"not measured: {err.strip() or code}")
        compressed = nix_bool(self.machine.params.get("compress"))
        return facts.throughput_check(_THROUGHPUT_BYTES, len(out), seconds, compressed)
