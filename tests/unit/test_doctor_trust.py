"""doctor's trust probe (``offload.doctor.trust``): its path as Nix would store it, and what the
real ``nix-store --serve`` says when it may not take it."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

import pytest

from offload.doctor.facts import trusted_check
from offload.doctor.model import Check, Verdict
from offload.doctor.trust import PROBE_NAME, probe_item, probed_trust_check, trust_probe_check
from offload.errors import RemoteError
from offload.process import spawn
from offload.protocol.serve import ServeClient
from offload.store.nar import Sink, file_nar, nar_hash_nix32
from offload.store.path import is_store_path


@pytest.mark.parametrize("contents", [b"", b"x", b"eight by", b"a longer text\n" * 100])
def test_a_files_nar_is_what_nix_dumps(tmp_path: Path, contents: bytes) -> None:
    file = tmp_path / "f"
    file.write_bytes(contents)
    dumped = subprocess.run(["nix-store", "--dump", str(file)], capture_output=True, check=True)
    assert file_nar(contents) == dumped.stdout


def test_the_probe_is_an_input_addressed_path_with_its_nars_hash() -> None:
    info, nar = probe_item()
    assert is_store_path(info.path)
    assert info.path.endswith(f"-{PROBE_NAME}")
    assert (info.nar_size, info.nar_hash) == (
        len(nar),
        nar_hash_nix32(hashlib.sha256(nar).hexdigest()),
    )
    assert (info.ca, info.sigs, info.references) == (None, (), ())  # nothing vouches for it
    assert probe_item() == (info, nar)  # the same path from every host, every time


def test_a_serve_program_without_write_refuses_it_and_the_fix_says_so() -> None:
    async def offer() -> str:
        async with spawn(["nix-store", "--serve"], stdin=True) as proc:
            assert proc.stdin is not None
            assert proc.stdout is not None
            client = ServeClient(proc.stdout, proc.stdin, stderr=proc.stderr, name="local")
            await client.handshake()
            info, nar = probe_item()

            async def push(sink: Sink) -> None:
                await sink(nar)

            with pytest.raises(RemoteError) as refused:
                await client.add_to_store_nar(info, push)
            return refused.value.message

    said = asyncio.run(offer())
    check = trust_probe_check(said, "root")
    assert check.verdict is Verdict.FAIL
    assert "importing paths is not allowed" in check.detail
    assert check.fix is not None
    assert "nix-store --serve --write" in check.fix


def test_taken_is_ok_a_daemons_refusal_fails_and_anything_else_is_unknown() -> None:
    assert trust_probe_check(None, "nixremote").verdict is Verdict.OK
    refused = "cannot add path '/nix/store/x' because it lacks a signature by a trusted key"
    failed = trust_probe_check(refused, "nixremote")
    assert failed.verdict is Verdict.FAIL
    assert failed.fix is not None
    assert failed.fix.startswith("add nixremote to trusted-users")
    lost = trust_probe_check("the connection ended", "nixremote")
    assert (lost.verdict, lost.detail) == (
        Verdict.UNKNOWN,
        "a probe path could not be sent: the connection ended",
    )


REFUSED = "cannot add path '/nix/store/x-offload-trust-probe' because it lacks a valid signature"


def conf_row(listed: bool | None) -> Check:
    """The row nix.conf alone gives for root through a daemon (``facts.trusted_check``)."""
    config = None if listed is None else {"trusted-users": "root" if listed else ""}
    return trusted_check("root", [], config, "no nix command", "daemon")


def probed(listed: bool | None, error: str | None, *, require_sigs: bool = True) -> Check:
    return probed_trust_check(listed, conf_row(listed), error, "root", require_sigs=require_sigs)


def test_listed_but_refused_by_the_running_daemon_fails_with_restart_as_the_fix() -> None:
    # nix.conf edited, the daemon not restarted: it still refuses every build offload sends.
    check = probed(True, REFUSED)
    assert check.verdict is Verdict.FAIL
    assert check.detail.startswith(
        "root is in trusted-users in the builder's nix.conf, but its running nix-daemon "
        f"refused an unsigned path from root ({REFUSED}): it has not read nix.conf since"
    )
    assert check.fix is not None
    assert check.fix.startswith("restart the builder's nix-daemon")


def test_the_daemon_s_answer_decides_and_nix_conf_says_why() -> None:
    assert probed(True, None).verdict is Verdict.OK
    assert probed(None, None).verdict is Verdict.OK
    unlisted = probed(False, REFUSED)
    assert (unlisted.verdict, unlisted.detail) == (Verdict.FAIL, conf_row(False).detail)
    assert unlisted.fix is not None
    assert unlisted.fix.endswith("and restart its nix-daemon")
    unread = probed(None, REFUSED)
    assert unread.verdict is Verdict.FAIL
    # Trusted now, by a daemon that read another nix.conf than the one there now.
    stale = probed(False, None)
    assert stale.verdict is Verdict.WARN
    assert "once the daemon restarts, it refuses the builds offload sends" in stale.detail


def test_where_the_probe_proves_nothing_nix_conf_is_said_to_be_the_source() -> None:
    lax = probed(False, None, require_sigs=False)
    assert lax.verdict is Verdict.FAIL
    assert lax.detail.endswith(
        "(read as its nix-daemon reads nix.conf, not the ssh session's settings; its "
        "nix-daemon checks no signatures (require-sigs = false): a probe proves nothing)"
    )
    lost = probed(True, "the connection ended")
    assert lost.verdict is Verdict.OK
    assert lost.detail == (
        "root is a trusted user (read as its nix-daemon reads nix.conf, not the ssh "
        "session's settings; a probe path could not be sent: the connection ended)"
    )
    unsent = probed(False, "the connection ended")
    assert unsent.fix is not None
    assert "restart" in unsent.fix
