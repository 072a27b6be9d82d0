"""What `offload setup` writes, read by the real programs: Nix 2.8 parses and evaluates every
Nix file (the NixOS modules applied to a stub ``config``, since there is no nixpkgs here),
takes the nix.conf lines, sshd takes the sshd lines, and ssh-keygen agrees on the key."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from offload.setup.builder import (
    CLIENT_ALIVE_COUNT_MAX,
    CLIENT_ALIVE_INTERVAL,
    TUNING,
    BuilderSetup,
    builder_files,
    sshd_lines,
)
from offload.setup.client import Builder, ClientSetup, client_files, ssh_config_text
from offload.setup.nix_text import indented, nix_string
from offload.setup.values import Target, parse_public_key

HOSTILE = ['a"b', "c\\d", '${builtins.abort "x"}', "$x ${", "''", "'", "'''${", "e\nf", "\tg"]


@pytest.fixture
def key(tmp_path: Path) -> Any:
    path = tmp_path / "k"
    comment = "o'ff\"lo${ad}\\ ''$"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True)  # fmt: skip
    return parse_public_key(path.with_name("k.pub").read_text(), "k.pub")


def nix_eval(expr: str) -> Any:
    done = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def parses(path: Path) -> None:
    done = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("text", HOSTILE)
def test_nix_strings_evaluate_to_exactly_the_text(text: str) -> None:
    assert nix_eval(nix_string(text)) == text


@pytest.mark.parametrize("text", [f"{t}\n" for t in HOSTILE if "\n" not in t] + ["a\n\nb\n"])
def test_indented_strings_evaluate_to_exactly_the_text(text: str) -> None:
    assert nix_eval(indented(text, "    ")) == text


@pytest.mark.parametrize(
    ("restricted", "scheme", "program"),
    [(True, "ssh", "nix-store --serve --write"), (False, "ssh", ""),
     (True, "ssh-ng", "nix-daemon --stdio")],
)  # fmt: skip
def test_the_builder_module_parses_and_says_what_it_should(
    tmp_path: Path, key: Any, restricted: bool, scheme: str, program: str
) -> None:
    setup = BuilderSetup("nixremote", key, restricted, scheme)
    module = tmp_path / "offload-builder.nix"
    module.write_text(dict(builder_files(setup))["offload-builder.nix"])
    parses(module)
    # nixpkgs' lib.mkDefault, as lib/modules.nix defines it (mkOverride 1000).
    lib = '{ mkDefault = content: { _type = "override"; priority = 1000; inherit content; }; }'
    got = nix_eval(f'import {module} {{ config.nix.package = "/nix/store/x-nix"; lib = {lib}; }}')
    user = got["users"]["users"]["nixremote"]
    prefix = f'restrict,command="/nix/store/x-nix/bin/{program}" '
    keys = user["openssh"]["authorizedKeys"]["keys"]
    assert keys == [(prefix if restricted else "restrict ") + key.line]
    assert (user["isSystemUser"], user["group"], user["useDefaultShell"]) == (
        True, "nixremote", True,
    )  # fmt: skip
    # A home it may write: /var/empty, a system user's, holds no slot counts.
    assert (user["home"], user["createHome"]) == ("/var/lib/nixremote", True)
    assert got["users"]["groups"] == {"nixremote": {}}
    settings = got["nix"]["settings"]
    assert settings["trusted-users"] == ["root", "nixremote"]  # merged with the user's
    # The tuning gives way to the user's own values (a plain one would conflict with them).
    assert (settings["min-free"], settings["max-free"]) == (
        _default(1024**3),
        _default(10 * 1024**3),
    )
    # NixOS's own defaults ("auto", 0), left to it: a mkDefault here met an older
    # hardware-configuration.nix's nix.maxJobs = lib.mkDefault 8 at the same priority, and
    # the evaluation stopped ("conflicting definition values").
    assert "max-jobs" not in settings
    assert "cores" not in settings
    assert got["nix"]["nrBuildUsers"] == _default(64)
    assert got["services"]["openssh"]["extraConfig"] == sshd_lines(setup)
    limits = got["systemd"]["services"]["nix-daemon"]["serviceConfig"]
    assert limits == {
        "MemoryAccounting": _default(True), "MemoryMax": _default("90%"),
        "OOMScoreAdjust": _default(500),
    }  # fmt: skip


def _default(value: object) -> dict[str, object]:
    return {"_type": "override", "priority": 1000, "content": value}


def test_the_builder_script_is_valid_sh(tmp_path: Path, key: Any) -> None:
    script = tmp_path / "offload-builder.sh"
    script.write_text(dict(builder_files(BuilderSetup("nixremote", key)))["offload-builder.sh"])
    done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_the_builder_script_ends_a_files_last_line_before_it_appends(
    tmp_path: Path, key: Any
) -> None:
    # An sshd_config whose last line had no newline became "...sftp-serverMatch User
    # nixremote": every restriction for the build user applied to every user.
    text = dict(builder_files(BuilderSetup("nixremote", key)))["offload-builder.sh"]
    start = text.index("ended() {")
    function = text[start : text.index("\n}\n", start) + 3]
    for appended in ('cp -p /etc/nix/nix.conf "$new"', "cp -p /etc/ssh/sshd_config "):
        at = text.index(appended)
        assert text[text.index("\n", at) + 1 :].lstrip().startswith("ended "), appended
    files = {"unended": "Subsystem sftp /usr/lib/openssh/sftp-server", "ended": "a\n", "empty": ""}
    for name, content in files.items():
        (tmp_path / name).write_text(content)
        subprocess.run(
            ["sh", "-c", f'{function}ended "$1"', "sh", str(tmp_path / name)], check=True
        )
    assert (tmp_path / "unended").read_text() == files["unended"] + "\n"
    assert (tmp_path / "ended").read_text() == "a\n"
    assert (tmp_path / "empty").read_text() == ""


def test_the_keys_command_runs_the_system_profiles_nix_store(tmp_path: Path, key: Any) -> None:
    # Root's PATH may start at /root/.nix-profile (0700): the build user could not run it.
    text = dict(builder_files(BuilderSetup("nixremote", key)))["offload-builder.sh"]
    profile = "/nix/var/nix/profiles/default/bin/nix-store"
    start = text.index(f"program={profile}")
    choose = text[start : text.index("install Nix first", start)]
    choose = choose[: choose.rindex("\n")]  # up to the line that fails
    assert '"$program"' in text[text.index("want=$(") :].splitlines()[0]
    system, roots = tmp_path / "profile" / "nix-store", tmp_path / "root-profile"
    for program in (system, roots / "nix-store"):
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    script = choose.replace(profile, str(system)) + " exit 1\necho $program"
    env = {**os.environ, "PATH": f"{roots}:{os.environ['PATH']}"}

    def chosen() -> str:
        return subprocess.run(
            ["sh", "-c", script], env=env, capture_output=True, text=True, check=True
        ).stdout

    assert chosen() == f"{system}\n"
    system.unlink()  # no system profile: PATH's
    assert chosen() == f"{roots / 'nix-store'}\n"


def test_nix_takes_the_nix_conf_lines(tmp_path: Path, key: Any) -> None:
    # What the script appends to a nix.conf that sets none of them (test_setup_script.py).
    tuning = "".join(f"{name} = {value}\n" for name, value in TUNING)
    (tmp_path / "nix.conf").write_text("trusted-users = root\nextra-trusted-users = nixremote\n"
                                       + tuning)  # fmt: skip
    env = {**os.environ, "NIX_CONF_DIR": str(tmp_path), "NIX_USER_CONF_FILES": ""}
    env.pop("NIX_CONFIG", None)
    done = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "show-config"],
                          env=env, capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, done.stderr
    shown = dict(line.split(" = ", 1) for line in done.stdout.splitlines() if " = " in line)
    assert shown["trusted-users"].split() == ["root", "nixremote"]
    assert shown["min-free"] == str(1024**3)
    assert shown["max-jobs"] == str(os.cpu_count())


def test_sshd_takes_the_sshd_lines(tmp_path: Path, key: Any) -> None:
    host_key = tmp_path / "host"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
                   check=True)  # fmt: skip
    config = tmp_path / "sshd_config"
    config.write_text(f"HostKey {host_key}\nUsePAM no\n" + sshd_lines(BuilderSetup("nixr", key)))
    done = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(config)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    query = ["/usr/sbin/sshd", "-T", "-f", str(config), "-C", "user=nixr,host=h,addr=127.0.0.1"]
    shown = subprocess.run(query, capture_output=True, text=True, check=True).stdout
    assert "permittty no" in shown
    assert "allowtcpforwarding no" in shown
    # A client host gone without closing its connections loses them (and its builds) in 1 min.
    assert f"clientaliveinterval {CLIENT_ALIVE_INTERVAL}" in shown
    assert f"clientalivecountmax {CLIENT_ALIVE_COUNT_MAX}" in shown


@pytest.mark.parametrize("scheme", ["ssh", "ssh-ng"])
def test_the_client_module_parses_and_says_what_it_should(
    tmp_path: Path, key: Any, scheme: str
) -> None:
    builders = (
        Builder(Target("fast", "127.0.0.1", 2201), key, ("x86_64-linux",), ("kvm",), 4, 3),
        Builder(Target("127.0.0.1-2202", "127.0.0.1", 2202), key, ("x86_64-linux",), (), 1, 1),
    )
    setup = ClientSetup("nixremote", "/etc/nix/offload_ed25519", builders, scheme)
    module = tmp_path / "offload-client.nix"
    module.write_text(dict(client_files(setup))["offload-client.nix"])
    parses(module)
    got = nix_eval(f"import {module} {{ }}")
    assert got["nix"]["distributedBuilds"] is True
    assert got["nix"]["settings"] == {"builders-use-substitutes": True}
    first, second = got["nix"]["buildMachines"]
    assert first["hostName"] == "fast"
    assert (first["maxJobs"], first["speedFactor"], first["supportedFeatures"]) == (4, 3, ["kvm"])
    assert first["sshKey"] == "/etc/nix/offload_ed25519"
    assert first["sshUser"] == "nixremote"
    assert second["supportedFeatures"] == []
    # NixOS's nix.buildMachines.*.protocol, "ssh" by default (22.11 on).
    assert first.get("protocol", "ssh") == second.get("protocol", "ssh") == scheme
    assert base64.b64decode(first["publicHostKey"]).decode() == key.bare
    assert got["programs"]["ssh"]["extraConfig"] == ssh_config_text(setup)
    assert got["programs"]["ssh"]["knownHosts"]["127.0.0.1-2202"] == {"publicKey": key.bare}


def run_setup(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "offload", "setup", *args], env=env,
                          capture_output=True, text=True, check=False, timeout=60)  # fmt: skip


def test_setup_key_makes_a_private_pair_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "new" / "key"
    done = run_setup("key", str(path), home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.with_name("key.pub").stat().st_mode & 0o777 == 0o644
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["key", "key.pub"]
    listed = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], capture_output=True, text=True,
                            check=True).stdout.split()  # fmt: skip
    assert f"fingerprint: {listed[1]}" in done.stdout.splitlines()
    assert listed[-1] == "(ED25519)"
    before = path.read_bytes()
    again = run_setup("key", str(path), home=tmp_path)
    assert again.returncode == 1
    assert again.stderr.splitlines()[0] == f"error: {path} already exists: not overwriting it"
    assert again.stderr.splitlines()[1].startswith("hint: ")
    assert path.read_bytes() == before
    builder = run_setup("builder", "--key", f"@{path}.pub", home=tmp_path)
    assert builder.returncode == 0, builder.stderr
    assert path.with_name("key.pub").read_text().split()[1] in builder.stdout
