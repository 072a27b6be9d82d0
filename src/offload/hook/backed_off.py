"""What the hook says about backed-off builders, and when it tries one before its backoff ends.

A backed-off builder is left out of every decision until its backoff ends (``offload.backoff``:
remembered across runs, so a dead builder costs one connect timeout per backoff period, not
one per derivation). Left out silently, a Nix user sees only Nix's own ``waiting for a machine``
or ``unable to start any build``; so the hook says, in the log Nix prints:

- that a builder is backed off, until when, after how many failures and why (the error that
  backed it off, with its fix), once per Nix client (one nix-build, or daemon connection) and
  backoff: the first time a decision for that client leaves the builder out. A failure said
  as it happens (``HookContext.machine_failed``) is not said again.
- when only backed-off builders could build a derivation (the local machine builds nothing,
  ``-j 0``, or not this system or these features: the choice is ``stuck``), what it does:

  - a builder that has not failed for this client yet (its backoff comes from an earlier run
    or another client) is tried again at once, out of turn: waiting out a backoff that may be
    stale (the key fixed since, the builder back up) helps no one when nothing else can build
    the derivation, and a try costs what Nix's own hook pays on every run. It answers: the
    build goes on and its backoff is cleared. It fails: it is backed off again, said as a
    failure, and counts as tried for this client.
  - once each such builder has failed for this client, the derivation is declined, with one
    line saying why: Nix then says it cannot build it (``unable to start any build`` under
    ``-j 0``), as it does when its own hook cannot reach the only builder. Postponing instead
    would keep nix-build printing ``waiting for a machine`` for the whole backoff (up to 27
    minutes) for a builder that failed minutes ago, and then fail or wait again.

An accepted derivation (in the coordinator, its builder full or gone) cannot be declined: Nix
holds its outputs' locks. When only backed-off builders are left to build it, it tries one out
of turn as above, and once each has failed for this client the build fails with one line
saying so (``given_up``), rather than wait out a backoff of up to 27 minutes.

Markers in the state directory make "once per client" hold across the hook processes Nix starts
for one client (``HookContext.first_for_client``).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from offload.backoff import Health
from offload.errors import OffloadError
from offload.transport.sshopts_check import SSHOPTS_FIX

if TYPE_CHECKING:
    from offload.config.machines import Machine
    from offload.config.settings import LocalMachine
    from offload.hook.context import HookContext
    from offload.hook.decide import Choice
    from offload.hook.wire import TryRequest

__all__ = [
    "backed_off_key",
    "backed_off_line",
    "clock",
    "declined_line",
    "given_up",
    "local_why",
    "retry_line",
    "say_declined",
    "say_left_out",
    "say_unfit",
    "to_retry",
    "unfit_line",
]


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def backed_off_key(name: str, health: Health) -> str:
    """What is said once per client: this builder's backoff until then (a new one is news)."""
    return f"backed off {name} {health.until:.3f}"


def backed_off_line(name: str, health: Health) -> str:
    failures = f"{health.failures} failure" + ("s" if health.failures != 1 else "")
    return (
        f"builder '{name}' is backed off until {clock(health.until)} after {failures}: "
        f"{health.why}; `offload machines --reset {name}` lets it be tried at once"
    )


def local_why(
    has_local: bool, fits_local: bool, *, chosen_out: bool = False, lacks: str = ""
) -> str:
    """Why the local machine will not build it: nothing is built here, or not this (what it
    ``lacks``, where known), or ``offload use`` leaves it out (``chosen_out``), which binds
    offload, not Nix."""
    if chosen_out:
        return (
            "`offload use` leaves the local machine out (Nix, declined, builds it here all "
            "the same unless its max-jobs is 0)"
        )
    if not has_local:
        return "the local machine builds nothing here: max-jobs is 0"
    if not fits_local:
        return f"the local machine lacks {lacks or 'its system or features'}"
    return "the local machine is not offered it"


def retry_line(drv_path: str, name: str, local: str) -> str:
    return (
        f"nothing else can build '{drv_path}' ({local}); so builder '{name}' is tried again "
        "now, before its backoff ends"
    )


def declined_line(
    drv_path: str, names: tuple[str, ...], until: float, local: str, *, chosen: bool = False
) -> str:
    """``chosen``: others could build it, but ``offload use`` leaves them out."""
    builders = ", ".join(f"'{name}'" for name in names)
    among = " of the builders `offload use` chooses (`offload use --clear`)" if chosen else ""
    return (
        f"declining '{drv_path}': only {builders} could build it{among}, backed off until "
        f"{clock(until)} after failing for this build, and {local}"
    )


def _left_out_by_use(context: HookContext, request: TryRequest) -> bool:
    """Whether ``offload use`` leaves out a builder that could build ``request``."""
    return bool(_use_left_out(context, request))


def say_unfit(context: HookContext, request: TryRequest, choice: Choice) -> None:
    """For a ``choice`` that no builder fits (``unfit``), say once per client and derivation
    that no machine can build ``request``, if the local machine cannot either (else Nix builds
    it, and that is no fault). Nix's own words then are only "unable to start any build"."""
    local = context.pool.local
    if not choice.unfit or (
        local is not None and local.supports(request.system, sorted(request.features))
    ):
        return
    if context.first_for_client(f"unfit {request.drv_path}"):
        line = unfit_line(request, context.pool.machines, _local(context, request))
        context.say(line + _use_left_out(context, request))


def _use_left_out(context: HookContext, request: TryRequest) -> str:
    """Where ``offload use`` leaves out builders that could build ``request``: which, and the
    fix (a tester read only what the chosen builders offer). The chosen pool is the whole one
    selected (``context._chosen``), so it holds them (``Pool.left_out``); with no choice in
    force, it left none out."""
    features = sorted(request.features)
    could = [m.name for m in context.pool.left_out if m.supports(request.system, features)]
    if not could:
        return ""
    named = ", ".join(f"'{name}'" for name in could)
    return f"; `offload use` leaves out {named}, which could (`offload use --clear`)"


def unfit_line(request: TryRequest, machines: Sequence[Machine], local: str) -> str:
    """What ``request`` needs, what each builder offers, and why not the local machine."""

    def offered(systems: Sequence[str], features: Collection[str]) -> str:
        return ",".join(systems) + (f" with {', '.join(sorted(features))}" if features else "")

    offers = "; ".join(f"'{m.name}' {offered(m.systems, m.supported_features)}" for m in machines)
    return (
        f"no machine can build '{request.drv_path}', which needs "
        f"{offered([request.system], request.features)}: the builders offer {offers}; and "
        f"{local}"
    )


def say_left_out(context: HookContext, choice: Choice) -> None:
    """Say each builder ``choice`` left out for its backoff, once per client and backoff."""
    for name in choice.backed_off:
        health = context.backoff.get(name)
        if health is not None and context.first_for_client(backed_off_key(name, health)):
            context.say(backed_off_line(name, health))


def to_retry(
    context: HookContext, request: TryRequest, choice: Choice, tried: Collection[str]
) -> str | None:
    """For a ``stuck`` choice: the backed-off builder to try now, out of turn (said), if one
    has not failed for this client yet (nor been ``tried`` so for this derivation)."""
    fresh = (n for n in choice.backed_off if n not in tried and not context.failed_for_client(n))
    name = next(fresh, None)
    if name is not None:
        context.say(retry_line(request.drv_path, name, _local(context, request)))
    return name


def say_declined(context: HookContext, request: TryRequest, choice: Choice) -> None:
    """Say why a ``stuck`` derivation is declined: once per client, builders and backoff, for
    the first derivation only they could build (a tester away from home: a line of 330
    characters for every derivation of a nix-build, hundreds in a system's), as Nix asks
    again about a declined derivation each time one of its builds ends."""
    until = _first_end(context, choice.backed_off)
    if context.first_for_client(f"declined {' '.join(choice.backed_off)} {until:.3f}"):
        line = declined_line(
            request.drv_path, choice.backed_off, until, _local(context, request),
            chosen=_left_out_by_use(context, request),
        )  # fmt: skip
        context.say(f"{line}; so is every other derivation only they could build, until then")


def given_up(context: HookContext, request: TryRequest, names: Collection[str]) -> OffloadError:
    """The error that ends an accepted derivation no builder is left for: ``names``, the
    builders that could build it, have all failed for this client (``to_retry`` found none
    to try) and are backed off, or were left out for this host's ssh (``faults_here``)."""
    backed_off = [name for name in names if name not in context.faults_here]
    if names and not backed_off:
        why = next(context.faults_here[name] for name in names)
        return OffloadError(
            f"no builder is left to build '{request.drv_path}': {why}", hint=SSHOPTS_FIX
        )
    names = backed_off
    builders = ", ".join(f"'{name}'" for name in names)
    return OffloadError(
        f"no builder is left to build '{request.drv_path}': only {builders} could, backed off "
        f"until {clock(_first_end(context, names))} after failing for this build",
        hint=f"`offload machines --reset {next(iter(names))}` once it answers, and build again",
    )


def _first_end(context: HookContext, names: Collection[str]) -> float:
    ends = [h.until for n in names if (h := context.backoff.get(n)) is not None]
    return min(ends, default=time.time())


def _local(context: HookContext, request: TryRequest) -> str:
    local = context.pool.local
    whole = context.whole.local if context.whole is not None else None
    if local is None and whole is not None:  # `offload use` leaves it out
        fits = whole.supports(request.system, sorted(request.features))
        return local_why(True, fits, chosen_out=fits, lacks=_lacks(whole, request))
    fits = local is not None and local.supports(request.system, sorted(request.features))
    return local_why(local is not None, fits, lacks=_lacks(local, request))


def _lacks(local: LocalMachine | None, request: TryRequest) -> str:
    """What of ``request``'s system and features the local machine lacks, as said (a tester
    read "its system or features")."""
    if local is None:
        return ""
    lacking = [] if request.system in (*local.systems, "builtin") else [f"system {request.system}"]
    if missing := sorted(set(request.features) - local.supported_features):
        lacking.append(f"feature{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return " and ".join(lacking)
