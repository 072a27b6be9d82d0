"""Nix build-hook entry point (``build-hook = /path/to/offload-hook``).

Not implemented yet: it declines permanently so Nix builds locally, as it does without a hook.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> int:
    print("offload-hook: not yet implemented; declining", file=sys.stderr)
    sys.stderr.write("# decline-permanently\n")
    sys.stderr.flush()
    return 0
