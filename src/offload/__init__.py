"""offload: distribute Nix builds over the local machine and SSH builders.

The package root imports nothing: ``offload-hook`` starts once per derivation Nix builds
remotely, and every millisecond of its start is a millisecond Nix waits. Errors live in
``offload.errors``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
