"""The doctor's verdicts on what a builder is, from recorded command output, and its report."""

import json

import pytest

from offload.config.pool import load_pool
from offload.config.settings import NixSettings
from offload.doctor import claims, facts, slot_facts
from offload.doctor.model import Check, MachineReport, Verdict, skipped
from offload.doctor.render import format_report
from offload.load import RemoteLoad
from offload.transport.links.turns import (
    DAEMON_RESTRICTED_FALLBACK,
    FALLBACKS,
    RESTRICTED_FALLBACK,
)

# `nix --extra-experimental-features nix-command show-config --json` on Nix 2.8, abridged.
CONFIG_JSON = json.dumps(
    {
        "system": {"value": "x86_64-linux", "description": "..."},
        "extra-platforms": {"value": ["i686-linux"]},
        "system-features": {"value": ["benchmark", "big-parallel", "kvm", "nixos-test"]},
        "trusted-users": {"value": ["root", "@wheel"]},
        "sandbox": {"value": False},
    }
)
CONFIG = facts.parse_nix_config(CONFIG_JSON)
DF = (
    "Filesystem     1024-blocks     Used Available Capacity Mounted on\n"
    "/dev/vda         263174212 23000000 {free} 23% /\n"
)


def test_nix_show_config_is_read_in_both_json_shapes_and_as_text():
    assert CONFIG["system"] == "x86_64-linux"
    assert CONFIG["system-features"] == "benchmark big-parallel kvm nixos-test"
    assert CONFIG["sandbox"] == "false"
    flat = facts.parse_nix_config('{"system": "aarch64-linux", "extra-platforms": []}')
    assert flat == {"system": "aarch64-linux", "extra-platforms": ""}
    text = facts.parse_nix_config("system = x86_64-linux\nsystem-features = kvm big-parallel\n")
    assert text["system-features"] == "kvm big-parallel"
    assert facts.parse_nix_config("error: unknown command") == {}


def test_nix_version_and_a_missing_nix_store():
    ok = facts.nix_check(0, "nix-store (Nix) 2.8.0\n", "", "nix-store")
    assert (ok.verdict, ok.detail) == (Verdict.OK, "Nix 2.8.0")
    missing = facts.nix_check(127, "", "sh: 1: nix-store: not found\n", "nix-store")
    assert missing.verdict == Verdict.FAIL
    assert "not on the builder's PATH" in missing.detail
    assert missing.fix is not None
    assert "remote-program" in missing.fix


def test_serve_handshake():
    ok = facts.serve_check(0x206, 4242, None)
    assert ok.detail == "protocol 2.6, remote pid 4242"
    failed = facts.serve_check(None, None, "bad server magic")
    assert failed.verdict == Verdict.FAIL
    assert "bad server magic" in failed.detail


def test_systems_claimed_but_absent_fail_and_unclaimed_platforms_are_only_mentioned():
    ok = claims.systems_check(["x86_64-linux"], CONFIG, "")
    assert ok.verdict == Verdict.OK
    assert "could also build i686-linux" in ok.detail
    bad = claims.systems_check(["x86_64-linux", "aarch64-linux"], CONFIG, "")
    assert bad.verdict == Verdict.FAIL
    assert "claims aarch64-linux" in bad.detail
    named = claims.systems_check(["aarch64-linux"], CONFIG, "", "/etc/nix/machines:3")
    assert named.fix is not None
    assert "column 2 of /etc/nix/machines:3" in named.fix


def test_a_line_leaving_out_the_builders_own_system_warns_with_the_fix():
    # i686-linux alone on an x86_64 builder passed: no x86_64-linux build ever went there.
    only = claims.systems_check(["i686-linux"], CONFIG, "", "/etc/nix/machines:2")
    assert only.verdict == Verdict.WARN
    assert "not the builder's own x86_64-linux: no x86_64-linux build goes there" in only.detail
    assert only.fix == "add x86_64-linux to column 2 of /etc/nix/machines:2"


def test_a_misspelt_system_gets_the_one_meant_and_a_real_one_is_no_typo():
    both = claims.systems_check(["x86_64-linx", "aarch64-linux"], CONFIG, "", "m:1")
    assert both.verdict == Verdict.FAIL
    assert "claims x86_64-linx (did you mean x86_64-linux?), aarch64-linux," in both.detail
    assert both.fix == (
        "write x86_64-linux for x86_64-linx in column 2 of m:1; remove aarch64-linux from "
        "column 2 of m:1, or add it to the builder's extra-platforms (with binfmt emulation "
        "for other CPUs)"
    )
    levels = claims.systems_check(["x86_64-v4-linux"], CONFIG, "", "m:1")
    assert levels.fix is not None
    assert levels.fix.startswith("remove x86_64-v4-linux")


def test_a_claimed_feature_the_builder_lacks_fails_and_an_unclaimed_one_warns():
    real = {"benchmark", "big-parallel", "kvm", "nixos-test"}
    ok = claims.features_check(real, (), CONFIG, "")
    assert ok.verdict == Verdict.OK
    lacking = claims.features_check({*real, "cuda"}, (), CONFIG, "")
    assert lacking.verdict == Verdict.FAIL
    assert "claims cuda" in lacking.detail
    assert lacking.fix is not None
    assert "system-features" in lacking.fix
    # A mandatory feature is claimed as much as a supported one.
    assert claims.features_check(real, {"cuda"}, CONFIG, "").verdict == Verdict.FAIL
    wasted = claims.features_check({"benchmark", "big-parallel", "nixos-test"}, (), CONFIG, "")
    assert wasted.verdict == Verdict.WARN
    assert "has kvm, not claimed" in wasted.detail
    named = claims.features_check({"cuda"}, (), CONFIG, "", "m:9")
    assert named.fix is not None
    assert "columns 6-7 of m:9" in named.fix
    unclaimed = claims.features_check({"kvm"}, (), CONFIG, "", "m:9")
    assert unclaimed.fix is not None
    assert "column 6 (supported features) of m:9" in unclaimed.fix


def test_a_machine_with_mandatory_features_is_not_told_to_claim_the_rest():
    # A tester: an ARM board's line with mandatory `kvm` was told to add benchmark,
    # big-parallel and nixos-test, which would send it nothing more.
    board = claims.features_check((), {"kvm"}, CONFIG, "")
    assert board.verdict == Verdict.OK
    assert board.fix is None
    assert "only builds requiring kvm go there" in board.detail
    assert "also has benchmark, big-parallel, nixos-test, not claimed" in board.detail
    plural = claims.features_check({"kvm"}, (), CONFIG, "", "m:9")
    assert "builds needing them never go there" in plural.detail


def test_without_show_config_systems_and_features_cannot_be_told():
    check = claims.features_check({"kvm"}, (), None, "error: unknown command 'show-config'")
    assert check.verdict == Verdict.WARN
    assert "unknown command" in check.detail


def test_trusted_users():
    assert facts.trusted_check("root", [], CONFIG, "").verdict == Verdict.OK
    assert facts.trusted_check("nixremote", ["users", "wheel"], CONFIG, "").verdict == Verdict.OK
    untrusted = facts.trusted_check("nixremote", ["users"], CONFIG, "")
    assert untrusted.verdict == Verdict.WARN
    assert untrusted.fix is not None
    assert "trusted-users" in untrusted.fix


def test_trust_matters_only_where_a_daemon_is_asked() -> None:
    # Through the builder's nix-daemon, an untrusted user's builds fail; root is trusted only
    # if listed there; writing the store itself, nobody asks.
    assert facts.trusted_check("nixremote", [], CONFIG, "", "daemon").verdict == Verdict.FAIL
    untrusting = {**CONFIG, "trusted-users": "alice"}
    assert facts.trusted_check("root", [], untrusting, "", "daemon").verdict == Verdict.FAIL
    assert facts.trusted_check("root", [], untrusting, "", None).verdict == Verdict.OK
    assert facts.trusted_check("nixremote", [], CONFIG, "", "local").verdict == Verdict.OK
    assert facts.trusted_check("nixremote", [], None, "no nix", "local").verdict == Verdict.OK


@pytest.mark.parametrize(
    ("store", "probe", "route"),
    [
        ("daemon", "daemon\nlocal\n", "daemon"),
        ("unix:///run/nix.sock", "", "daemon"),
        ("local", "", "local"),
        ("/srv/nix", "", "local"),
        ("auto", "auto\ndaemon\n", "daemon"),
        ("auto", "auto\nlocal\n", "local"),
        ("auto", "", None),
        ("ssh://elsewhere", "auto\nlocal\n", None),
        (None, "daemon\nlocal\n", "daemon"),  # no show-config: NIX_REMOTE as the probe says
        (None, "auto\ndaemon\n", "daemon"),
    ],
)
def test_the_store_route_follows_nix_s_own_choice(
    store: str | None, probe: str, route: str | None
) -> None:
    config = None if store is None else {**CONFIG, "store": store}
    assert facts.store_route(config, probe) == route


def test_free_disk_thresholds():
    def gib(n: float) -> str:
        return DF.format(free=int(n * 1024 * 1024))

    assert facts.disk_check(0, gib(80), "").verdict == Verdict.OK
    assert facts.disk_check(0, gib(80), "").detail == "80.0 GiB free on /nix/store"
    assert facts.disk_check(0, gib(3), "").verdict == Verdict.WARN
    assert facts.disk_check(0, gib(0.5), "").verdict == Verdict.FAIL
    unknown = facts.disk_check(1, "", "df: /nix/store: No such file or directory\n")
    assert unknown.verdict == Verdict.WARN
    assert "No such file" in unknown.detail


def test_load_follows_the_slot_rule_and_spares_this_hosts_kernel():
    busy = RemoteLoad(cores=4, load1=7.5, boot_id="b1")
    warn = facts.load_check(busy, 4, "local")
    assert warn.verdict == Verdict.WARN
    assert "uses 1 of its 4 slots" in warn.detail
    assert facts.load_check(busy, 4, "b1").verdict == Verdict.OK
    assert facts.load_check(RemoteLoad(cores=4, load1=1.0), 4, None).verdict == Verdict.OK
    assert facts.load_check(None, 4, None).verdict == Verdict.OK


def test_round_trip_time():
    assert facts.rtt_check([0.03, 0.02, 0.05]).detail.startswith("20 ms")
    assert facts.rtt_check([0.9]).verdict == Verdict.WARN
    assert facts.rtt_check([]).verdict == Verdict.WARN


def test_throughput():
    good = facts.throughput_check(8 << 20, 8 << 20, 0.1, compressed=False)
    assert (good.verdict, good.detail.split()[0]) == (Verdict.OK, "84")
    slow = facts.throughput_check(8 << 20, 8 << 20, 16.0, compressed=False)
    assert slow.verdict == Verdict.WARN
    assert "1 GB of outputs takes 1907 s" in (slow.fix or "")
    assert "compressed" in facts.throughput_check(10, 10, 1e-6, compressed=True).detail
    assert facts.throughput_check(8 << 20, 100, 0.1, compressed=False).verdict == Verdict.WARN


def test_the_report_marks_failures_skips_and_their_fixes():
    good = MachineReport("fast", "ssh://fast", (Check("resolve", Verdict.OK, "fast"),), 0.4)
    dead = MachineReport(
        "dead",
        "ssh://dead",
        (
            Check("resolve", Verdict.OK, "dead"),
            Check("port", Verdict.FAIL, "nothing listens", "start sshd"),
            *skipped(["ssh"], "port"),
        ),
        0.01,
    )
    assert dead.failed
    assert not good.failed
    text = format_report([good, dead])
    header, row_good, row_dead = text.splitlines()[:3]
    assert header.split()[:4] == ["MACHINE", "RESOLVE", "PORT", "SSH"]
    assert row_dead.split()[:4] == ["dead", "ok", "FAIL", "-"]
    assert row_good.split()[-1] == "0.4s"
    assert "dead: port fail: nothing listens\n  fix: start sshd\n" in text
    assert "fast: resolve" not in text
    assert "fast: resolve ok: fast" in format_report([good], verbose=True)
    # What a builder or a file said, quoted in a detail, reached the terminal raw.
    odd = MachineReport(
        "a\x1b[31mb",
        "ssh://a",
        (Check("resolve", Verdict.FAIL, "no host 'a\x1b[31mb'", "fix\nit"),),
        0.01,
    )
    said = format_report([odd])
    assert "\x1b" not in said
    assert "a\\x1b[31mb: resolve fail: no host 'a\\x1b[31mb'\n  fix: fix\\nit\n" in said
    assert dead.as_json()["checks"][2] == {
        "name": "ssh",
        "verdict": "skipped",
        "detail": "not checked: port failed",
        "fix": None,
    }


def test_a_restricted_builder_is_usable_and_what_it_cannot_tell_is_said_once():
    unknown = facts.restricted_checks(3)
    assert [c.name for c in unknown] == [
        "nix", "systems", "features", "trusted", "disk", "load", "throughput", "cipher",
    ]  # fmt: skip
    assert {c.verdict for c in unknown} == {Verdict.UNKNOWN}
    assert "all 3 of its slots" in unknown[-1].detail
    serve = facts.serve_check(0x207, None, None, restricted=True)
    assert serve.verdict == Verdict.OK
    assert "runs only `nix-store --serve`" in serve.detail
    checks = [
        Check("resolve", Verdict.OK, "r"),
        Check("port", Verdict.OK, "p"),
        Check("ssh", Verdict.OK, "s"),
        unknown[0],
        serve,
        *unknown[1:-2],
        slot_facts.slots_check(3, RESTRICTED_FALLBACK),
        Check("rtt", Verdict.OK, "3 ms"),
        *unknown[-2:],
    ]
    report = MachineReport("locked", "ssh://locked", tuple(checks), 0.2)
    assert not report.failed
    text = format_report([report])
    cells = ["ok", "ok", "ok", "?", "ok", "?", "?", "?", "?", "?", "warn", "ok", "?", "?"]
    assert text.splitlines()[1].split()[1:-1] == cells
    (told,) = [line for line in text.splitlines() if "unknown" in line]
    assert told.startswith(
        "locked: nix, systems, features, trusted, disk, load, throughput, cipher unknown: "
    )


def test_slots_say_where_they_are_counted_and_how_to_count_them_on_the_builder():
    here = slot_facts.slots_check(2, None)
    assert (here.verdict, here.fix) == (Verdict.OK, None)
    assert "2 counted on the builder" in here.detail
    assert slot_facts.slots_check(2, None, full="busy").detail.endswith("all held by others now")
    # A slot left free for another client waiting there is not one held by others.
    yielded = slot_facts.slots_check(2, None, full="yield").detail
    assert yielded.endswith("the next free one goes to another client waiting there now")
    for reason, fix_word in (
        (RESTRICTED_FALLBACK, "command="),
        (DAEMON_RESTRICTED_FALLBACK, "command="),
        (FALLBACKS["noflock"], "util-linux"),
        (FALLBACKS["nodir"], "offload-slots"),
    ):
        check = slot_facts.slots_check(2, reason)
        assert check.verdict == Verdict.WARN
        assert check.detail.startswith(f"counted on this host only: {reason}")
        assert check.fix is not None
        assert fix_word in check.fix


def test_slots_counted_in_the_builder_users_home_are_said_per_account() -> None:
    # A builder user who cannot write the Nix state counts in its home: a CI logging in as
    # root, or a person as themselves, counted their builds apart, and doctor said "by every
    # offload client on every host".
    own = slot_facts.slots_check(2, None, counted="home")
    assert own.verdict is Verdict.OK
    assert own.detail == (
        "2 counted on the builder, by every offload client logging in as this user (in its "
        "~/.cache/offload-slots); clients logging in as another user count theirs apart"
    )
    assert own.fix is not None
    assert own.fix.startswith("nothing to fix if every client logs in as this user")
    assert slot_facts.slots_check(2, None, counted="nix").detail == (
        "2 counted on the builder, by every offload client on every host"
    )


def test_a_builder_whose_max_jobs_is_0_builds_nothing_sent_over_ssh() -> None:
    slots = slot_facts.slots_check(2, None)
    idle = {**CONFIG, "max-jobs": "0", "builders": ""}
    failed = slot_facts.builder_jobs_check(idle, slots, serve=True, own=0)
    assert failed.verdict is Verdict.FAIL
    assert failed.detail == (
        "the builder's max-jobs is 0 and it has no builders of its own: every build sent there "
        'fails ("unable to start any build")'
    )
    assert failed.fix is not None
    assert failed.fix.startswith("set max-jobs to 1 or more in the builder's nix.conf")
    handing_on = slot_facts.builder_jobs_check(idle, slots, serve=True, own=2)
    assert handing_on.verdict is Verdict.WARN
    assert "only hands builds on to the 2 machine(s)" in handing_on.detail
    # ssh-ng:// sessions bring the client's max-jobs; a builder that builds is left alone.
    assert slot_facts.builder_jobs_check(idle, slots, serve=False, own=0) is slots
    assert (
        slot_facts.builder_jobs_check({**CONFIG, "max-jobs": "4"}, slots, serve=True, own=0)
        is slots
    )
    assert slot_facts.builder_jobs_check(None, slots, serve=True, own=0) is slots


def test_the_builders_own_builders_are_counted_as_nix_reads_them() -> None:
    config = {"builders": "ssh://a x86_64-linux ; @/etc/nix/machines;@/nowhere # c\n"}
    assert slot_facts.builders_files(config) == ["/etc/nix/machines", "/nowhere"]
    text = "# the builder's machines\nssh://b x86_64-linux\n\nssh://c x86_64-linux - 1 1 a;b\n"
    assert slot_facts.own_builders(config, {"/etc/nix/machines": text}) == 3
    assert slot_facts.own_builders({"builders": "@/etc/nix/machines"}, {}) == 0
    assert slot_facts.own_builders({"builders": ""}, {}) == 0


def test_a_builder_of_no_slots_is_no_slot_counted_but_one_never_used() -> None:
    # `ssh://b1 x86_64-linux - 0`: "slots ok: 0 counted on the builder", where `offload
    # machines` says no build is ever sent to it.
    check = slot_facts.slots_check(0, None)
    assert check.verdict == Verdict.WARN
    assert check.detail == "maxJobs is 0: no build is ever sent to it"
    assert slot_facts.slots_check(2, None).verdict == Verdict.OK


def test_doctor_given_only_builders_it_does_not_connect_to_says_which_and_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It said "no builders to check" with the hint to give some, though one was given.
    from offload.cli import main

    assert main(["doctor", "--builders", "ssh://-oProxyCommand=x x86_64-linux"]) == 1
    err = capsys.readouterr().err
    assert (
        "error: no builder to check: offload does not connect to -oProxyCommand=x (its host" in err
    )
    assert "starts with '-', which ssh reads as an option" in err


def test_a_claim_offload_toml_set_is_fixed_there_not_in_the_machines_line(tmp_path):
    # An offload.toml table over the line set the systems: "remove aarch64-linux from column
    # 2 of machines:1" named a line without it.
    toml = tmp_path / "offload.toml"
    toml.write_text('[[machine]]\nuri = "ssh://b1"\nsystems = ["x86_64-linux", "aarch64-linux"]\n')
    nix = NixSettings({"builders": "ssh://b1 x86_64-linux"})
    pool = load_pool(builders=None, config=toml, env={}, nix_settings=nix)
    (machine,) = pool.machines
    table = machine.toml_table("systems")
    assert table is not None
    assert str(toml) in table
    bad = claims.systems_check(machine.systems, CONFIG, "", machine.source, table=table)
    assert bad.fix is not None
    assert bad.fix.startswith(f"remove aarch64-linux from `systems` in {table}")
    features = claims.features_check({"cuda"}, (), CONFIG, "", table=table)
    assert features.fix is not None
    assert features.fix.startswith(f"remove it from `supported-features` in {table}")


@pytest.mark.parametrize(
    ("offered", "code", "cpu", "verdict", "said"),
    [
        (None, 0, "flags : fpu aes", Verdict.OK, "ssh's own order"),
        ("aes128-gcm@openssh.com,chacha20-poly1305@openssh.com", 0, "flags\t: fpu sse2 aes avx",
         Verdict.OK, "aes128-gcm@openssh.com offered first: both ends have AES"),
        ("aes128-gcm@openssh.com,chacha20-poly1305@openssh.com", 0, "flags\t: fpu sse2 avx",
         Verdict.WARN, "but its CPU has no AES instructions"),
        ("aes128-gcm@openssh.com", 1, "", Verdict.OK, "its CPU not asked"),
    ],
    ids=["ssh-order", "both-aes", "kvm64", "no-cpuinfo"],
)  # fmt: skip
def test_the_cipher_offered_is_judged_against_the_builders_cpu(
    offered: str | None, code: int, cpu: str, verdict: Verdict, said: str
) -> None:
    found = facts.cipher_check(offered, code, cpu)
    assert found.verdict == verdict
    assert said in found.detail
    assert (found.fix is not None) == (verdict == Verdict.WARN)
    if found.fix:
        assert "Ciphers chacha20-poly1305@openssh.com" in found.fix


def test_the_store_the_machines_line_names_is_the_route() -> None:
    # offload passes `remote-store` on as --store: the builder's own setting is not read.
    local = {**CONFIG, "store": "local"}
    assert facts.store_route(local, "local\nlocal\n", "daemon") == "daemon"
    assert facts.store_route(local, "auto\ndaemon\n", "local") == "local"
    assert facts.store_route(local, "auto\ndaemon\n", "auto") == "daemon"
    assert facts.store_route(local, "auto\ndaemon\n", None) == "local"
