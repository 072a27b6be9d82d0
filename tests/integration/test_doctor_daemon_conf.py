"""`offload doctor` judges trust by the nix.conf the builder's nix-daemon reads, not the ssh
user's own.

Who is trusted and whether unsigned paths are taken is the daemon's to say, from its own
configuration (``/etc/nix/nix.conf`` under ``NIX_CONF_DIR``, with its includes, and root's own
files); the ``NIX_CONFIG`` of an ssh session, which ``nix show-config`` run there also reads,
never reaches it. A member whose session's NIX_CONFIG claims trust and turns off signatures,
beside a daemon that trusts nobody, is a failure, not an ``ok``.
"""

from __future__ import annotations

from pathlib import Path

from offload.fleet import Fleet, MemberSpec
from tests.helpers.doctor_runs import check, doctor, reports
from tests.helpers.fleets import private_fleet_fixture

claiming_fleet = private_fleet_fixture([MemberSpec.parse("dc:1:1:untrusted")])


def test_the_ssh_user_s_own_nix_conf_does_not_make_it_trusted(
    claiming_fleet: Fleet, tmp_path: Path
) -> None:
    # Its login shell (bash, which reads ~/.bashrc for ssh commands) sets NIX_CONFIG: every
    # command of the session sees it; the daemon, started apart, never does.
    bashrc = claiming_fleet.member("dc").root / "home" / ".bashrc"
    bashrc.write_text("export NIX_CONFIG='trusted-users = root\nrequire-sigs = false'\n")
    done = doctor(claiming_fleet, tmp_path, claiming_fleet.machines_file, "--json")
    assert done.returncode == 1, done.stderr + done.stdout
    trusted = check(reports(done)["dc"], "trusted")
    assert trusted["verdict"] == "fail", trusted
    assert "root is not in trusted-users" in trusted["detail"], trusted
