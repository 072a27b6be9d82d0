"""`offload doctor` judges trust by the nix.conf the builder's nix-daemon reads, not the ssh
user's own.

Who is trusted and whether unsigned paths are taken is the daemon's to say, from its own
configuration (``/etc/nix/nix.conf`` under the daemon's own ``NIX_CONF_DIR``, with its
includes, and root's own files); the ``NIX_CONFIG`` or ``NIX_CONF_DIR`` of an ssh session, which
``nix show-config`` run there also reads, never reaches it. A member whose session's NIX_CONFIG,
or a nix.conf in its session's NIX_CONF_DIR, claims trust and turns off signatures, beside a
daemon that trusts nobody, is a failure, not an ``ok``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from tests.helpers.doctor_runs import check, doctor, reports
from tests.helpers.fleets import private_fleet_fixture

claiming_fleet = private_fleet_fixture([MemberSpec.parse("dc:1:1:untrusted")], scope="module")


@pytest.fixture
def bashrc(claiming_fleet: Fleet) -> Iterator[Path]:
    """The member's root ~/.bashrc, read by bash for every ssh command; removed after."""
    path = claiming_fleet.member("dc").root / "home" / ".bashrc"
    yield path
    path.unlink(missing_ok=True)


def test_the_ssh_user_s_own_nix_conf_does_not_make_it_trusted(
    claiming_fleet: Fleet, tmp_path: Path, bashrc: Path
) -> None:
    # Its login shell (bash, which reads ~/.bashrc for ssh commands) sets NIX_CONFIG: every
    # command of the session sees it; the daemon, started apart, never does.
    bashrc.write_text("export NIX_CONFIG='trusted-users = root\nrequire-sigs = false'\n")
    done = doctor(claiming_fleet, tmp_path, claiming_fleet.machines_file, "--json")
    assert done.returncode == 1, done.stderr + done.stdout
    trusted = check(reports(done)["dc"], "trusted")
    assert trusted["verdict"] == "fail", trusted
    assert "root is not in trusted-users" in trusted["detail"], trusted


def test_the_ssh_session_s_nix_conf_dir_is_not_the_daemon_s(
    claiming_fleet: Fleet, tmp_path: Path, bashrc: Path
) -> None:
    # The session's NIX_CONF_DIR names a nix.conf of the user's (the member's own settings,
    # then claims): the daemon reads its own (/etc/nix here, as its environment says). doctor
    # read the session's, and said ok.
    bashrc.write_text(
        'mkdir -p "$HOME/claims"; { cat /etc/nix/nix.conf; printf "%s\\n" '
        "'trusted-users = root' 'require-sigs = false'; } > \"$HOME/claims/nix.conf\"; "
        'export NIX_CONF_DIR="$HOME/claims"\n'
    )
    done = doctor(claiming_fleet, tmp_path, claiming_fleet.machines_file, "--json")
    assert done.returncode == 1, done.stderr + done.stdout
    trusted = check(reports(done)["dc"], "trusted")
    assert trusted["verdict"] == "fail", trusted
    assert "root is not in trusted-users" in trusted["detail"], trusted
