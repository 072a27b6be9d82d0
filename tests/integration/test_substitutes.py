"""builders-use-substitutes: a builder fetches inputs from its own binary cache, not from us."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess

import pytest

from offload.fleet import MemberSpec
from tests.helpers.fleets import private_fleet_fixture
from tests.helpers.hook_runs import nix_build, outputs
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import events, finished, offload_argv, offload_env

cache_fleet = private_fleet_fixture(
    [MemberSpec.parse("cached:1:1")],
    "ofs",
    scope="module",
    doc="One member, whose binary cache a test sets.",
)


@pytest.fixture(autouse=True)
def _builder_conf_restored(cache_fleet):
    """The member's nix.conf as it was before each test, which may set its caches."""
    conf = cache_fleet.member("cached").root / "etc-nix" / "nix.conf"
    kept = conf.read_text()
    yield
    conf.write_text(kept)


@pytest.mark.parametrize("scheme", ["ssh", "ssh-ng"])
def test_a_builder_with_a_cache_substitutes_the_input_instead_of_receiving_it(
    cache_fleet, tmp_path, scheme
):
    # ssh-ng: the daemon was never told useSubstitutes, and took nothing from its cache.
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(2 * 1024 * 1024))
    source = subprocess.run(
        ["nix-store", "--add", str(blob)], capture_output=True, text=True, check=True
    ).stdout.strip()
    cache = tmp_path / "cache"
    nix = ["nix", "--extra-experimental-features", "nix-command"]
    subprocess.run(
        [*nix, "copy", "--to", f"file://{cache}", source],
        check=True,
        capture_output=True,
    )
    member = cache_fleet.member("cached")
    conf = member.root / "etc-nix" / "nix.conf"
    conf.write_text(
        conf.read_text().replace("substituters =", f"substituters = file://{cache}")
        + "require-sigs = false\n"
    )
    script = f"/bin/sha256sum ${{builtins.storePath {json.dumps(source)}}} > $out"
    file = nix_file(tmp_path, f'{{ x = mk "uses-blob" "{script}" {{}}; }}\n')
    env = offload_env(cache_fleet, tmp_path)
    machines = tmp_path / "machines"
    machines.write_text(cache_fleet.machines_file.read_text().replace("ssh://", f"{scheme}://"))
    common = ["-A", "x", "--builders", f"@{machines}", "-j", "0", "--json"]
    done = subprocess.run(
        [*offload_argv(file, *common), "--option", "builders-use-substitutes", "true"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (job,) = [e for e in finished(done.stdout) if e["name"] == "uses-blob"]
    assert job["status"] == "built"
    assert job["bytes_sent"] < 100_000  # the 2 MiB input came from the cache, not from us
    assert cache_fleet.store_has("cached", source)


def test_a_cache_the_builder_leaves_out_is_a_fault_of_the_run(cache_fleet, tmp_path):
    # The builder's Nix cannot reach its one cache (a loopback port nothing listens on): it
    # says so in its own words, which offload tells once as that builder's "cache" event, on
    # stderr and in the summary; the input is sent instead and the build goes on.
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        cache = f"http://127.0.0.1:{refusing.getsockname()[1]}"
        member = cache_fleet.member("cached")
        conf = member.root / "etc-nix" / "nix.conf"
        conf.write_text(
            conf.read_text().replace("substituters =", f"substituters = {cache}")
            + "download-attempts = 1\n"
        )
        blob = tmp_path / "blob"
        blob.write_bytes(os.urandom(1024))
        source = subprocess.run(
            ["nix-store", "--add", str(blob)], capture_output=True, text=True, check=True
        ).stdout.strip()
        script = f"/bin/sha256sum ${{builtins.storePath {json.dumps(source)}}} > $out"
        file = nix_file(tmp_path, f'{{ x = mk "uses-blob" "{script}" {{}}; }}\n')
        env = offload_env(cache_fleet, tmp_path)
        common = ["-A", "x", "--builders", f"@{cache_fleet.machines_file}", "-j", "0", "--json"]
        done = subprocess.run(
            [*offload_argv(file, *common), "--option", "builders-use-substitutes", "true"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    (job,) = [e for e in finished(done.stdout) if e["name"] == "uses-blob"]
    assert job["status"] == "built"
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    told = [e for e in events if e["event"] == "machine" and e["state"] == "cache"]
    assert [(e["machine"], e["cache"]) for e in told] == [("cached", cache)], done.stdout
    assert "cannot be reached (Couldn't connect to server (7))" in told[0]["message"]
    warned = [line for line in done.stderr.splitlines() if "is left out" in line]
    assert [line.split("; ")[0] for line in warned] == [
        f"warning: binary cache '{cache}' (on cached) is left out: {told[0]['message']}"
    ], done.stderr


def test_an_ssh_cache_that_refuses_is_a_fault_of_the_run_and_fails_it_without_fallback(
    cache_fleet, tmp_path
):
    # An ssh:// cache connects only once a path is asked of it: here a real loopback sshd
    # refuses its user. Nix 2.8 says so only as "cannot connect to '<user@host>'": with
    # --fallback it goes on building, and offload tells that cache as left out, named as set;
    # without, Nix stops (nix-build exits 1) and so does the run, its error said once.
    cache = "ssh://nobody-here@cached"
    file = nix_file(tmp_path, '{ x = mk "after-ssh-cache" "/bin/echo x > $out" {}; }\n')
    env = offload_env(cache_fleet, tmp_path)
    common = ["-A", "x", "--builders", "", "-j", "1", "--no-out-link", "--json"]
    flags = ["--option", "substituters", cache]
    run = functools.partial(
        subprocess.run, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    failed = run([*offload_argv(file, *common), *flags], check=False)
    assert failed.returncode == 1, failed.stderr
    said = [line for line in failed.stderr.splitlines() if "cannot connect to" in line]
    assert said == ["error: local: cannot connect to 'nobody-here@cached'"], failed.stderr
    assert not [e for e in events(failed.stdout) if e.get("state") == "cache"], failed.stdout
    done = run([*offload_argv(file, *common), *flags, "--option", "fallback", "true"], check=False)
    assert done.returncode == 0, done.stderr
    told = [e for e in events(done.stdout) if e["event"] == "machine" and e["state"] == "cache"]
    assert [(e["machine"], e["cache"], e["message"]) for e in told] == [
        ("local", cache, "it cannot be reached over ssh")
    ], done.stdout
    warned = [line for line in done.stderr.splitlines() if "is left out" in line]
    assert [line.split(": it")[0] for line in warned] == [
        f"warning: binary cache '{cache}' is left out"
    ], done.stderr


def test_a_builder_whose_nix_stops_on_its_ssh_cache_is_down_and_no_cache_is_left_out(
    cache_fleet, tmp_path
):
    # The builder's one cache is an ssh:// one that refuses: without fallback its Nix stops on
    # it as it substitutes the inputs (its session ends with "cannot connect to ..."), which is
    # the builder down, not a cache left out while the build goes on there (told before, with
    # "what it has is built instead"). With fallback = true its Nix goes on: then it is one.
    member = cache_fleet.member("cached")
    conf = member.root / "etc-nix" / "nix.conf"
    cache = "ssh://nobody-here@127.0.0.1"
    kept = conf.read_text().replace("substituters =", f"substituters = {cache}")
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(1024))
    source = subprocess.run(
        ["nix-store", "--add", str(blob)], capture_output=True, text=True, check=True
    ).stdout.strip()
    script = f"/bin/sha256sum ${{builtins.storePath {json.dumps(source)}}} > $out"
    file = nix_file(tmp_path, f'{{ x = mk "after-builder-ssh-cache" "{script}" {{}}; }}\n')
    common = ["-A", "x", "--builders", f"@{cache_fleet.machines_file}", "-j", "0", "--json"]
    argv = [*offload_argv(file, *common, "--no-out-link"), "--option", "builders-use-substitutes"]
    runs = {}
    for fallback in ("false", "true"):
        conf.write_text(f"{kept}fallback = {fallback}\n")
        runs[fallback] = subprocess.run(
            [*argv, "true"],
            env=offload_env(cache_fleet, tmp_path / fallback),  # its own backoff state
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    stopped, went_on = runs["false"], runs["true"]
    assert stopped.returncode == 1, stopped.stderr
    down = [(e["machine"], e["state"]) for e in events(stopped.stdout) if e["event"] == "machine"]
    assert down == [("cached", "down")], stopped.stdout
    assert "is left out" not in stopped.stderr, stopped.stderr
    # Said as what it is, with the fix on the builder (not offload failing to connect to it).
    (said,) = [e["message"] for e in events(stopped.stdout) if e["event"] == "machine"]
    assert said.startswith("its Nix stopped on a binary cache of its own"), said
    assert f"cannot connect to '{cache.removeprefix('ssh://')}'" in said, said
    assert went_on.returncode == 0, went_on.stderr
    told = [e for e in events(went_on.stdout) if e["event"] == "machine"]
    assert [(e["machine"], e["state"], e["cache"]) for e in told] == [("cached", "cache", cache)], (
        went_on.stdout
    )
    (job,) = finished(went_on.stdout)
    assert (job["machine"], job["status"]) == ("cached", "built"), job


@pytest.mark.usefixtures("coordinators_stopped")
def test_offload_hook_says_a_cache_the_builder_leaves_out_once_per_nix_build(cache_fleet, tmp_path):
    # nix-build with offload-hook and builders-use-substitutes: the builder's Nix cannot reach
    # its one cache. Its words are in the build's log; the hook says it once, as a line of its
    # own on the terminal (nix build shows a build's log only when it fails), for the two
    # derivations whose inputs the builder was asked to substitute; both are built there.
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        cache = f"http://127.0.0.1:{refusing.getsockname()[1]}"
        conf = cache_fleet.member("cached").root / "etc-nix" / "nix.conf"
        conf.write_text(
            conf.read_text().replace("substituters =", f"substituters = {cache}")
            + "download-attempts = 1\n"
        )
        body = []
        for name in ("one", "two"):
            blob = tmp_path / name
            blob.write_bytes(os.urandom(1024))
            source = subprocess.run(
                ["nix-store", "--add", str(blob)], capture_output=True, text=True, check=True
            ).stdout.strip()
            script = f"/bin/sha256sum ${{builtins.storePath {json.dumps(source)}}} > $out"
            body.append(f'{name} = mk "uses-{name}" "{script}" {{}};')
        file = nix_file(tmp_path, f"{{ {' '.join(body)} }}\n")
        done = nix_build(
            cache_fleet, tmp_path, file, "-j", "0", "--option", "builders-use-substitutes", "true"
        )
    assert done.returncode == 0, done.stderr
    assert len(outputs(done)) == 2, done.stdout
    said = [line for line in done.stderr.splitlines() if "left out binary cache" in line]
    why = "it cannot be reached (Couldn't connect to server (7))"
    line = (
        f"offload-hook: builder 'cached' left out binary cache '{cache}': {why}; the inputs it "
        "would have given are sent from here instead (check the substituters setting on "
        "'cached')"
    )
    assert said == [line], done.stderr


@pytest.mark.usefixtures("coordinators_stopped")
def test_offload_hook_says_a_builder_whose_nix_stops_on_its_ssh_cache_failed_not_a_cache_left_out(
    cache_fleet, tmp_path
):
    # nix-build with offload-hook, builders-use-substitutes on and the builder's one cache an
    # ssh:// one that refuses. Without fallback its Nix stops on it as it substitutes the
    # inputs: the builder failed, with its Nix's words and the fix on the builder, and no cache
    # was left out while the inputs went from here (said so before, then the failure). With
    # fallback = true its Nix goes on: then it is a cache left out, said once, and built there.
    conf = cache_fleet.member("cached").root / "etc-nix" / "nix.conf"
    cache = "ssh://nobody-here@127.0.0.1"
    kept = conf.read_text().replace("substituters =", f"substituters = {cache}")
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(1024))
    source = subprocess.run(
        ["nix-store", "--add", str(blob)], capture_output=True, text=True, check=True
    ).stdout.strip()
    script = f"/bin/sha256sum ${{builtins.storePath {json.dumps(source)}}} > $out"
    file = nix_file(tmp_path, f'{{ x = mk "hook-after-ssh-cache" "{script}" {{}}; }}\n')
    runs = {}
    for fallback in ("false", "true"):
        conf.write_text(f"{kept}fallback = {fallback}\n")
        (tmp_path / fallback).mkdir()  # its own backoff state
        runs[fallback] = nix_build(
            cache_fleet, tmp_path / fallback, file, "-j", "0", "--option",
            "builders-use-substitutes", "true",
        )  # fmt: skip
    stopped, went_on = runs["false"], runs["true"]
    assert stopped.returncode != 0, stopped.stderr
    assert "left out binary cache" not in stopped.stderr, stopped.stderr
    (failed,) = [line for line in stopped.stderr.splitlines() if "'cached' failed" in line]
    assert failed.startswith(
        "offload-hook: builder 'cached' failed: its Nix stopped on a binary cache of its own as "
        "it substituted the inputs (builders-use-substitutes): cached: cannot connect to "
        "'nobody-here@127.0.0.1'; fix the substituters (or set fallback = true) in the builder's "
        "nix.conf, or give --option builders-use-substitutes false; backed off until "
    ), failed
    assert went_on.returncode == 0, went_on.stderr
    said = [line for line in went_on.stderr.splitlines() if "left out binary cache" in line]
    line = (
        f"offload-hook: builder 'cached' left out binary cache '{cache}': it cannot be reached "
        "over ssh; the inputs it would have given are sent from here instead (check the "
        "substituters setting on 'cached')"
    )
    assert said == [line], went_on.stderr
