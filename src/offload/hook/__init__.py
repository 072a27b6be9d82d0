"""``offload-hook``: offload's decisions inside Nix's own builds (Nix's ``build-hook``).

Set ``build-hook = /path/to/offload-hook`` (``offload hook install --print`` prints the line for
this installation) and every build Nix runs, ``nix-build``, ``nix build``, ``nixos-rebuild`` and
the nix-daemon's, asks offload where each derivation should go.

The rooms: ``client`` is the hook process Nix starts (standard library only: it hands its pipes
to the coordinator and waits); ``coordinator`` is the long-lived process that serves every hook
of a user; ``serve`` is one hook served from its settings to its exit code; ``wire`` the
protocol; ``decide`` the decision; ``dispatch`` where the coordinator keeps accepted
derivations until a builder slot is worth taking; ``full`` the builders full of other
clients' builds that they wait for or move off; ``run`` an accepted build from slot to exit
code; ``links``
the serve sessions kept between builds; ``remote`` and ``home`` the build and its outputs;
``context`` what a hook knows; ``local_queue`` and ``guard`` the details they need.

This module imports only the client, so Nix's hook process starts in milliseconds.
"""

from __future__ import annotations

from offload.hook.client import main

__all__ = ["main"]
