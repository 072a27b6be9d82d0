"""What the machines line claims a builder builds, against what its Nix says it does.

Systems and features follow Nix's own rule on the builder (it refuses a derivation whose
system is neither ``system`` nor one of ``extra-platforms``, or whose required features are not
all in ``system-features``): a system or feature the line claims and the builder lacks fails
(builds sent for it fail there); a feature the builder has and the line does not claim only
warns (builds needing it are never sent: wasted). An unclaimed extra platform is normal (Nix
adds i686-linux on x86_64) and is only mentioned. A claimed system that is no real one but
close to one the builder has (``x86_64-linx``) is said as the typo it is, with the system
meant: removing it would leave the line without that one; a claimed feature close to one the
builder has and the line does not claim (``big-paralel``), with the one likely meant (features
are free words: it may be no typo). Pure functions of ``nix show-config``'s
answer (``facts.NixConfig``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from offload.config.machines.check import real_system
from offload.doctor.facts import NixConfig, cannot_tell, words
from offload.doctor.model import Check, Verdict
from offload.spelling import meant

__all__ = ["features_check", "systems_check"]


def systems_check(
    claimed: Sequence[str],
    config: NixConfig | None,
    error: str,
    line: str = "the machines line",
    *,
    table: str | None = None,
) -> Check:
    """The systems the machines line at ``line`` claims, against the builder's; ``table``:
    the offload.toml table that set them instead, where the fix goes."""
    if not config or "system" not in config:
        return cannot_tell("systems", error)
    real = {config["system"]} | words(config, "extra-platforms")
    lacking = [s for s in claimed if s not in real]
    unclaimed = sorted(real - set(claimed))
    if lacking:
        place = f"`systems` in {table}" if table else f"column 2 of {line}"
        return _lacking_systems(lacking, unclaimed, sorted(real), place)
    more = f" (could also build {', '.join(unclaimed)})" if unclaimed else ""
    own = config["system"]
    if own not in claimed:
        # Its own system's builds (most of them) never go there: said, as a feature it has
        # and the line leaves out is (an i686-linux line for an x86_64 builder passed).
        place = f"`systems` in {table}" if table else f"column 2 of {line}"
        return Check(
            "systems",
            Verdict.WARN,
            f"claims {', '.join(claimed)}, not the builder's own {own}: no {own} build goes"
            f" there{more}",
            f"add {own} to {place}",
        )
    return Check("systems", Verdict.OK, f"{', '.join(claimed)}{more}")


def _typo_of(system: str, has: Sequence[str]) -> str | None:
    """The system of ``has`` that ``system`` misspells, or None: a real one is no typo."""
    return None if real_system(system) else meant(system, has, cutoff=0.8)


def _lacking_systems(
    lacking: Sequence[str], unclaimed: Sequence[str], real: Sequence[str], place: str
) -> Check:
    """A line claiming systems the builder lacks. One close to a system the builder has and
    the line does not claim (``x86_64-linx``) is a typo: removing it, as for a system the
    builder cannot build, would leave the line without the one it meant."""
    meant_for = {s: match for s in lacking if (match := _typo_of(s, unclaimed)) is not None}
    said = [f"{s} (did you mean {meant_for[s]}?)" if s in meant_for else s for s in lacking]
    others = [s for s in lacking if s not in meant_for]
    fixes = [f"write {meant_for[s]} for {s} in {place}" for s in meant_for]
    if others:
        fixes.append(
            f"remove {', '.join(others)} from {place}, or add "
            f"{'it' if len(others) == 1 else 'them'} to the builder's extra-platforms "
            "(with binfmt emulation for other CPUs)"
        )
    return Check(
        "systems",
        Verdict.FAIL,
        f"claims {', '.join(said)}, but the builder builds only {', '.join(real)}",
        "; ".join(fixes),
    )


def features_check(
    supported: Collection[str],
    mandatory: Collection[str],
    config: NixConfig | None,
    error: str,
    line: str = "the machines line",
    *,
    table: str | None = None,
) -> Check:
    """The features the machines line at ``line`` claims, against the builder's; ``table``:
    the offload.toml table that set them instead, where the fix goes."""
    claimed_at = f"`supported-features` in {table}" if table else f"columns 6-7 of {line}"
    supported_at = (
        f"`supported-features` in {table}" if table else f"column 6 (supported features) of {line}"
    )
    if not config or "system-features" not in config:
        return cannot_tell("features", error)
    real = words(config, "system-features")
    claimed = set(supported) | set(mandatory)
    lacking = sorted(claimed - real)
    unclaimed = sorted(real - claimed)
    if lacking:
        # One close to a feature the builder has and the line does not claim is likely a typo:
        # removing it would leave the line without the one meant (builds needing it never go).
        meant_for = {f: match for f in lacking if (match := meant(f, unclaimed, 0.8)) is not None}
        said = [f"{f} (did you mean {meant_for[f]}?)" if f in meant_for else f for f in lacking]
        fix = f"remove it from {claimed_at}"
        if meant_for:
            swaps = ", ".join(f"{meant_for[f]} for {f}" for f in meant_for)
            fix = f"write {swaps} in {claimed_at}, if meant; else remove it there"
        return Check(
            "features",
            Verdict.FAIL,
            f"claims {', '.join(said)}, which the builder lacks: builds needing it fail there",
            f"{fix}, or add it to system-features in the builder's nix.conf (NixOS: "
            "nix.settings.system-features)",
        )
    them = "it" if len(unclaimed) == 1 else "them"
    if unclaimed and mandatory:
        # Only builds requiring every mandatory feature go there: claiming more changes little
        # (a tester read "add benchmark, big-parallel, kvm, nixos-test" for an ARM board's).
        mandatory_said = ", ".join(sorted(mandatory))
        return Check(
            "features",
            Verdict.OK,
            f"{', '.join(sorted(claimed))}; only builds requiring {mandatory_said} go there"
            f" (it also has {', '.join(unclaimed)}, not claimed)",
        )
    if unclaimed:
        return Check(
            "features",
            Verdict.WARN,
            f"the builder has {', '.join(unclaimed)}, not claimed: "
            f"builds needing {them} never go there",
            f"add {them} to {supported_at}",
        )
    return Check("features", Verdict.OK, ", ".join(sorted(claimed)) or "none")
