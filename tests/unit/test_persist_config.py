"""A kept ssh master is named by the ssh config it was opened under, too: a config mended
after a failed run (doctor's hint) gets a new master, not the one the old config opened."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from offload.transport import persist
from offload.transport.persist import SharedPaths, config_stamp
from offload.transport.ssh import SshTarget

TARGET = SshTarget("builder.example")


def test_the_f_file_names_the_master_and_a_change_there_makes_another(tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    config.write_text("Host builder.example\n  User nix\n")
    before = SharedPaths(tmp_path, TARGET, f"-F {config}").control
    config.write_text("Host builder.example\n  User builder\n")
    after = SharedPaths(tmp_path, TARGET, f"-F {config}").control
    assert after != before
    config.write_text("Host builder.example\n  User nix\n")
    assert SharedPaths(tmp_path, TARGET, f"-F {config}").control == before


def test_the_last_f_counts_and_none_reads_nothing(tmp_path: Path) -> None:
    first, last = tmp_path / "first", tmp_path / "last"
    first.write_text("Port 22\n")
    last.write_text("Port 2222\n")
    stamp = config_stamp(["-F", str(first), "-F", str(last)])
    first.write_text("Port 23\n")
    assert config_stamp(["-F", str(first), "-F", str(last)]) == stamp
    last.write_text("Port 2223\n")
    assert config_stamp(["-F", str(first), "-F", str(last)]) != stamp
    assert config_stamp(["-F", "none"]) == config_stamp([f"-F{first}", "-F", "none"])
    assert config_stamp([f"-F{last}"]) == config_stamp(["-F", str(last)])
    # As ssh's getopt reads them: bundled after another flag, or the argument of another.
    assert config_stamp(["-qF", str(last)]) == config_stamp(["-F", str(last)])
    assert config_stamp(["-i", "-Fnot-a-config", "-F", str(last)]) == config_stamp([f"-F{last}"])
    # An unreadable file counts as empty, never as an error.
    assert config_stamp(["-F", str(tmp_path / "missing")]) == config_stamp(["-F", "/dev/null"])


def test_without_f_the_users_config_under_the_password_home_and_the_systems_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    system = tmp_path / "ssh_config"
    system.write_text("Host *\n")
    entry = list(pwd.getpwuid(os.getuid()))
    entry[5] = str(home)  # pw_dir
    monkeypatch.setattr(pwd, "getpwuid", lambda _uid: pwd.struct_passwd(entry))
    monkeypatch.setattr(persist, "SYSTEM_CONFIG", system)
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))  # ssh does not read $HOME
    stamp = config_stamp([])
    (home / ".ssh" / "config").write_text("Host builder.example\n  IdentityFile ~/.ssh/k\n")
    user_changed = config_stamp([])
    system.write_text("Host *\n  Compression yes\n")
    assert len({stamp, user_changed, config_stamp([])}) == 3
    # With -F neither is read.
    given = tmp_path / "given"
    given.write_text("")
    with_f = config_stamp(["-F", str(given)])
    system.write_text("Host *\n  Compression no\n")
    assert config_stamp(["-F", str(given)]) == with_f
