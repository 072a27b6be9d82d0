"""What the build-log tests share: two derivation paths and a clock they set by hand."""

from __future__ import annotations

__all__ = ["DRV", "OTHER", "T0", "Clock"]

DRV = "/nix/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-hello-2.12.drv"
OTHER = "/nix/store/1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b-other-1.drv"
T0 = 1_700_000_000.0


class Clock:
    """A wall clock that says ``now`` until a test moves it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
