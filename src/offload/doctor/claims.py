"""What the machines line claims a builder builds, against what its Nix says it does.

Systems and features follow Nix's own rule on the builder (it refuses a derivation whose
system is neither ``system`` nor one of ``extra-platforms``, or whose required features are not
all in ``system-features``): a system or feature the line claims and the builder lacks fails
(builds sent for it fail there); a feature the builder has and the line does not claim only
warns (builds needing it are never sent: wasted). An unclaimed extra platform is normal (Nix
adds i686-linux on x86_64) and is only mentioned. Pure functions of ``nix show-config``'s
answer (``facts.NixConfig``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from offload.doctor.facts import NixConfig, cannot_tell, words
from offload.doctor.model import Check, Verdict

__all__ = ["features_check", "systems_check"]


def systems_check(
    claimed: Sequence[str], config: NixConfig | None, error: str, line: str = "the machines line"
) -> Check:
    """The systems the machines line at ``line`` claims, against the builder's."""
    if not config or "system" not in config:
        return cannot_tell("systems", error)
    real = {config["system"]} | words(config, "extra-platforms")
    lacking = [s for s in claimed if s not in real]
    if lacking:
        return Check(
            "systems",
            Verdict.FAIL,
            f"claims {', '.join(lacking)}, but the builder builds only {', '.join(sorted(real))}",
            f"remove them from column 2 of {line}, or add them to the builder's "
            "extra-platforms (with binfmt emulation for other CPUs)",
        )
    unclaimed = sorted(real - set(claimed))
    more = f" (could also build {', '.join(unclaimed)})" if unclaimed else ""
    return Check("systems", Verdict.OK, f"{', '.join(claimed)}{more}")


def features_check(
    supported: Collection[str],
    mandatory: Collection[str],
    config: NixConfig | None,
    error: str,
    line: str = "the machines line",
) -> Check:
    """The features the machines line at ``line`` claims, against the builder's."""
    if not config or "system-features" not in config:
        return cannot_tell("features", error)
    real = words(config, "system-features")
    claimed = set(supported) | set(mandatory)
    lacking = sorted(claimed - real)
    if lacking:
        return Check(
            "features",
            Verdict.FAIL,
            f"claims {', '.join(lacking)}, which the builder lacks: builds needing it fail there",
            f"remove it from columns 6-7 of {line}, or add it to system-features "
            "in the builder's nix.conf (NixOS: nix.settings.system-features)",
        )
    unclaimed = sorted(real - claimed)
    if unclaimed:
        return Check(
            "features",
            Verdict.WARN,
            f"the builder has {', '.join(unclaimed)}, not claimed: "
            "builds needing it never go there",
            f"add it to column 6 (supported features) of {line}",
        )
    return Check("features", Verdict.OK, ", ".join(sorted(claimed)) or "none")
