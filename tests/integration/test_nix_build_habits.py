"""`offload build` against the real nix-build 2.8 for what Nix users type daily and the odd
forms their scripts rely on (standard input, exit statuses, links), each case run with both on
the same project and compared as a user reads them: exit status, stdout, links, Nix's errors.

Builds are local and trivial; a nonce per run makes every build that must fail a fresh one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.helpers.nix_build_habits import OFFLINE, OFFLOAD, both, errors, lay_out, one


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return lay_out(tmp_path)


@pytest.mark.parametrize(
    "args",
    [
        ("--no-out-link", "-", "-A", "ok"),
        ("--no-out-link", "-A", "two", "-"),
        # "-" is the only thing evaluated: nix-build ignores the other arguments then.
        ("--no-out-link", "-", "../default.nix", "-A", "two"),
        ("--no-out-link", "-E", "-", "-A", "ok"),
    ],
    ids=" ".join,
)
def test_a_dash_reads_the_expression_from_standard_input(
    project: Path, args: tuple[str, ...]
) -> None:
    nonce = uuid.uuid4().hex
    stdin = f"import {project}/default.nix {{ nonce = {nonce!r}; }}".replace("'", '"')
    nix, offload = both(project, *args, stdin=stdin)
    assert nix.returncode == 0, nix.stderr
    assert len(nix.stdout.split()) == 1
    assert (offload.returncode, offload.stdout) == (0, nix.stdout), offload.stderr


def test_an_error_in_standard_input_is_placed_in_stdin_as_nix_build_places_it(
    project: Path,
) -> None:
    nix, offload = both(project, "-", stdin="let in nope\n")
    assert nix.returncode == offload.returncode == 1
    assert "«stdin»:1:8" in nix.stderr
    assert errors(offload.stderr) == errors(nix.stderr)


@pytest.mark.parametrize("in_the_way", ["a directory", "a file"])
def test_a_link_in_the_way_is_said_in_nix_builds_words(project: Path, in_the_way: str) -> None:
    for where in ("nix", "off"):
        if in_the_way == "a directory":
            (project / where / "out").mkdir()
        else:
            (project / where / "out").write_text("mine\n")
    nix, offload = both(project, "-A", "ok", "-o", "out", "../default.nix")
    assert nix.returncode == offload.returncode == 1
    assert offload.stdout == nix.stdout == ""
    # "error: cannot create symlink '<dir>/out'; already exists": the one line nix-build
    # prints, not the nix-store command offload ran to make the link.
    said = errors(nix.stderr).replace("/nix/out", "/off/out")
    assert said.startswith("error: cannot create symlink")
    assert errors(offload.stderr) == said


def test_version_is_one_line_in_nix_builds_form(project: Path) -> None:
    nix, offload = both(project, "-A", "ok", "--version")
    assert nix.returncode == offload.returncode == 0
    # "nix-build (Nix) 2.8.0": the program, its package in parentheses, the version; nothing
    # is built, and no link is made.
    assert re.fullmatch(r"nix-build \(Nix\) [\d.]+\n", nix.stdout)
    assert re.fullmatch(r"offload build \(offload\) [\w.+-]+\n", offload.stdout)
    assert not list((project / "off").iterdir())


@pytest.mark.parametrize(
    "given",
    [
        ("--argstr", "who", "first", "--arg", "who", '"last"'),
        ("--arg", "who", '"first"', "--argstr", "who", "last"),
        ("--argstr", "who", "first", "--argstr", "who", "last"),
    ],
    ids=" ".join,
)
def test_the_last_of_arg_and_argstr_for_a_name_wins_as_in_nix_build(
    project: Path, given: tuple[str, ...]
) -> None:
    nix, offload = both(project, "--no-out-link", "-A", "greet", *given, "../default.nix")
    assert nix.returncode == 0, nix.stderr
    assert Path(nix.stdout.strip()).read_text() == "last\n"
    assert (offload.returncode, offload.stdout) == (0, nix.stdout), offload.stderr


@pytest.mark.parametrize(
    ("given", "status"),
    [
        (("-j", "0", "--option", "max-jobs", "1"), 0),  # the option, last, lets it build here
        (("--option", "max-jobs", "1", "-j", "0"), 1),  # -j 0 last: nowhere to build
        (("--max-jobs", "0", "--option", "max-jobs", "1"), 0),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_the_last_of_j_and_option_max_jobs_holds_as_in_nix_build(
    project: Path, given: tuple[str, ...], status: int
) -> None:
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    nix, offload = both(project, "--no-out-link", "-A", "ok", *nonce, *given, "../default.nix")
    assert nix.returncode == status, nix.stderr
    assert (offload.returncode, offload.stdout) == (status, nix.stdout), offload.stderr


def test_an_option_builders_after_builders_holds_as_in_nix_build(project: Path) -> None:
    # A wrapper's --builders, then the caller's --option builders '' (none): nix-build takes
    # the last and builds here, without trying the first one's builder.
    given = ("--builders", "ssh://nowhere.invalid", "--option", "builders", "")
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    nix, offload = both(project, "--no-out-link", "-A", "ok", *nonce, *given, "../default.nix")
    assert nix.returncode == 0, nix.stderr
    assert (offload.returncode, offload.stdout) == (0, nix.stdout), offload.stderr
    assert "nowhere" not in nix.stderr + offload.stderr


@pytest.mark.parametrize(
    ("given", "goes_on"),
    [
        (("-k", "--option", "keep-going", "false"), False),
        (("--option", "keep-going", "false", "-k"), True),
        (("--keep-going", "--option", "keep-going", "true"), True),
        (("-k", "--no-keep-going"), False),
        (("--no-keep-going", "-k"), True),
        (("--option", "keep-going", "true", "--no-keep-going"), False),  # nix.conf's, turned off
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_the_last_of_k_and_option_keep_going_holds_as_in_nix_build(
    project: Path, given: tuple[str, ...], goes_on: bool
) -> None:
    # bad fails at once, while slow (1 s) runs beside it: late, after slow, is built only when
    # the run goes on. (With -j 1 and ok, the order of bad and ok was the scheduler's choice.)
    # Each tool builds its own (its own nonce).
    said = []
    for tool in ("nix", "off"):
        nonce = uuid.uuid4().hex
        args = ("-j", "2", "-A", "bad", "-A", "late", *given, "--argstr", "nonce", nonce)
        done = one(project, tool, "--no-out-link", *args, "../default.nix")
        said.append((done.returncode, f"building {nonce}" in done.stderr))
    assert said == [(100, goes_on), (100, goes_on)]


def _listed(stderr: str) -> tuple[str, set[str]]:
    """A dry run's "... will be built:" line and the store paths listed under it."""
    lines = stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if line.endswith("will be built:"))
    paths = set()
    for line in lines[at + 1 :]:
        if not line.startswith("  /nix/store/"):
            break
        paths.add(line.split()[0])
    return lines[at], paths


@pytest.mark.parametrize(
    ("attrs", "count", "jobs"),
    [
        (("ok",), 1, ()),
        (("top", "bad"), 3, ()),
        # No machine at all: a dry run builds nothing, so it needs none.
        (("top", "bad"), 3, ("-j", "0")),
        # No machine can build odd, nor so afterodd, which needs it: nix-build lists them.
        (("odd",), 1, ("-j", "2")),
        (("afterodd",), 2, ("-j", "2")),
    ],
)
def test_a_dry_run_lists_the_derivations_nix_build_lists(
    project: Path, attrs: tuple[str, ...], count: int, jobs: tuple[str, ...]
) -> None:
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    selected = [word for attr in attrs for word in ("-A", attr)]
    nix, offload = both(project, "--dry-run", *jobs, *selected, *nonce, "../default.nix")
    assert nix.returncode == offload.returncode == 0, offload.stderr
    assert nix.stdout == offload.stdout == ""
    # "this derivation will be built:" or "these 3 derivations will be built:", then each
    # .drv path (offload's plan for it after it on its line), as a user copies them.
    head, paths = _listed(nix.stderr)
    assert len(paths) == count
    assert _listed(offload.stderr) == (head, paths)


def test_a_dry_run_with_no_machine_lists_them_and_says_so_in_one_line(project: Path) -> None:
    # It said "error: no machine to build on" and exited 1; nix-build lists them and exits 0.
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    nix, offload = both(project, "--dry-run", "-j", "0", "-A", "top", *nonce, "../default.nix")
    assert nix.returncode == offload.returncode == 0, offload.stderr
    _, paths = _listed(nix.stderr)
    lines = offload.stderr.splitlines()
    at = lines.index("these 2 derivations will be built:")
    assert {line.strip() for line in lines[at + 1 : at + 3]} == paths  # nothing planned
    said = "no machine could build them: the local machine takes no jobs (max-jobs 0)"
    assert lines[at + 3 :] == [f"{said} and no builder is set"]


@pytest.mark.parametrize("expression", ["[]", "{ lib = { x = 1; }; }"])
def test_an_expression_of_no_derivations_builds_nothing_and_exits_0(
    project: Path, expression: str
) -> None:
    # A job set empty on this platform (`lib.optionalAttrs isLinux {...}` on Darwin): it
    # said "error: the expression produced no derivations" and exited 1.
    for args in (("-E", expression), ("--dry-run", "-E", expression)):
        nix, offload = both(project, *args)
        assert (nix.returncode, nix.stdout) == (0, ""), nix.stderr
        assert (offload.returncode, offload.stdout) == (0, ""), offload.stderr
        assert "error" not in offload.stderr
    assert list((project / "off").iterdir()) == []  # no result link


def test_max_jobs_0_with_no_builder_is_fine_while_every_output_is_valid(project: Path) -> None:
    # It said "error: no machine to build on" before looking; nix-build (a cache-only CI's
    # max-jobs = 0) builds nothing and links what is there.
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    assert (
        one(project, "nix", "--no-out-link", "-A", "ok", *nonce, "../default.nix").returncode == 0
    )
    nix, offload = both(project, "-j", "0", "-A", "ok", *nonce, "../default.nix")
    assert nix.returncode == 0, nix.stderr
    assert (offload.returncode, offload.stdout) == (0, nix.stdout), offload.stderr
    assert (project / "off" / "result").resolve() == (project / "nix" / "result").resolve()
    # With one to build, both fail, offload in one line with its hint.
    nix, offload = both(project, "-j", "0", "-A", "two", *nonce, "../default.nix")
    assert nix.returncode == offload.returncode == 1
    said = errors(offload.stderr).splitlines()
    assert (
        said[0]
        == "error: no machine to build on: the local machine takes no jobs and no builder is set"
    )
    assert said[1].startswith("hint: ")


def test_the_store_named_auto_is_the_local_one_as_nix_build_takes_it(project: Path) -> None:
    # --store auto (a script's or an alias's) was refused as another store.
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    store = ("--store", "auto", "--eval-store", "auto")
    nix, offload = both(project, "--no-out-link", *store, "-A", "ok", *nonce, "../default.nix")
    assert nix.returncode == 0, nix.stderr
    assert (offload.returncode, offload.stdout) == (0, nix.stdout), offload.stderr
    other = one(project, "off", "--store", "auto", "--store", "/tmp/x", "-A", "ok")
    assert other.returncode == 1
    assert errors(other.stderr).startswith("error: --store: not supported by offload build")


def test_a_channel_argument_is_nixs_to_download_as_nix_build_does(project: Path) -> None:
    # `nix-build channel:nixos-22.05 -A hello`: Nix downloads the channel's tarball. Offline
    # here, so both fail the same way, in Nix's words; offload used to call it a missing file.
    once = ("--option", "download-attempts", "1", "--option", "connect-timeout", "5")
    nix, offload = both(project, "--no-out-link", "channel:offload-nope", "-A", "ok", *once)
    assert nix.returncode == offload.returncode == 1
    said = "unable to download 'https://nixos.org/channels/offload-nope/nixexprs.tar.xz'"
    assert said in errors(nix.stderr)
    assert errors(offload.stderr) == errors(nix.stderr)


@pytest.mark.parametrize("lines", ["3", "0", None])
def test_a_failed_builds_last_lines_follow_the_log_lines_setting(
    project: Path, lines: str | None
) -> None:
    # log-lines (nix.conf, often raised; here --option): how much of a failed build's log
    # nix-build shows under its error with -Q; offload showed 10 whatever it was.
    setting = ("--option", "log-lines", lines) if lines is not None else ()
    shown = []
    for tool in ("nix", "off"):
        nonce = ("--argstr", "nonce", uuid.uuid4().hex)
        done = one(
            project, tool, "-Q", "--no-out-link", "-A", "chatty", *nonce, *setting, "../default.nix"
        )
        assert done.returncode == 100, done.stderr
        shown.append(re.findall(r"line(\d+)$", done.stderr, re.MULTILINE))
    assert shown[1] == shown[0]
    assert len(shown[0]) == int(lines or 10)


@pytest.mark.parametrize("flag", ["--no-fallback", "--no-keep-failed", "--no-show-trace"])
def test_the_no_form_of_a_setting_offload_spells_out_is_taken(project: Path, flag: str) -> None:
    # Every boolean Nix setting has its --no-NAME flag in nix-build; these (and --no-keep-going,
    # above) were refused as unrecognized arguments.
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    nix, offload = both(project, "--no-out-link", "-A", "ok", *nonce, flag, "../default.nix")
    assert nix.returncode == 0, nix.stderr
    assert (offload.returncode, offload.stdout) == (0, nix.stdout), offload.stderr


CHECKED = r"""
{ nonce, marks }:
let
  mk = name: script: derivation {
    name = "${name}-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" script ];
  };
in {
  # Another output each time it is built; and one that fails when built again.
  nondet = mk "nondet" "echo $RANDOM$$ > $out";
  again = mk "again"
    "if [ -e ${marks}/again ]; then echo second; exit 1; fi; : > ${marks}/again; echo x > $out";
}
"""


@pytest.mark.parametrize("tool", ["nix", "off"])
def test_a_check_goes_on_past_a_failure_with_keep_going_as_nix_build(
    project: Path, tool: str
) -> None:
    # offload's --check ran nix-store without -k: it stopped at the first failure, with 100,
    # where nix-build checks every derivation and exits 108 (100, and 8 for a check that
    # differs).
    (project / "check.nix").write_text(CHECKED)
    with tempfile.TemporaryDirectory(dir="/tmp") as marks:
        Path(marks).chmod(0o777)  # the builder (a build user) writes its mark there
        args = ("--no-out-link", "-A", "nondet", "-A", "again", "--argstr", "nonce",
                uuid.uuid4().hex, "--argstr", "marks", marks, "../check.nix")  # fmt: skip
        built = one(project, tool, *args)
        assert built.returncode == 0, built.stderr
        checked = one(project, tool, *args, "--check", "-k")
    assert checked.returncode == 108, checked.stderr  # a build failed (100), a check differs (+8)
    assert "may not be deterministic" in checked.stderr
    assert "-again-" in errors(checked.stderr)


FOD = r"""
{ nonce }: derivation {
  name = "fod-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo ${nonce} > $out" ];
  outputHashMode = "flat"; outputHashAlgo = "sha256";
  outputHash = "0000000000000000000000000000000000000000000000000000";
}
"""


def test_a_hash_mismatch_is_said_on_nix_builds_lines_with_the_hash_got(project: Path) -> None:
    # The "got:" hash, which a user copies into the expression, was inside one long line
    # with a literal "\n" before it.
    (project / "fod.nix").write_text(FOD)
    nix, offload = both(project, "--no-out-link", "--argstr", "nonce", uuid.uuid4().hex,
                        "../fod.nix")  # fmt: skip
    assert nix.returncode == offload.returncode == 102, offload.stderr

    def said(stderr: str, word: str) -> str:
        return next(
            line.split()[-1] for line in stderr.splitlines() if line.split()[:1] == [f"{word}:"]
        )

    for word in ("specified", "got"):
        assert said(offload.stderr, word) == said(nix.stderr, word), offload.stderr
    assert "\\n" not in offload.stderr


MANY = r"""
{ nonce }: builtins.listToAttrs (builtins.genList (n: {
  name = "p${toString n}";
  value = derivation {
    name = "many-${toString n}-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${toString n} > $out" ];
  };
}) 20)
"""


def test_many_result_links_are_made_as_nix_build_makes_them_in_one_nix_call(
    project: Path,
) -> None:
    # A set of packages (-A a -A b ..., a release.nix): nix-build makes result, result-2 ...
    # at once; offload ran one nix-store per link (about 20 ms each: 20 s for a thousand).
    (project / "many.nix").write_text(MANY)
    shims = project / "shims"
    shims.mkdir()
    calls = project / "nix-store-calls"
    real = shutil.which("nix-store")
    (shims / "nix-store").write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    (shims / "nix-store").chmod(0o755)
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    made = []
    for tool in ("nix", "off"):
        path = f"{shims}:{os.environ['PATH']}" if tool == "off" else os.environ["PATH"]
        done = subprocess.run(
            [*(("nix-build",) if tool == "nix" else OFFLOAD), *OFFLINE, "../many.nix", *nonce],
            cwd=project / tool,
            env={**os.environ, "PATH": path, "OFFLOAD_STATE_DIR": str(project / "state")},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        links = {p.name: str(p.readlink()) for p in (project / tool).iterdir() if p.is_symlink()}
        made.append((done.stdout, links))
    assert made[1] == made[0]
    assert len(made[0][1]) == 20
    rooting = [line for line in calls.read_text().splitlines() if "--add-root" in line]
    assert len(rooting) == 1


@pytest.mark.parametrize("quiet", [("--quiet",), ("--quiet", "--quiet", "-v")])
def test_quiet_leaves_the_build_log_alone_as_nix_build(
    project: Path, quiet: tuple[str, ...]
) -> None:
    # nix-build --quiet (a CI script's): Nix's own lines go, the build's log stays. offload
    # kept its progress lines and summary table.
    said = []
    for tool in ("nix", "off"):
        nonce = uuid.uuid4().hex
        args = ("--no-out-link", "-A", "late", "--argstr", "nonce", nonce, *quiet)
        done = one(project, tool, *args, "../default.nix")
        assert done.returncode == 0, done.stderr
        lines = done.stderr.replace(nonce, "NONCE").splitlines()
        said.append([line.rpartition("> ")[2] for line in lines])  # offload's "local: late>"
    assert said == [["building NONCE"], ["building NONCE"]]  # the build's log, nothing else


@pytest.mark.parametrize(
    ("builders", "said"),
    [
        (
            "ssh://-oProxyCommand=x x86_64-linux - 2",
            {"-oProxyCommand=x": "its host name starts with '-'"},
        ),
        # Nix builds in a store on this host named as a builder, and fails on a cache: offload
        # failed the whole run ("local is not an ssh:// builder") where `offload machines`
        # only warned of the line.
        (
            "local x86_64-linux; https://cache.example.org x86_64-linux",
            {
                "local": "'local' is a store on this host: offload builds here as the local",
                "https://cache.example.org": "is a binary cache, not a builder",
            },
        ),
    ],
)
def test_a_builder_offload_never_connects_to_is_down_in_json_and_the_summary(
    project: Path, builders: str, said: dict[str, str]
) -> None:
    # It was a warning line at the start and nothing else: no event, no summary line.
    nonce = uuid.uuid4().hex
    argv = [sys.executable, "-m", "offload", "build", "--builders", builders, *OFFLINE,
            "--no-out-link", "-A", "ok", "--argstr", "nonce", nonce, "../default.nix"]  # fmt: skip
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(project / "state")}

    def run(*more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*argv, *more], cwd=project / "off", env=env, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip

    plain = run()
    assert plain.returncode == 0, plain.stderr
    summary = plain.stderr[plain.stderr.index(f"machines down ({len(said)}):") :]
    for name, why in said.items():
        assert f"{name}: " in summary
        assert why in summary
    events = [json.loads(line) for line in run("--json").stdout.splitlines()]
    down = {e["machine"]: e["message"] for e in events if e.get("state") == "down"}
    assert down.keys() == said.keys()
    assert all("offload does not connect to it" in message for message in down.values())
