"""A builder's Nix refusing a derivation for a system or feature it lacks, in each Nix's words
(read in Nix's source at each tag: a review found only 2.8's matched), points at the machines
line and doctor; other failures do not."""

from __future__ import annotations

import pytest

from offload.platform_refusal import claimed_not_had

D = "/nix/store/00000000000000000000000000000000-x.drv"


OLD = f"a 'aarch64-linux' with features {{}} is required to build '{D}', but I am a 'x86_64-linux'"
NEW = f"Cannot build '{D}'.\nReason: \x1b[31;1mrequired system or feature not available\x1b[0m"
NEWEST = f"Cannot build '{D}'.\nReason: platform mismatch\nRequired system: 'aarch64-linux'"
FEATURES = f"Cannot build '{D}'.\nReason: missing system features\nRequired features: {{cuda}}"


@pytest.mark.parametrize(
    "said",
    [
        OLD + " with features {kvm}",  # 2.8-2.29
        NEW + "\nRequired system: 'aarch64-linux' with features {}",  # 2.30-2.34
        NEWEST + "\nCurrent system: 'x86_64-linux'",  # 2.35
        FEATURES + "\nAvailable features: {kvm}",  # 2.35
    ],
)
def test_each_nixs_refusal_points_at_the_line_and_doctor(said: str) -> None:
    hint = claimed_not_had(said, "arm")
    assert hint is not None
    assert "machines line of 'arm'" in hint
    assert "`offload doctor arm`" in hint


def test_a_build_that_failed_otherwise_is_not_that_refusal() -> None:
    assert claimed_not_had(f"builder for '{D}' failed with exit code 1", "arm") is None
    assert claimed_not_had(f"Cannot build '{D}'.\nReason: builder failed", "arm") is None
