"""offload-hook and a builder that stops answering over the connection the hook kept to it
(its sshd's session processes stopped, as a hung or suspended builder's are): Nix waits for
the hook's reply with every build of the nix-build, so the session it opens there is given the
connect timeout, not the master's keepalive budget and a new connection after it (16 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from offload.transport.persist import control_dir, master_alive
from tests.helpers.fleets import private_fleet_fixture, sessions_silent
from tests.helpers.hook_runs import nix_build
from tests.helpers.nix_files import SPEED, nix_file

hung_fleet = private_fleet_fixture([MemberSpec("hung", 1.0, 2)], "ofhh")
pytestmark = pytest.mark.usefixtures("coordinators_stopped")


def test_a_builder_silent_over_its_kept_connection_is_given_the_connect_timeout(
    hung_fleet: Fleet, tmp_path: Path
) -> None:
    first = nix_build(
        hung_fleet, tmp_path, nix_file(tmp_path, f'mk "first" "{SPEED} > $out" {{}}\n'), "-j0"
    )
    assert first.returncode == 0, first.stderr
    sockets = list(control_dir(tmp_path / "state").iterdir())
    assert any(master_alive(s) for s in sockets if s.is_socket())  # the kept connection
    with sessions_silent(hung_fleet.member("hung")):
        # Two at once: one goes to the session kept from the first build (it answered just
        # now, so it is lent unasked, and is lost once the keepalives end the connection);
        # the other needs a new session, over the silent connection, before Nix hears a reply.
        body = f'[ (mk "second" "{SPEED} > $out" {{}}) (mk "third" "{SPEED} > $out" {{}}) ]\n'
        done = nix_build(hung_fleet, tmp_path, nix_file(tmp_path, body, "second"), "-j0")
    failed = [line for line in done.stderr.splitlines() if "builder 'hung' failed" in line]
    assert any("no answer from hung in time" in line for line in failed), done.stderr
