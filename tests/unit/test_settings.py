"""Where machines come from: Nix settings, --builders, offload.toml (config/settings.py)."""

from __future__ import annotations

import os
import shutil

import pytest

from offload.config.settings import (
    DEFAULT_BUILDERS,
    NixSettings,
    TomlLocal,
    builders_spec,
    default_toml_paths,
    load_offload_toml,
    local_machine,
    parse_nix_conf,
    parse_offload_toml,
    read_nix_settings,
)
from offload.errors import ConfigError

NIX = NixSettings(
    {
        "builders": DEFAULT_BUILDERS,
        "max-jobs": "3",
        "system": "x86_64-linux",
        "extra-platforms": "i686-linux x86_64-v2-linux",
        "system-features": "benchmark big-parallel kvm nixos-test",
    }
)


# --- nix.conf fallback parser -------------------------------------------------------------------


def test_parse_nix_conf_values_comments_and_extra():
    conf = parse_nix_conf(
        "# comment\n"
        "builders = @/etc/nix/machines ; m2   # trailing\n"
        "max-jobs=4\n"
        "extra-system-features = kvm\n"
        "extra-extra-platforms = aarch64-linux\n"
        "not a setting line\n"
    )
    assert conf["builders"] == "@/etc/nix/machines ; m2"
    assert conf["max-jobs"] == "4"
    # extra-NAME appends to Nix's default when NAME was not set.
    assert conf["system-features"] == "benchmark big-parallel nixos-test kvm"
    assert "extra-platforms" in conf
    assert "not a setting line" not in conf


def test_parse_nix_conf_extra_appends_to_earlier_value():
    conf = parse_nix_conf("system-features = a\nextra-system-features = b c\n")
    assert conf["system-features"] == "a b c"


# --- builders spec precedence -------------------------------------------------------------------


def test_cli_builders_win_over_everything():
    spec = builders_spec("m1", {"NIX_CONFIG": "builders = m2"}, NIX, {"builders": "m3"})
    assert spec == ("m1", "--builders")


def test_option_builders_wins_over_nix_config():
    spec = builders_spec(None, {"NIX_CONFIG": "builders = m2"}, NIX, {"builders": "m3"})
    assert spec == ("m3", "--option builders")


def test_nix_config_builders_are_labelled():
    settings = NixSettings({"builders": "m2"})
    assert builders_spec(None, {"NIX_CONFIG": "builders = m2"}, settings) == (
        "m2",
        "NIX_CONFIG builders",
    )


def test_nix_conf_and_default_builders_are_labelled():
    assert builders_spec(None, {}, NixSettings({"builders": "m9"})) == ("m9", "nix.conf builders")
    assert builders_spec(None, {}, NixSettings({})) == (DEFAULT_BUILDERS, "Nix's default builders")


def test_an_empty_builders_option_means_no_machines():
    assert builders_spec(None, {}, NIX, {"builders": ""}) == ("", "--option builders")


# --- the local machine --------------------------------------------------------------------------


def test_local_machine_defaults_come_from_nix():
    local = local_machine(NIX)
    assert local.max_jobs == 3
    assert local.systems == ("x86_64-linux", "i686-linux", "x86_64-v2-linux")
    assert local.supported_features == {"benchmark", "big-parallel", "kvm", "nixos-test"}
    assert local.speed_factor == 1.0


def test_local_machine_auto_jobs_and_bad_jobs():
    assert local_machine(NixSettings({"max-jobs": "auto"})).max_jobs >= 1
    with pytest.raises(ConfigError, match="max-jobs setting 'lots'"):
        local_machine(NixSettings({"max-jobs": "lots"}))


def test_local_machine_toml_overrides():
    local = local_machine(
        NIX, TomlLocal(speed_factor=2.5, max_jobs=8, systems=("aarch64-linux",), features=None)
    )
    assert (local.speed_factor, local.max_jobs, local.systems) == (2.5, 8, ("aarch64-linux",))
    assert "kvm" in local.supported_features


def test_local_supports_has_no_mandatory_features():
    local = local_machine(NIX)
    assert local.supports("i686-linux", ["kvm"])
    assert local.supports("builtin", [])
    assert not local.supports("aarch64-linux", [])
    assert not local.supports("x86_64-linux", ["cuda"])


# --- offload.toml -------------------------------------------------------------------------------

TOML = """
[local]
speed-factor = 2
max-jobs = 4
systems = ["x86_64-linux"]
features = ["kvm"]

[[machine]]
host = "nx-a.invalid"
name = "a"
tags = ["fast", "big"]
port = 2222

[[machine]]
uri = "ssh://root@nx-b.invalid"
enabled = false
max-jobs = 2
"""


def test_parse_offload_toml():
    toml = parse_offload_toml(TOML, "offload.toml")
    assert toml.local == TomlLocal(2.0, 4, ("x86_64-linux",), frozenset({"kvm"}))
    first, second = toml.machines
    assert (first.host, first.name, first.tags, first.port) == (
        "nx-a.invalid",
        "a",
        frozenset({"fast", "big"}),
        2222,
    )
    assert (second.uri, second.enabled, second.max_jobs) == ("ssh://root@nx-b.invalid", False, 2)
    assert second.where == "[[machine]] #2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[machine]]\nhost = 'h'\nport = 'x'",
            r"^f: \[\[machine\]\] #1: port must be a whole number",
        ),
        ("[[machine]]\nhost = 'h'\nport = 70000", "port must be a whole number from 1 to 65535"),
        ("[[machine]]\nhost = 'h'\nnmae = 'x'", r"#1: unknown key 'nmae'"),
        ("[[machine]]\nname = 'x'", "give exactly one of uri or host"),
        ("[[machine]]\nhost = 'h'\nuri = 'h'", "give exactly one of uri or host"),
        ("[[machine]]\nhost = 'h'\nname = 'local'", "'local' cannot be a machine name"),
        ("[[machine]]\nhost = 'h'\ntags = 'fast'", "tags must be a list of non-empty strings"),
        ("[[machine]]\nhost = 'h'\nenabled = 1", "enabled must be true or false"),
        ("[local]\nspeed-factor = 0", r"\[local\]: speed-factor must be a positive number"),
        ("[local]\nmax-jobs = true", "max-jobs must be a whole number"),
        ("[local]\nmax-jobs = -1", "max-jobs must be a whole number from 0 to 4294967295"),
        ("[[machine]]\nhost = 'h'\nspeed-factor = 0", "speed-factor must be a positive number"),
        # Work over such a speed is past the largest float: no build there would ever end.
        ("[[machine]]\nhost = 'h'\nspeed-factor = 1e-310", "a positive number, at least 1e-06"),
        ("[[machine]]\nhost = 'h'\nname = '@x'", "name must be one word"),
        # A name --on could never pick, or that printed a terminal's escape in a warning.
        ("[[machine]]\nhost = 'h'\nname = 'a b,c'", "name must be one word"),
        ("[[machine]]\nhost = 'h'\nname = '-x'", "name must be one word"),
        ("[[machine]]\nhost = 'h'\nname = \"x\\n\\u001b[31m\"", "name must be one word"),
        ("[[machine]]\nhost = 'h'\ntags = ['gpu', 'big fast']", "tags must be a list of words"),
        ("[local]\nfeatures = [[]]", "features must be a list of non-empty strings"),
        ("a = " + "[" * 2000 + "]" * 2000, "nested too deeply"),
        ("local = 3", "local must be a table"),
        ("machine = 3", "machine must be an array of tables"),
        ("[mahcine]", "unknown key 'mahcine'"),
        ("[[machine]\n", r"^f: .*line 1"),
    ],
)
def test_offload_toml_errors(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_offload_toml(text, "f")
    assert "\n" not in info.value.message
    # Each has a hint line: a negative max-jobs or a speed of 0 stated the form and no hint.
    assert info.value.hint, info.value.message


def test_offload_toml_names_every_problem_at_once():
    text = (
        "[local]\nspede-factor = 2\n[[machine]]\nhost = 'a'\nport = 70000\n"
        "[[machine]]\nname = 'b'\ntags = 'fast'\n"
        + "".join(f"[[machine]]\nhost = 'h{i}'\nenabled = 1\n" for i in range(3))
    )
    with pytest.raises(ConfigError, match=r"^f: \[local\]: unknown key 'spede-factor'") as info:
        parse_offload_toml(text, "f")
    hint = info.value.hint or ""
    assert hint.startswith("did you mean speed-factor? valid keys:")
    assert "also [[machine]] #1: port must be a whole number from 1 to 65535, not 70000" in hint
    assert "[[machine]] #2: tags must be a list" in hint
    assert "[[machine]] #2: give exactly one of uri or host" in hint
    assert hint.endswith("; and 3 more")  # the three `enabled = 1`
    assert "f:" not in hint  # the file is named once, in the message
    assert "\n" not in info.value.message + hint


def test_toml_search_order(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    assert default_toml_paths(env)[0] == tmp_path / "xdg" / "offload" / "offload.toml"
    assert default_toml_paths({"HOME": str(tmp_path / "home")})[0] == (
        tmp_path / "home" / ".config" / "offload" / "offload.toml"
    )
    assert default_toml_paths({})[-1].as_posix() == "/etc/offload/offload.toml"
    xdg_file = tmp_path / "xdg" / "offload" / "offload.toml"
    xdg_file.parent.mkdir(parents=True)
    xdg_file.write_text(TOML)
    found = load_offload_toml(None, env)
    assert found is not None
    assert found.path == str(xdg_file)


def test_explicit_config_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_offload_toml(tmp_path / "missing.toml", {})
    given = tmp_path / "given.toml"
    given.write_text("[local]\nmax-jobs = 1\n")
    loaded = load_offload_toml(given, {"XDG_CONFIG_HOME": str(tmp_path)})
    assert loaded is not None
    assert loaded.local == TomlLocal(max_jobs=1)


def test_toml_not_utf8(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[local]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_offload_toml(bad, {})


# --- reading Nix's settings ---------------------------------------------------------------------


def test_fallback_without_nix_reads_nix_conf_and_nix_config(tmp_path):
    (tmp_path / "nix.conf").write_text("builders = @/from/conf\nmax-jobs = 7\n")
    env = {
        "PATH": str(tmp_path / "no-bin"),
        "NIX_CONF_DIR": str(tmp_path),
        "NIX_CONFIG": "system-features = kvm",
    }
    settings = read_nix_settings(env, {"extra-platforms": "i686-linux"})
    assert settings.get("builders") == "@/from/conf"
    assert settings.get("max-jobs") == "7"
    assert settings.words("system-features") == ("kvm",)
    assert settings.words("extra-platforms") == ("i686-linux",)
    assert settings.system  # the host's own, from platform
    assert len(settings.warnings) == 1
    assert "could not ask Nix" in settings.warnings[0]


def test_a_nix_conf_nix_refuses_is_said_with_nixs_error_not_its_last_line(tmp_path):
    # Nix 2.8 follows its refusal with "Try 'nix --help' for more information.", which was
    # all the warning said of it.
    (tmp_path / "nix.conf").write_text("max-jobs = 99999999999999999999\n")
    env = {"PATH": os.environ["PATH"], "NIX_CONF_DIR": str(tmp_path), "HOME": str(tmp_path)}
    (warning,) = read_nix_settings(env).warnings
    assert "(error: configuration setting 'max-jobs' should be 'auto' or an integer)" in warning
    assert "nix --help" not in warning


def test_nix_2_20s_note_that_show_config_is_an_alias_is_not_a_warning_of_the_run(tmp_path):
    # Nix 2.20 on says it at every `nix show-config`, which offload asks once per command: it
    # was a `warning:` line of every build, `offload machines`, `use`. Nix 2.8 is the one here:
    # a `nix` in front of it says what 2.20's says, then runs it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nix = bin_dir / "nix"
    note = "warning: 'show-config' is a deprecated alias for 'config show'"
    real = shutil.which("nix")
    nix.write_text(f'#!/bin/sh\necho "{note}" >&2\nexec {real} "$@"\n')
    nix.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    settings = read_nix_settings(env, {"nx-no-such-setting": "1"})
    assert settings.warnings == ("unknown setting 'nx-no-such-setting'",)
    assert settings.get("max-jobs")  # read from Nix, not from nix.conf


def test_the_native_system_is_nixs_name_for_this_machine_and_kernel():
    import platform  # what the system was read with before os.uname()

    from offload.config.settings import _native_system

    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    expected = f"{machine or platform.machine().lower()}-{platform.system().lower()}"
    assert _native_system() == expected


@pytest.mark.parametrize(
    ("conf_dir", "said"),
    [
        # A relative NIX_CONF_DIR kills Nix 2.8 ("terminate called after throwing ...", then
        # "  what():  ESC[31;1merror:ESC[0m not an absolute path"): its colours were in the
        # warning.
        ("relative", "error: not an absolute path: 'relative'"),
        # Its name went raw into the warning ("read ESC[2J/nix.conf"): the terminal was cleared.
        ("\x1b[2J", "read \\x1b[2J/nix.conf and NIX_CONFIG only"),
    ],
    ids=["relative", "escape"],
)
def test_why_nix_could_not_be_asked_is_one_plain_line(conf_dir, said, tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(tmp_path)
    settings = read_nix_settings({**os.environ, "NIX_CONF_DIR": conf_dir})
    (warning,) = settings.warnings
    assert warning.isprintable(), repr(warning)
    assert said in warning, warning


@pytest.mark.parametrize("jobs", ["x", "\x1b[2J"])
def test_a_max_jobs_that_is_no_number_says_what_to_set(jobs):
    # Read from nix.conf when Nix itself cannot be asked: the error had no hint, and quoted
    # the value raw.
    with pytest.raises(ConfigError, match="Nix's max-jobs setting") as raised:
        local_machine(NixSettings({"max-jobs": jobs, "system": "x86_64-linux"}))
    assert raised.value.message.isprintable()
    assert raised.value.hint is not None
    assert raised.value.hint.startswith("set max-jobs to auto or a whole number")


def test_an_offload_toml_that_is_not_utf8_says_what_to_do(tmp_path):
    # The error had no hint.
    path = tmp_path / "offload.toml"
    path.write_bytes(b"[local]\n\xff\n")
    with pytest.raises(ConfigError, match="not UTF-8 text") as raised:
        load_offload_toml(path, {})
    assert raised.value.hint == "offload.toml is TOML, which is UTF-8 text: save it as UTF-8"


def test_every_offload_toml_key_has_its_hint():
    from offload.config import toml

    assert set(toml._KEY_HINTS) == toml._MACHINE_KEYS | toml._LOCAL_KEYS
