"""What one hook process knows: Nix's settings, the pool, and the state shared with other runs.

The settings are the ones Nix sent in the preamble (every global setting, the client's
``--builders``, ``--option`` and ``-j`` included), so the hook reads no nix.conf and starts no
``nix show-config``. The pool is built from them exactly as ``offload build`` builds it
(``load_pool``: the machines spec, then offload.toml), narrowed by ``offload use`` when a
choice is in force. State is shared with every other hook process and every ``offload build``
run through files: slot locks (Nix's ``current-load``), backoff (``backoff.json``), history
(``history.sqlite``) and the persistent ssh masters (``ssh/``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from offload.backoff import (
    REMEMBERED,
    Health,
    change_backoff,
    connections,
    load_backoff,
    reason_line,
    save_backoff,
)
from offload.config.machines import Machine
from offload.config.pool import Pool, load_pool
from offload.config.settings import NixSettings
from offload.errors import OffloadError
from offload.history.estimates import estimator
from offload.hook.backed_off import backed_off_key, clock
from offload.hook.decide import Builder, LocalOffer, cut
from offload.hook.keep import Keep
from offload.hook.local_queue import LocalQueue
from offload.hook.slack import room
from offload.hook.wire import HookIO, Reply, TryRequest, write_nix_json, write_reply
from offload.procfs import proc_stat
from offload.scheduler.policy import Backoff, MachineSlotSpec
from offload.scheduler.policy.guesses import guessed_work
from offload.slots import SlotLocks, slot_key
from offload.store.drv import read_derivation
from offload.transport.sshopts_check import SSHOPTS_FIX, sshopts_refused
from offload.use import read_choice

__all__ = ["Estimate", "HookContext", "load_context"]

# A client's markers (``first_for_client``) are kept this long: a nix-build rarely runs longer.
_MARKER_DAYS = 1


@dataclass(frozen=True)
class Estimate:
    """What a derivation is expected to take (``HookContext.estimate``)."""

    work: float  # seconds on a machine of speed 1
    measured: bool  # history's median or Nix's build log (else a guess)
    prefer_local: bool  # its derivation has preferLocalBuild


@dataclass
class HookContext:
    settings: NixSettings
    pool: Pool
    state: Path
    slots: SlotLocks
    verbosity: int
    env: Mapping[str, str]
    io: HookIO
    parent: int  # the Nix process asking: its declines share the local machine's slots
    keep: Keep  # sessions and the history, kept from one hook to the next
    backoff: dict[str, Health] = field(default_factory=dict)
    # Builders whose backoff ended, kept to count their next failure from (``offload.backoff``):
    # a session there that answers clears it (``machine_ok``), as it clears a backoff in force.
    ended: frozenset[str] = frozenset()
    notes: list[str] = field(default_factory=list)  # said once per client, before the reply
    client: str | None = None  # the Nix process asking, as ``first_for_client`` names it
    whole: Pool | None = None  # the pool before ``offload use`` narrowed it (None: ``pool``)
    # Builders this host's ssh cannot reach whatever the builder (``unreachable``), with why:
    # left out of this process's decisions, backed off for none.
    faults_here: dict[str, str] = field(default_factory=dict)

    def say(self, text: str, level: int = 1) -> None:
        """A line on the user's terminal at Nix's ``level`` (1 warn ... 4 talkative, ``-v``): a
        structured message, because after the reply Nix drops the hook's plain lines."""
        if self.verbosity >= level:
            write_nix_json(
                self.io, {"action": "msg", "level": level, "msg": f"offload-hook: {text}"}
            )

    def say_to_client(self, text: str, level: int = 1) -> None:
        """``say``, once per Nix client (``first_for_client``): Nix starts a hook process per
        accepted derivation, and a note per derivation is noise; the next nix-build hears it
        again, as it would from Nix."""
        if self.first_for_client(f"said {text}"):
            self.say(text, level)

    def first_for_client(self, what: str) -> bool:
        """True the first time any hook process asks about ``what`` for the Nix process
        asking now (the same nix-build, or daemon connection, across the hook processes Nix
        starts for it: one per accepted derivation); its next run asks anew. A marker per
        client and ``what``, created exclusively so two hook processes cannot both be first;
        markers older than a day go when a new one is made."""
        marker = self._client_marker(what)
        try:
            marker.parent.mkdir(mode=0o700, exist_ok=True)
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        except OSError:
            return True  # no marker can be made: said (or tried) again rather than never
        _sweep(marker.parent, time.time() - _MARKER_DAYS * 86400)
        return True

    def failed_for_client(self, name: str) -> bool:
        """Has builder ``name`` failed for the Nix process asking now (``machine_failed``)?"""
        return self._client_marker(f"failed {name}").exists()

    def _client_marker(self, what: str) -> Path:
        return self._marker(f"{self.client_name()} {what}")

    def client_name(self) -> str:
        """The Nix process asking, as pid@start time (which tells a recycled pid apart)."""
        if self.client is None:
            stat = proc_stat(self.parent)
            self.client = f"{self.parent}@{stat[1] if stat is not None else '?'}"
        return self.client

    def _marker(self, key: str) -> Path:
        return self.state / "said" / hashlib.sha256(key.encode()).hexdigest()[:16]

    def machine(self, name: str) -> Machine:
        """Builder ``name``, chosen now or not (one chosen when it was accepted may not be)."""
        return next(m for m in (self.whole or self.pool).machines if m.name == name)

    def reload_choice(self, request: TryRequest) -> None:
        """The ``offload use`` choice as its file has it now, for a derivation waiting in the
        coordinator for a slot: a choice made or cleared while it waits counts from its next
        pick. One where nothing could build ``request`` leaves the pool as it was: accepted, it
        can no longer be declined, and failing it is not what choosing builders asks for."""
        whole = self.whole or self.pool
        pool, _ = _chosen(whole, self.state, time.time())
        features = sorted(request.features)
        if any(m.enabled and m.supports(request.system, features) for m in pool.machines):
            self.pool = pool

    def builders(
        self,
        now: float,
        exclude: Iterable[str] = (),
        *,
        full: Mapping[str, float | None] | None = None,
        retry: Iterable[str] = (),
    ) -> list[Builder]:
        """The usable builders, as this host's slot locks and backoff see them; those in
        ``full`` (every slot held on the builder itself, since when if known) taken for
        having none free, those the coordinator found loaded with fewer slots, and those in
        ``retry`` taken for up whatever their backoff."""
        skip, full, retry = set(exclude), full or {}, set(retry)
        loaded = self.keep.loads.slots() if self.keep.loads is not None else {}
        result = []
        for machine in self.pool.machines:
            if not machine.enabled or machine.max_jobs <= 0 or machine.name in skip:
                continue
            if machine.not_connected is not None:  # said "not used" in the pool's warnings
                continue
            if machine.name in self.faults_here:
                continue
            spec = MachineSlotSpec.from_machine(machine)
            probe = self.slots.probe(slot_key(machine.uri), spec.slots)
            health = None if machine.name in retry else self.backoff.get(spec.name)
            down = health.until if health is not None and health.until > now else None
            free = 0 if machine.name in full else probe.free
            since = full.get(machine.name)
            builder = Builder(spec, free, probe.busy_ends, down, since)
            if machine.name in loaded:
                builder = cut(builder, loaded[machine.name], now)
            result.append(builder)
        return result

    def local_offer(self, request: TryRequest, now: float) -> LocalOffer:
        local = self.pool.local
        if local is None or not local.supports(request.system, sorted(request.features)):
            return LocalOffer(1.0, can_build=False)
        # When a slot frees for it, as the builds declined to this Nix are expected to end (a
        # derivation asked about again is not building here: ``local_queue``).
        start = LocalQueue(self.state, self.parent).start(request.drv_path, local.max_jobs, now)
        if not request.am_willing:
            # Nix's slots are all busy: a queue with one free explains none of it (a build ran
            # past its estimate, or Nix started one unasked), and when one frees is not known.
            later = None if start <= now else start
            return LocalOffer(local.speed_factor, can_build=False, start=later, later=True)
        return LocalOffer(local.speed_factor, can_build=True, start=start)

    def declined(self, request: TryRequest, end: float, tail: float = 0.0) -> None:
        """Nix will build ``request`` here: its local slot is taken until ``end``, and its path
        (``tail`` after it) counts for this nix-build's slack (``offload.hook.slack``)."""
        LocalQueue(self.state, self.parent).add(request.drv_path, end)
        path_end = end + tail / self.fastest()
        self.keep.path_ends.placed(self.client_name(), request.drv_path, path_end)

    def speeds(self) -> dict[str, float]:
        """Each machine's speed factor, by name: how history's durations become work."""
        return {m.name: m.speed_factor for m in self.pool.machines}

    def estimates(self, names: Iterable[str]) -> Mapping[str, float]:
        """History's work for ``names`` (those it or Nix's build logs know), on this pool's
        speeds (``StoreError``)."""
        return estimator(self.keep.history(), self.speeds(), self.keep.nix_logs)(names)

    def measured_work(self, request: TryRequest) -> float | None:
        """Expected seconds on a machine of speed 1 as history measured them (its median);
        None when it has none (``estimate`` guesses then)."""
        try:
            return self.estimates([request.pname]).get(request.pname)
        except OffloadError:
            return None

    def estimate(self, request: TryRequest) -> Estimate:
        """What ``request`` is expected to take: history's work, else guessed as ``offload
        build`` guesses a build it does not know (``plan_jobs``: a preferLocalBuild one is
        trivial, and has its own guess, ``guessed_work``)."""
        measured = self.measured_work(request)
        prefer_local = self.prefer_local(request)
        if measured is not None:
            return Estimate(measured, measured=True, prefer_local=prefer_local)
        work = guessed_work(request.features, trivial=prefer_local)
        return Estimate(work, measured=False, prefer_local=prefer_local)

    def prefer_local(self, request: TryRequest) -> bool:
        """Has ``request``'s derivation ``preferLocalBuild``? Read from the local store; a .drv
        that cannot be read (or parsed) is taken for one without: guessed as any build."""
        try:
            return read_derivation(request.drv_path).prefer_local_build
        except OffloadError:
            return False

    def left_to_nix(self, request: TryRequest) -> bool:
        """Is ``request`` declined here (said once; the reply written) because its outputs'
        paths are known only once it is built (floating content-addressed, impure or
        deferred), or because its .drv cannot be read here? Accepted, the first would fail
        after its build (the hook brings outputs home by path) and back its builder off; the
        second would fail at once, where Nix can build it (a newer Nix's derivation format,
        as its dynamic derivations' ``DrvWithVersion``)."""
        try:
            outputs = read_derivation(request.drv_path).outputs.values()
        except OffloadError as exc:
            why = f"offload-hook cannot read its derivation ({exc.message})"
        else:
            if all(output.path for output in outputs):
                return False
            why = (
                "its outputs' paths are known only once it is built (content-addressed, impure"
                " or deferred), and offload-hook brings outputs home by path"
            )
        if self.first_for_client(f"left to Nix {request.drv_path}"):
            self.say(f"'{request.drv_path}' is left to Nix: {why}")
        write_reply(self.io, Reply.DECLINE)
        return True

    def priority(self, request: TryRequest, work: float) -> float:
        """Where ``request`` waits in the coordinator's queue: its ``work`` and the work history
        saw after it (``history.tails``)."""
        return work + self.keep.tails(self.speeds()).get(request.pname, 0.0)

    def room(
        self, request: TryRequest, work: float, priority: float, now: float, *, measured: bool
    ) -> float | None:
        """The latest end ``request``'s slack allows (``offload.hook.slack``); None without
        slack, or when history knows its work (``measured``) or tail not."""
        if not measured or request.pname not in self.keep.tails(self.speeds()):
            return None
        run_end = self.keep.path_ends.latest(self.client_name(), now)
        return room(run_end, now, work=work, priority=priority, fastest=self.fastest())

    @contextlib.contextmanager
    def building(self, request: TryRequest, end: float | None, tail: float) -> Iterator[None]:
        """While ``request`` is accepted and built elsewhere, expected to end at ``end`` with
        ``tail`` after it, its path counts for this nix-build's slack; once its build ends, from
        then (``offload.hook.slack``)."""
        client, rest = self.client_name(), tail / self.fastest()
        if end is not None:
            self.keep.path_ends.placed(client, request.drv_path, end + rest)
        try:
            yield
        finally:
            self.keep.path_ends.placed(client, request.drv_path, time.time() + rest)

    def fastest(self) -> float:
        """The speed of the pool's fastest machine, the local one included."""
        local = self.pool.local
        speeds = [m.speed_factor for m in self.pool.machines]
        return max([*speeds, local.speed_factor] if local is not None else speeds, default=1.0)

    def reload_backoff(self) -> None:
        """Backoff as the file has it now: another run's failure, or ``offload machines
        --reset``, counts from the next decision (Nix keeps a hook process until it accepts)."""
        self.backoff, self.ended = _backoff(self.state, self.pool, time.time())

    async def unreachable(self, name: str, error: str) -> None:
        """Builder ``name`` could not be reached: backed off (``machine_failed``), unless ssh
        refuses NIX_SSHOPTS whatever the host (``transport.sshopts_check``). That is this
        host's fault, every builder's alike: they are left out of this process's decisions
        and kept against none (``offload build`` does the same), and it is said once per
        client."""
        refused = await sshopts_refused(self.env)
        if refused is None:
            self.machine_failed(name, error)
            return
        names = [b.spec.name for b in self.builders(time.time())]  # those it would use
        every = [m.name for m in (self.whole or self.pool).machines if m.not_connected is None]
        self.faults_here.update(dict.fromkeys(every, refused))  # `offload use` may widen
        builders = ", ".join(f"'{n}'" for n in names)
        self.say_to_client(
            f"builders {builders} not used: {refused}; {SSHOPTS_FIX}: this host's ssh, not "
            "theirs, so none is backed off"
        )

    def machine_failed(self, name: str, error: str) -> None:
        """Back builder ``name`` off for every hook and run on this host, with why (``error``
        in the user's words, with the fix, as ``offload build`` says it); said once."""
        # Imported here: only a failure needs it, and the hook process starts on every try.
        from offload.build.faults import HOOK_LEAVE_OUT, explain

        now = time.time()
        reason = reason_line(explain(self.machine(name), error, HOOK_LEAVE_OUT))
        counted = False  # a new failure, not the outage another build found a moment ago

        connection = self.machine(name).connection_id

        def failed(current: Health | None) -> Health:
            nonlocal counted
            if current is not None and current.connection not in (None, connection):
                current = None  # failures of its line before it was mended count no more
            if current is not None and current.until > now and _just_backed_off(current, now):
                # The same outage, found a moment ago by another build there (another hook
                # process, of this nix-build or another): one failure, as in a run.
                return current
            counted = True
            failures = (current.failures if current is not None else 0) + 1
            return Health(failures, now + Backoff().delay(failures), reason, connection, now)

        health = change_backoff(self.state / "backoff.json", name, failed, now)
        assert health is not None  # ``failed`` always makes one
        self.reload_backoff()
        self.first_for_client(f"failed {name}")  # no retry out of turn for this client now
        # Said once per client and backoff (not again as left out); an outage another build
        # found a moment ago is said to this client too, unless it was already.
        if not self.first_for_client(backed_off_key(name, health)) and not counted:
            return
        self.say(
            f"builder '{name}' failed: {reason}; backed off until {clock(health.until)} "
            f"({health.until - now:.0f} s), for every build on this host, until it answers again"
        )

    def machine_ok(self, name: str) -> None:
        if self.backoff.pop(name, None) is not None or name in self.ended:
            self.ended -= {name}
            save_backoff(self.state / "backoff.json", {name: None}, time.time())


def _backoff(state: Path, pool: Pool, now: float) -> tuple[dict[str, Health], frozenset[str]]:
    """The backoff in force in ``state`` at ``now``, and the builders whose backoff ended but
    is kept (``HookContext.ended``)."""
    kept = load_backoff(state / "backoff.json", now, connections(pool), ended_within=REMEMBERED)
    in_force = {name: health for name, health in kept.items() if health.until > now}
    return in_force, frozenset(kept.keys() - in_force.keys())


def _just_backed_off(health: Health, now: float) -> bool:
    """Did ``health``'s backoff start within ``Backoff.coalesce`` of ``now``? By its ``since``,
    either way: another hook process may have read its clock after this one and taken the
    backoff file's lock first. Where a file kept no start, by its delay before its end, and
    only before ``now`` (an earlier offload's, seeded with any end)."""
    policy = Backoff()
    if health.since is not None:
        return abs(now - health.since) < policy.coalesce
    return 0 <= now - (health.until - policy.delay(health.failures)) < policy.coalesce


def _sweep(directory: Path, before: float) -> None:
    """Remove the markers in ``directory`` last touched before ``before``: their clients are
    long gone, and a directory that only grows costs every listing."""
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < before:
                    entry.unlink()


def _chosen(pool: Pool, state: Path, now: float) -> tuple[Pool, str | None]:
    choice = read_choice(state, now)
    if choice is None:
        return pool, None
    until = "until cleared"
    if choice.until is not None:
        until = "until " + time.strftime("%H:%M", time.localtime(choice.until))
    note = f"using {','.join(choice.machines)} as set by `offload use` ({until})"
    try:
        return pool.select(on=choice.machines, max_jobs=None), note
    except OffloadError as exc:
        return pool, f"ignoring `offload use {','.join(choice.machines)}`: {exc.message}"


def load_context(
    preamble: Mapping[str, str],
    *,
    state: Path,
    verbosity: int,
    env: Mapping[str, str],
    io: HookIO,
    parent: int,
    keep: Keep,
) -> HookContext:
    env = dict(env)
    _check_store(preamble.get("store", "auto"))
    settings = NixSettings(dict(preamble))
    # Nix sends its settings, not where each was set: a client's --builders is no nix.conf's.
    whole = load_pool(
        builders=None,
        config=None,
        env=env,
        nix_settings=settings,
        builders_setting="Nix's builders setting",
        nix_builds_here=True,
    )
    now = time.time()
    pool, note = _chosen(whole, state, now)
    context = HookContext(
        settings=settings,
        pool=pool,
        whole=whole,
        state=state,
        slots=SlotLocks.default(state, program="hook"),
        verbosity=verbosity,
        env=env,
        io=io,
        parent=parent,
        keep=keep,
    )
    context.backoff, context.ended = _backoff(state, pool, now)
    context.notes += list(pool.warnings)
    if note is not None:
        context.notes.append(note)
    return context


# The store settings that name this host's own store (its /nix/store, directly or through the
# nix-daemon): what the hook brings outputs home into (``home``, ``nix-store`` of this host).
_OWN_STORES = frozenset({"", "auto", "daemon", "local"})


def _check_store(store: str) -> None:
    """The hook builds for this host's store only: a build for another one (``--store /mnt``,
    as nixos-install runs it) is declined for good, and Nix builds it there itself."""
    if store in _OWN_STORES or store.startswith("unix://"):
        return
    raise OffloadError(
        f"the build is for the store {store!r} (--store), not this host's own: offload-hook "
        "brings outputs home into this host's store only"
    )


def poll_interval(settings: NixSettings) -> float:
    return float(settings.count("build-poll-interval", 5))
