"""`offload setup`'s pure parts: what users give is checked, quoted and rendered right."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

import pytest

from offload.cli import main
from offload.config.machines import parse_machines
from offload.errors import ConfigError
from offload.setup.builder import BuilderSetup, authorized_keys_line, builder_files, shell_script
from offload.setup.client import (
    SSH_CONFIG_FILE,
    Builder,
    ClientSetup,
    Overrides,
    client_files,
    machines_text,
    where_they_go,
)
from offload.setup.key import DAEMON_KEY, default_key_path
from offload.setup.nix_text import attr_name, indented, nix_list, nix_string
from offload.setup.probe import choose_host_key, facts_to_builder
from offload.setup.values import (
    Target,
    check_host,
    check_path,
    check_user,
    parse_public_key,
    parse_target,
    parse_targets,
)

BLOB = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
KEY_LINE = "ssh-ed25519 " + base64.b64encode(BLOB).decode()
KEY = parse_public_key(f'{KEY_LINE} a"b${{c}}\\d', "test")


def builder(name: str = "b1", host: str = "192.0.2.7", port: int = 2222) -> Builder:
    return Builder(Target(name, host, port), KEY, ("x86_64-linux",), ("big-parallel",), 4, 2)


@pytest.mark.parametrize("name", ["root", "nixremote", "_b", "a-b_c9"])
def test_user_names_that_are_names_pass(name: str) -> None:
    assert check_user(name) == name


@pytest.mark.parametrize("name", ["", "Root", "a b", "a;b", '"x', "-o", "${x}", "a" * 33, "9a"])
def test_user_names_that_are_not_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid user name"):
        check_user(name)


@pytest.mark.parametrize("host", ["builder", "b1.example.org", "127.0.0.1", "::1", "a-b.c."])
def test_hosts_that_are_hosts_pass(host: str) -> None:
    assert check_host(host) == host


@pytest.mark.parametrize(
    "host",
    [
        *("", "-oProxyCommand=x", "a b", "a_b", "a..b", 'a"b', "a${b}", "x" * 64, "[::1]"),
        # A scope: Python's ipaddress takes any (a newline and an ssh option too).
        *("fe80::1%eth0", "::1%x\n  ProxyCommand touch pwn"),
    ],
)
def test_hosts_that_are_not_are_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="invalid host"):
        check_host(host)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("b1", Target("b1", "b1", 22)),
        ("b1:2222", Target("b1", "b1", 2222)),
        ("fast=127.0.0.1:2201", Target("fast", "127.0.0.1", 2201)),
        ("127.0.0.1:2201", Target("127.0.0.1-2201", "127.0.0.1", 2201)),
        ("v6=[::1]", Target("v6", "::1", 22)),
    ],
)
def test_targets(text: str, expected: Target) -> None:
    assert parse_target(text) == expected


def test_builders_on_one_host_get_an_alias_each() -> None:
    # Two containers on one server: each port other than 22 in its alias, as for an address.
    assert parse_targets(["box", "box:2201", "box:2202", "b1:2222"]) == [
        Target("box", "box", 22),
        Target("box-2201", "box", 2201),
        Target("box-2202", "box", 2202),
        Target("b1", "b1", 2222),  # alone: its host is its alias
    ]
    assert parse_targets(["fast=box:2201", "box:2201"])[1] == Target("box", "box", 2201)


@pytest.mark.parametrize(
    ("texts", "said"),
    [
        (["box:2201", "box:2201"], "'box:2201' and 'box:2201' both get the ssh alias 'box-2201'"),
        (["box", "box"], "'box' and 'box' both get the ssh alias 'box'"),
        (["b1=box", "b1=other:2222"], "'b1=box' and 'b1=other:2222' both get the ssh alias 'b1'"),
    ],
)
def test_builders_that_would_share_an_alias_are_refused_both_named(
    texts: list[str], said: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(said)):
        parse_targets(texts)


@pytest.mark.parametrize(
    "text",
    [
        *("b1:0", "b1:65536", "b1:x", "1.2.3.4=b1", "[::1", "a;b=b1", "[::1]:22", "-x=b1"),
        *("local=b1", "b1:\u00b2", "[::1]:\u00b2"),  # '²' is a digit to str.isdigit, not to int
    ],
)
def test_bad_targets_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_target(text)


@pytest.mark.parametrize("name", ["bad_name", "-x", "a..b"])
def test_a_bad_name_is_said_to_be_the_name_not_the_host(name: str) -> None:
    with pytest.raises(ConfigError, match=f"^invalid builder name '{re.escape(name)}'$"):
        parse_target(f"{name}=192.0.2.7:2222")


def test_paths_with_blanks_or_quotes_are_refused() -> None:
    assert check_path("/etc/nix/offload_ed25519", "key") == "/etc/nix/offload_ed25519"
    for bad in ("relative", "/a b", "/a'b", "/a$b", "/a/../b", '/a"b', "/a#b"):
        with pytest.raises(ConfigError, match="invalid key"):
            check_path(bad, "key")


def test_public_keys_are_parsed_and_checked() -> None:
    assert KEY.kind == "ssh-ed25519"
    assert KEY.comment == 'a"b${c}\\d'
    assert KEY.bare == KEY_LINE
    with pytest.raises(ConfigError, match="not of type ssh-rsa"):
        parse_public_key(KEY_LINE.replace("ssh-ed25519", "ssh-rsa"), "k")
    with pytest.raises(ConfigError, match="one public key line, found 2"):
        parse_public_key(f"{KEY_LINE}\n{KEY_LINE}\n", "k")
    with pytest.raises(ConfigError, match="not an ssh public key"):
        parse_public_key("hello world", "k")
    private = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    with pytest.raises(ConfigError, match=r"^k: a private key, not the public key line$"):
        parse_public_key(private, "k")  # was "found 3 lines"


def test_an_identity_that_is_no_file_is_refused_before_any_builder_is_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A directory got "chmod 600 DIR" as its fix, from ssh's words about it.
    assert main(["setup", "client", "--identity", str(tmp_path), "192.0.2.7"]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"error: the identity file {tmp_path} is not a file"
    )


def test_the_fingerprint_is_sha256_of_the_blob_unpadded() -> None:
    digest = base64.b64encode(hashlib.sha256(BLOB).digest()).decode()
    assert KEY.fingerprint == "SHA256:" + digest.rstrip("=")


def test_nix_strings_escape_what_nix_reads() -> None:
    assert nix_string('a"b\\c${d}$e') == '"a\\"b\\\\c\\${d}\\$e"'
    assert nix_string("a\nb") == '"a\\nb"'
    assert nix_list([]) == "[ ]"
    assert nix_list(["a", "b"]) == '[ "a" "b" ]'
    assert attr_name("fast") == "fast"
    assert attr_name("127.0.0.1-22") == '"127.0.0.1-22"'
    assert attr_name("in") == '"in"'
    with pytest.raises(ConfigError, match="control character"):
        nix_string("a\x1bb")


def test_indented_strings_escape_quotes_and_dollars() -> None:
    assert indented("a''b ${c}\n", "  ") == "''\n  a''\\'''\\'b ''${c}\n''"


def test_the_default_key_is_the_daemons_for_root_and_the_users_otherwise() -> None:
    assert default_key_path(0, {"HOME": "/root"}) == DAEMON_KEY
    assert default_key_path(1000, {"HOME": "/home/u"}) == Path("/home/u/.ssh/offload_ed25519")


def test_a_key_path_that_is_taken_gets_a_hint_about_what_is_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k"
    key.with_name("k.pub").write_text(f"{KEY_LINE}\n")
    assert main(["setup", "key", str(key)]) == 1
    assert capsys.readouterr().err == (
        f"error: {key}.pub already exists: not overwriting it\nhint: it is the public half of a "
        f"key whose private half {key} is not there: move it away, or give another path: "
        "offload setup key PATH\n"
    )
    key.write_text("private\n")
    assert main(["setup", "key", str(key)]) == 1
    assert capsys.readouterr().err == (
        f"error: {key} already exists: not overwriting it\nhint: use the key that is there (its "
        f"public half is {key}.pub), or give another path: offload setup key PATH\n"
    )
    key.with_name("k.pub").unlink()
    assert main(["setup", "key", str(key)]) == 1
    assert capsys.readouterr().err.splitlines()[1] == (
        f"hint: use the key that is there (ssh-keygen -y -f {key} prints its public half), or "
        "give another path: offload setup key PATH"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_a_directory_or_a_parent_that_cannot_be_made_is_said_with_what_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A directory was "already exists" with `ssh-keygen -y -f DIR` as the hint; a parent that
    # cannot be made had no hint.
    assert main(["setup", "key", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path} is a directory\nhint: name the key file to make in it: offload setup"
        f" key {tmp_path / 'offload_ed25519'}\n"
    )
    assert main(["setup", "key", "/proc/nx-no-such/k"]) == 1
    assert capsys.readouterr().err == (
        "error: cannot create /proc/nx-no-such: No such file or directory\nhint: give a path in"
        " a directory you may write (offload setup key PATH)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_key_path_the_next_steps_refuse_is_refused_before_the_key_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `setup client --identity` refused it after `setup key` had made it and printed the next
    # step with it unquoted.
    key = tmp_path / "has space"
    assert main(["setup", "key", str(key)]) == 1
    assert capsys.readouterr().err.startswith(f"error: invalid key path '{key}'\nhint: ")
    assert list(tmp_path.iterdir()) == []


def test_a_key_path_through_a_parent_is_taken_normalised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "keys").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert main(["setup", "key", "../keys/id"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path}/keys/id (private, 0600)")
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["id", "id.pub"]


@pytest.mark.parametrize(
    "argv",
    [
        ["setup", "builder", "--key", KEY_LINE, "--write", ""],
        ["setup", "client", "b1", "--write", ""],
        ["setup", "client", "b1", "--identity", ""],
    ],
)
def test_an_empty_path_is_refused_not_taken_for_here_or_the_default(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as ended:  # a usage error, as argparse ends one
        main(argv)
    assert ended.value.code == 1
    assert "an empty path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_authorized_keys_line_is_restricted_to_serve_by_default() -> None:
    restricted = authorized_keys_line(BuilderSetup("nixremote", KEY), "/bin/nix-store")
    assert restricted == f'restrict,command="/bin/nix-store --serve --write" {KEY.line}'
    plain = authorized_keys_line(BuilderSetup("nixremote", KEY, restricted=False))
    assert plain == f"restrict {KEY.line}"  # no forwarding, pty or ~/.ssh/rc: any command
    with pytest.raises(ConfigError):
        BuilderSetup("x;y", KEY)


def test_with_ssh_ng_the_key_runs_only_the_daemon() -> None:
    # What Nix's ssh-ng store opens, as srvos' remote-builder role restricts its key.
    daemon = BuilderSetup("nixremote", KEY, scheme="ssh-ng")
    line = authorized_keys_line(daemon, "/bin/nix-daemon")
    assert line == f'restrict,command="/bin/nix-daemon --stdio" {KEY.line}'
    script = shell_script(daemon)
    assert "program=/nix/var/nix/profiles/default/bin/nix-daemon\n" in script
    assert 'restrict,command="%s --stdio" %s' in script
    assert "--serve" not in authorized_keys_line(daemon)
    # The way back to a line for both schemes, as setup builder takes it.
    assert (
        '"use ssh-ng:// ones (setup client --ssh-ng writes them), or --unrestricted without'
        " --ssh-ng" in script
    )


def test_ssh_ng_with_unrestricted_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An unrestricted key runs both programs: --ssh-ng would be dropped without a word.
    out = tmp_path / "out"
    argv = ["setup", "builder", "--key", KEY_LINE, "--ssh-ng", "--unrestricted"]
    assert main([*argv, "--write", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: --ssh-ng restricts the key to `nix-daemon --stdio`, ")
    assert (
        err[1] == "hint: an unrestricted key serves ssh:// and ssh-ng:// lines alike: drop --ssh-ng"
    )
    assert not out.exists()


@pytest.mark.parametrize("write", [False, True])
def test_root_as_the_build_user_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], write: bool
) -> None:
    # Its sshd block and module would take root's password and tty logins away.
    out = tmp_path / "out"
    argv = ["setup", "builder", "--user", "root", "--key", KEY_LINE]
    assert main([*argv, "--write", str(out)] if write else argv) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err == (
        "error: the build user cannot be root: its sshd lines would take root's password and "
        "tty logins away\nhint: give the builds a user of their own: --user nixremote "
        "(the default)\n"
    )
    assert not out.exists()


def test_a_second_key_is_refused_not_the_first_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The last --key was taken and the first left out, without a word.
    out = tmp_path / "out"
    argv = ["setup", "builder", "--key", KEY_LINE, "--key", KEY_LINE, "--write", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --key given 2 times: setup builder authorizes one client key")
    assert not out.exists()


def test_the_builder_files_hold_the_tuning() -> None:
    (module_name, module), (script_name, script) = builder_files(BuilderSetup("nixremote", KEY))
    assert (module_name, script_name) == ("offload-builder.nix", "offload-builder.sh")
    for text in (
        "nrBuildUsers = lib.mkDefault 64",
        'MemoryMax = lib.mkDefault "90%"',
        "OOMScoreAdjust = lib.mkDefault 500",
        "min-free = lib.mkDefault (1024 * 1024 * 1024)",
    ):
        assert text in module
    assert 'echo "extra-trusted-users = $user"' in script
    assert "'max-jobs = auto' 'cores = 0'" in script  # each where nix.conf sets none
    assert '"$sshd" -t -f /etc/ssh/sshd_config.offload-new' in script


def test_machines_lines_read_back_by_offloads_parser() -> None:
    setup = ClientSetup("nixremote", "/etc/nix/offload_ed25519", (builder(), builder("b2")))
    machines, warnings = parse_machines(machines_text(setup), source="m", system="x86_64-linux")
    assert warnings == []
    assert [m.uri for m in machines] == ["ssh://nixremote@b1", "ssh://nixremote@b2"]
    first = machines[0]
    assert (first.max_jobs, first.speed_factor, first.systems) == (4, 2.0, ("x86_64-linux",))
    assert first.supported_features == {"big-parallel"}
    assert first.public_host_key == KEY_LINE
    assert first.ssh_key == "/etc/nix/offload_ed25519"


def test_ssh_aliases_pin_the_key_under_the_alias() -> None:
    setup = ClientSetup("nixremote", "/k", (builder(),))
    files = dict(client_files(setup))
    assert files["ssh_config"] == (
        "Host b1\n  HostName 192.0.2.7\n  Port 2222\n  User nixremote\n  IdentityFile /k\n"
        "  IdentitiesOnly yes\n  HostKeyAlias b1\n"
    )
    assert files["known_hosts"] == f"b1 {KEY_LINE}\n"
    assert "builders-use-substitutes = true" in files["nix.conf"]


def test_facts_become_the_machines_entry() -> None:
    config = {
        "system": "x86_64-linux",
        "extra-platforms": "i686-linux x86_64-linux",
        "system-features": "kvm big-parallel",
        "max-jobs": "1",
    }
    target = Target("b1", "b1", 22)
    found = facts_to_builder(target, KEY, config, 8, Overrides())
    assert found.systems == ("x86_64-linux", "i686-linux")
    assert found.features == ("big-parallel", "kvm")
    assert found.max_jobs == 8
    assert facts_to_builder(target, KEY, {**config, "max-jobs": "3"}, 8, Overrides()).max_jobs == 3
    mine = Overrides(systems=("aarch64-linux",), features=(), jobs=2, speed=5)
    chosen = facts_to_builder(target, KEY, config, 8, mine)
    assert (chosen.systems, chosen.features, chosen.max_jobs, chosen.speed) == (
        ("aarch64-linux",), (), 2, 5,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="cannot read the builder's systems") as unread:
        facts_to_builder(target, KEY, None, None, Overrides())
    assert (unread.value.hint or "").startswith("give them with --system, --feature, --jobs (")
    # A key restricted to the serve program: nothing is guessed (one slot, no features).
    with pytest.raises(ConfigError) as unread:
        facts_to_builder(target, KEY, None, None, Overrides(systems=("x86_64-linux",)))
    assert (unread.value.hint or "").startswith("give them with --feature, --jobs (")
    given = Overrides(systems=("x86_64-linux",), features=(), jobs=16)
    restricted = facts_to_builder(target, KEY, None, None, given)
    assert (restricted.features, restricted.max_jobs) == ((), 16)


def test_the_preferred_scanned_key_is_ed25519() -> None:
    rsa_blob = b"\x00\x00\x00\x07ssh-rsa" + bytes(8)
    rsa = "ssh-rsa " + base64.b64encode(rsa_blob).decode()
    scan = f"# b1:22 SSH-2.0-OpenSSH\nb1 {rsa}\nb1 {KEY_LINE}\nb1 garbage here\n"
    chosen = choose_host_key(scan)
    assert chosen is not None
    assert chosen.bare == KEY_LINE
    assert choose_host_key(f"b1 {rsa}\n") is not None
    assert choose_host_key("") is None


def test_the_ssh_alias_goes_where_the_daemon_reads_it() -> None:
    # NIX_SSHOPTS='-F FILE' was offered: the nix-daemon's hook never sees a user's shell's.
    (said,) = where_they_go([SSH_CONFIG_FILE]).values()
    assert said.startswith("append to /root/.ssh/config (the nix-daemon runs ssh as root")
    assert "-F FILE" not in said


def test_the_replaced_line_is_said_only_where_the_new_one_restricts_the_key() -> None:
    # --unrestricted's line runs any command, as ssh-ng:// needs: nothing to say then.
    assert "is replaced; it ran any command" in shell_script(BuilderSetup("nixremote", KEY))
    unrestricted = shell_script(BuilderSetup("nixremote", KEY, restricted=False))
    assert "is replaced; it ran any command" not in unrestricted


@pytest.mark.parametrize(
    ("scheme", "other"), [("ssh", "nix-daemon --stdio"), ("ssh-ng", "nix-store --serve --write")]
)
def test_a_line_of_the_other_programs_replaced_is_said(scheme: str, other: str) -> None:
    # Its machines lines (the other scheme's) fail from then on.
    script = shell_script(BuilderSetup("nixremote", KEY, scheme=scheme))
    assert f'grep -qF -e "{other}"; then' in script
    assert f"is replaced; it ran {other}," in script


def test_a_builder_named_by_its_host_is_said_to_take_over_ssh_to_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `Host HOST` with the dedicated key and user applies to every `ssh HOST` of the account
    # whose config it goes into: never said. (A fleet's members are on ports other than 22,
    # whose aliases are HOST-PORT: this is the function run_client calls.)
    from offload.cli.setup import _say_host_blocks_shared
    from offload.setup.client import Builder
    from offload.setup.values import Target

    key = parse_public_key(KEY_LINE, "test")

    def builder(name: str, host: str) -> Builder:
        return Builder(Target(name, host, 22), key, ("x86_64-linux",), (), 1, 1)

    _say_host_blocks_shared([builder("b1.example", "b1.example"), builder("b2", "h2")], "nix")
    assert capsys.readouterr().err == (
        "note: the ssh config's Host b1.example applies to every ssh to it by the account whose"
        " config it goes into (as nix, with the key it names); give NAME=HOST to keep your own"
        " logins apart\n"
    )
    _say_host_blocks_shared([builder("b2", "h2")], "nix")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("config", "sshopts", "target", "said"),
    [
        # A block of the alias that sends it elsewhere: the one written after it is never used.
        ("Host b1\n  HostName 10.9.9.9\n  Port 44\n", "", ("b1", "10.0.0.5", 22), "10.9.9.9:44"),
        # What ssh makes of every name is no block of the alias's (review: refused every NAME).
        ("Host *\n  HostName %h.corp\n", "", ("b1", "10.0.0.5", 2222), None),
        ("", "-p 2222", ("b1", "10.0.0.5", 22), None),
        # The builder itself: setup's own block, appended by a run before.
        ("Host b1\n  HostName 10.0.0.5\n  Port 2222\n", "", ("b1", "10.0.0.5", 2222), None),
    ],
)
def test_an_alias_the_ssh_config_sends_elsewhere_is_told_apart_from_a_free_one(
    tmp_path: Path, config: str, sshopts: str, target: tuple[str, str, int], said: str | None
) -> None:
    import asyncio
    import os

    from offload.doctor import DoctorOptions
    from offload.setup.probe import _alias_elsewhere
    from offload.setup.values import Target

    file = tmp_path / "ssh_config"
    file.write_text(config)
    env = {**os.environ, "NIX_SSHOPTS": f"-F {file} {sshopts}".strip()}
    found = asyncio.run(_alias_elsewhere(Target(*target), DoctorOptions(env=env)))
    assert found == said


def test_a_key_pair_left_half_made_by_a_killed_run_is_removed_by_the_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # SIGKILL between ssh-keygen and the links left .offload-key-XXXX/key, a private key
    # nobody uses, beside the key's place (in /etc/nix for root's) for good.
    import subprocess

    gone = subprocess.Popen(["true"])  # a pid that is gone once it ran
    gone.wait()
    left = tmp_path / f".offload-key-{gone.pid}-abcd"
    left.mkdir()
    (left / "key").write_text("private\n")
    (left / "key.pub").write_text(f"{KEY_LINE}\n")
    alive = tmp_path / f".offload-key-{os.getpid()}-efgh"  # a run still making its pair
    alive.mkdir()
    assert main(["setup", "key", str(tmp_path / "k")]) == 0
    capsys.readouterr()
    assert not left.exists()
    assert alive.exists()


def test_the_sweep_leaves_other_users_scratch_and_never_follows_a_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # From a review: a scratch of another user's, or one swapped for a link to another
    # directory (a directory others may write), was emptied too.
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    theirs = tmp_path / f".offload-key-{gone.pid}-them"
    theirs.mkdir()
    (theirs / "key").write_text("theirs\n")
    os.chown(theirs, 65534, 65534)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("x\n")
    (tmp_path / f".offload-key-{gone.pid}-link").symlink_to(elsewhere)
    assert main(["setup", "key", str(tmp_path / "k")]) == 0
    capsys.readouterr()
    assert (theirs / "key").exists()
    assert (elsewhere / "precious").exists()
