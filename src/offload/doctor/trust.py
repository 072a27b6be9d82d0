"""Trust asked the only way a restricted key allows: by offering the builder an unsigned path.

A key restricted to the serve program or the daemon runs no command of doctor's, so the builder's
``trusted-users`` cannot be read (``facts.trusted_check``), and a Nix daemon before 2.15 does
not say whether it trusts the user (``facts.daemon_trust``). What offload needs from trust is
that the builder takes what it sends: derivations to build and unsigned inputs. So doctor sends
one unsigned path, as a copy of an input goes: a tiny file, input-addressed (a content-addressed
path needs no signature, so it would prove nothing), the same path from every host. A Nix that
writes its store itself, or a daemon that trusts the user, takes it (it stays there, unreferenced,
for the builder's garbage collector; a second probe finds it valid and adds nothing); a daemon
that does not trust the user refuses it in the words ``protocol.trust`` knows, and so does a serve
program started without ``--write``, which refuses every input.
"""

from __future__ import annotations

import hashlib

from offload.doctor.model import Check, Verdict
from offload.protocol.records import PathInfo
from offload.protocol.trust import is_untrusted
from offload.store.nar import file_nar, nar_hash_nix32
from offload.store.path import STORE_DIR, nix32_encode

__all__ = ["PROBE_NAME", "probe_item", "trust_probe_check"]

PROBE_NAME = "offload-trust-probe"
_CONTENTS = b"offload doctor: does this builder take unsigned paths from its ssh user?\n"
_NO_WRITE = "importing paths is not allowed"  # nix-store --serve without --write


def probe_item(store_dir: str = STORE_DIR) -> tuple[PathInfo, bytes]:
    """The probe path's info (no signature, no content address) and its NAR."""
    nar = file_nar(_CONTENTS)
    digest = hashlib.sha256(b"offload-trust-probe-1\0" + _CONTENTS).digest()[:20]
    info = PathInfo(
        path=f"{store_dir}/{nix32_encode(digest)}-{PROBE_NAME}",
        deriver=None,
        references=(),
        nar_size=len(nar),
        nar_hash=nar_hash_nix32(hashlib.sha256(nar).hexdigest()),
    )
    return info, nar


def trust_probe_check(error: str | None, user: str) -> Check:
    """The ``trusted`` row from the probe's outcome: ``error`` is what the builder said when
    it did not take the path (None: it did)."""
    if error is None:
        return Check(
            "trusted",
            Verdict.OK,
            f"the builder took an unsigned path from {user} (a probe, {PROBE_NAME}): it takes "
            "the derivations and inputs offload sends",
        )
    detail = " ".join(error.split())
    if _NO_WRITE in detail:
        return Check(
            "trusted",
            Verdict.FAIL,
            f"the builder's serve program refused an unsigned path ({detail}): it was started "
            "without --write and refuses every input offload sends",
            "restrict the key to `nix-store --serve --write` (NixOS: nix.sshServe.write = true)",
        )
    if is_untrusted(detail):
        return Check(
            "trusted",
            Verdict.FAIL,
            f"the builder's nix-daemon refused an unsigned path from {user} ({detail}): it "
            "refuses the derivations and unsigned inputs offload sends",
            f"add {user} to trusted-users in the builder's nix.conf "
            "(NixOS: nix.settings.trusted-users) and restart its nix-daemon",
        )
    return Check("trusted", Verdict.UNKNOWN, f"a probe path could not be sent: {detail}")
