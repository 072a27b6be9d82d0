"""Trust asked of the running nix-daemon itself: by offering the builder an unsigned path.

A key restricted to the serve program or the daemon runs no command of doctor's, so the builder's
``trusted-users`` cannot be read (``facts.trusted_check``), and a Nix daemon before 2.15 does
not say whether it trusts the user (``facts.daemon_trust``). Where it can be read, nix.conf is
what the daemon read when it started: edited since without a restart, it says "trusted" while
the daemon still refuses every build. What offload needs from trust is
that the builder takes what it sends: derivations to build and unsigned inputs. So doctor sends
one unsigned path, as a copy of an input goes: a tiny file, input-addressed (a content-addressed
path needs no signature, so it would prove nothing), the same path from every host. A Nix that
writes its store itself, or a daemon that trusts the user, takes it (it stays there, unreferenced,
for the builder's garbage collector; a second probe finds it valid and adds nothing); a daemon
that does not trust the user refuses it in the words ``protocol.trust`` knows, and so does a serve
program started without ``--write``, which refuses every input.

So the probe is offered wherever a nix-daemon may ask (not where the user writes the store
itself), restricted key or not, unless the daemon said whose trust it is. On an unrestricted
builder ``probed_trust_check`` weighs it against nix.conf: the daemon's answer decides, and
nix.conf says why (listed but refused: the daemon has not read it since; taken but not listed:
it will refuse once restarted). A daemon that checks no signatures (``require-sigs = false``)
takes any path from anyone, so there the probe proves nothing and nix.conf is all there is.
"""

from __future__ import annotations

import hashlib

from offload.doctor.model import Check, Verdict
from offload.protocol.records import PathInfo
from offload.protocol.trust import is_untrusted
from offload.store.nar import file_nar, nar_hash_nix32
from offload.store.path import STORE_DIR, nix32_encode

__all__ = ["PROBE_NAME", "probe_item", "probed_trust_check", "trust_probe_check"]

PROBE_NAME = "offload-trust-probe"
_CONTENTS = b"offload doctor: does this builder take unsigned paths from its ssh user?\n"
_NO_WRITE = "importing paths is not allowed"  # nix-store --serve without --write
_RESTART = (
    "restart the builder's nix-daemon (systemd: `systemctl restart nix-daemon`): it reads "
    "trusted-users when it starts, and only from its own nix.conf (/etc/nix/nix.conf), not a "
    "user's"
)


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


def probed_trust_check(
    listed: bool | None, conf: Check, error: str | None, user: str, *, require_sigs: bool
) -> Check:
    """The ``trusted`` row of an unrestricted builder where a nix-daemon may ask: ``listed``
    says whether its nix.conf lists ``user`` (``facts.listed_trusted``; None: unread), ``conf``
    is the row nix.conf alone gives (``facts.trusted_check``), ``error`` the probe's outcome
    (None: the daemon took the path)."""
    said = " ".join(error.split()) if error is not None else ""
    refused = error is not None and is_untrusted(said)
    if not require_sigs or not (error is None or refused or _NO_WRITE in said):
        why = (
            "its nix-daemon checks no signatures (require-sigs = false): a probe proves nothing"
            if not require_sigs
            else f"a probe path could not be sent: {said}"
        )
        fix = conf.fix if conf.fix is None or "restart" in conf.fix else f"{conf.fix}; {_RESTART}"
        return Check(
            "trusted",
            conf.verdict,
            f"{conf.detail} (read as its nix-daemon reads nix.conf, not the ssh session's "
            f"settings; {why})",
            fix,
        )
    if refused and listed:
        return Check(
            "trusted",
            Verdict.FAIL,
            f"{user} is in trusted-users in the builder's nix.conf, but its running nix-daemon "
            f"refused an unsigned path from {user} ({said}): it has not read nix.conf since, and "
            "refuses the derivations and unsigned inputs offload sends",
            _RESTART,
        )
    if refused and listed is False:
        return Check("trusted", Verdict.FAIL, conf.detail, conf.fix)
    if error is None and listed is False:
        return Check(
            "trusted",
            Verdict.WARN,
            f"the running nix-daemon trusts {user} (it took an unsigned path, a probe: "
            f"{PROBE_NAME}), but the builder's nix.conf does not list {user} in trusted-users: "
            "once the daemon restarts, it refuses the builds offload sends",
            f"add {user} to trusted-users in the builder's nix.conf "
            "(NixOS: nix.settings.trusted-users)",
        )
    return trust_probe_check(error, user)
