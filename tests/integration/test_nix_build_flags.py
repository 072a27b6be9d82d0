"""`offload build` against the real nix-build 2.8, flag by flag and error by error.

Each case runs both on the same project with the same arguments and compares what a user
reads: the exit status, stdout, and the stderr lines that matter (Nix's whole evaluation error
with its position and code frame; a warning; a refusal). Builds are local and trivial; a
nonce per run makes every build a fresh one where the flag acts on the build.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.helpers.nix_build_compare import COMMON, OFFLOAD, both, errors, made_project, run_in


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return made_project(tmp_path)


# Flags whose run must build and print the same output path as nix-build's.
ACCEPTED = [
    ("--cores", "2"),
    ("-K",),
    ("--keep-failed",),
    ("--fallback",),
    ("--impure",),
    ("--show-trace",),
    ("-I", "here=."),
    ("--include", "here=."),
    ("-Q",),
    ("--no-build-output",),
    ("--quiet",),
    ("-v",),
    ("--verbose",),
    ("--log-format", "raw"),
    ("--log-format", "bar"),
    ("--log-format", "bar-with-logs"),
    ("--log-format", "internal-json"),
    ("--add-root", "gcroot"),
    ("--indirect",),
    ("--max-silent-time", "30"),
    ("--timeout", "30"),
    ("--repair",),
    ("--option", "cores", "1"),
    ("--no-sandbox",),
    ("--keep-outputs",),
    ("--no-keep-outputs",),
    ("--extra-substituters", ""),
    ("--max-build-log-size", "1000000"),
    ("--arg", "a", "2"),
    ("--argstr", "nonce", "x"),
    ("--no-link",),
    ("-j", "2"),
    ("--max-jobs", "auto"),
    # A value starting with "-" is the option's, as Nix binds the next words whatever they are.
    ("--argstr", "nonce", "-O2"),
    ("--arg", "a", "-(1)"),
    ("-I", "-x=."),
    ("--option", "-x", "1"),
    ("--argstr", "nonce", "--", "--", "default.nix"),  # a value "--"; the next ends the options
]


@pytest.mark.parametrize("flag", ACCEPTED, ids=lambda f: " ".join(f) or "''")
def test_flag_is_taken_as_nix_build_takes_it(project: Path, flag: tuple[str, ...]) -> None:
    nonce = ("--argstr", "nonce", uuid.uuid4().hex) if "nonce" not in flag else ()
    nix, offload = both(project, "-A", "ok", *nonce, *flag)
    assert nix.returncode == 0, nix.stderr
    assert (offload.returncode, offload.stdout) == (0, nix.stdout), offload.stderr
    assert "error" not in offload.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("-A", "typo"),  # attribute missing, at default.nix:13:10, "Did you mean b?"
        ("-A", "ok", "--arg", "a", "x.c"),  # a bad --arg: «string», not default.nix
        ("-A", "typo", "--show-trace"),
        ("-A", "lookup"),  # <here> not in the search path
        ("-E", "let in nope"),
        ("missing-dir/",),
    ],
    ids=" ".join,
)
def test_evaluation_errors_come_through_whole(project: Path, args: tuple[str, ...]) -> None:
    nix, offload = both(project, *args)
    assert nix.returncode == 1
    assert offload.returncode == 1
    assert offload.stdout == nix.stdout == ""
    if args != ("missing-dir/",):  # offload says so before evaluating, in its own line
        assert errors(offload.stderr) == errors(nix.stderr)
        assert "\n" in errors(nix.stderr).strip()  # a frame, not a line


def test_typo_shows_position_frame_and_suggestion(project: Path) -> None:
    nix, offload = both(project, "-A", "typo")
    for stderr in (nix.stderr, offload.stderr):
        assert re.search(r"at .*/default\.nix:13:10:", stderr)
    assert "typo = s.a;" in offload.stderr
    assert "Did you mean b?" in offload.stderr


def test_bad_arg_is_not_blamed_on_the_file(project: Path) -> None:
    _, offload = both(project, "-A", "ok", "--arg", "a", "x.c")
    assert "«string»:1:1" in offload.stderr
    assert "default.nix" not in offload.stderr


def test_search_path_from_option_and_flag(project: Path) -> None:
    for how in (("-I", f"here={project}"), ("--option", "nix-path", f"here={project}")):
        nix, offload = both(project, "-A", "lookup", *how)
        assert nix.returncode == 0, nix.stderr
        assert (offload.returncode, offload.stdout) == (0, nix.stdout), offload.stderr


def test_trace_output_is_shown(project: Path) -> None:
    nix, offload = both(project, "-E", "(import ./. {}).traced")
    assert "trace: hello from eval" in nix.stderr
    assert "trace: hello from eval" in offload.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("-E", "-A", "ok", "import ./."),  # a switch: -A is not its value
        ("-A", "ok", "-E", "import ./."),
        ("import ./.", "-A", "ok", "--expr"),  # anywhere on the line
        ("-E", "-A", "ok", "import ./.", "{ ok = (import ./. { a = 2; }).ok; }"),  # several
    ],
    ids=" ".join,
)
def test_expr_is_a_switch_making_every_argument_an_expression(
    project: Path, args: tuple[str, ...]
) -> None:
    nix, offload = both(project, *args, "--argstr", "nonce", uuid.uuid4().hex)
    assert nix.returncode == 0, nix.stderr
    assert (offload.returncode, offload.stdout) == (0, nix.stdout), offload.stderr
    expressions = [a for a in args if a.startswith(("import", "{"))]
    assert len(offload.stdout.split()) == len(expressions)


def test_expr_without_an_expression_is_refused(project: Path) -> None:
    # nix-build -E alone builds nothing and exits 0 (not even ./default.nix); offload, which
    # refuses an evaluation that gives no derivation, says that nothing was given.
    nix, offload = both(project, "-A", "ok", "-E")
    assert (nix.returncode, nix.stdout) == (0, "")
    assert (offload.returncode, offload.stdout) == (1, "")
    assert offload.stderr.splitlines() == [
        "error: -E/--expr makes the arguments expressions, and none was given",
        "hint: give one: offload build -E 'with import <nixpkgs> {}; hello'",
    ]


def test_unknown_setting_warns_once_as_nix_does(project: Path) -> None:
    nix, offload = both(project, "-A", "ok", "--option", "no-such-setting", "1")
    line = "warning: unknown setting 'no-such-setting'"
    assert nix.stderr.splitlines().count(line) == 1
    assert offload.stderr.splitlines().count(line) == 1
    assert (offload.returncode, offload.stdout) == (nix.returncode, nix.stdout) == (0, nix.stdout)


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("cores", "-1", "setting 'cores' has invalid value '-1'"),
        ("max-jobs", "foo", "configuration setting 'max-jobs' should be 'auto' or an integer"),
        ("sandbox", "maybe", "option 'sandbox' has invalid value 'maybe'"),  # a boolean
        ("keep-outputs", "2", "Boolean setting 'keep-outputs' has invalid value '2'"),
    ],
)
def test_a_refused_setting_warns_and_the_build_goes_on_as_nix_build(
    project: Path, name: str, value: str, said: str
) -> None:
    # Nix warns of an --option it cannot take and keeps the setting as it was; the same text
    # in NIX_CONFIG, which offload's Nix processes get the options through, fails them.
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    nix, offload = both(project, "-A", "ok", *nonce, "--option", name, value)
    line = f"warning: error: {said}"
    assert nix.stderr.splitlines().count(line) == 1
    assert offload.stderr.splitlines().count(line) == 1, offload.stderr
    assert (offload.returncode, offload.stdout) == (nix.returncode, nix.stdout) == (0, nix.stdout)


@pytest.mark.parametrize("attr", ["noout", "badref"])
def test_an_output_rejected_for_no_hash_exits_1_as_nix_build(project: Path, attr: str) -> None:
    # A missing output, a forbidden reference: Nix's OutputRejected, which sets none of
    # nix-build's exit bits (a hash mismatch alone sets 102).
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    nix, offload = both(project, "-A", attr, *nonce)
    assert nix.returncode == 1, nix.stderr
    assert offload.returncode == 1, offload.stderr
    assert offload.stdout == ""


def test_a_derivation_no_machine_can_build_with_k_exits_1_as_nix_build(project: Path) -> None:
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    nix, offload = both(project, "-k", "-A", "featx", "-A", "ok", *nonce)
    assert nix.returncode == 1, nix.stderr
    assert offload.returncode == 1, offload.stderr
    lines = offload.stderr.splitlines()
    said = [line.strip() for line in lines if line.strip().startswith(f"featx-{nonce[2]}")]
    assert said, offload.stderr
    assert said[0].startswith(f"featx-{nonce[2]}: no machine can build it: "), said
    assert f"run: failed featx-{nonce[2]}: no machine can build it: " in offload.stderr
    rows = lines[lines.index(next(x for x in lines if x.startswith("machine "))) + 1 :]
    assert rows[0].split()[0] == "local"  # no row for a machine with no name
    assert rows[1].startswith("---")
    assert "offload log" not in offload.stderr  # it never built: there is no log to see
    assert lines[-1] == "hint: `offload machines` shows each machine's systems and features"
    # The events in the order of the run: it starts, then the derivation fails on no machine.
    events = run_in([*OFFLOAD, *COMMON, "-k", "-A", "featx", *nonce, "--json"], project)
    records = [json.loads(line) for line in events.stdout.splitlines()]
    kinds = [r["event"] for r in records]
    failed = next(r for r in records if r["event"] == "job_finished")
    assert kinds.index("run_started") < kinds.index("job_finished")
    assert (failed["machine"], failed["status"]) == ("", "failed")
    assert failed["error"].startswith("no machine can build it: ")


@pytest.mark.parametrize("flag", ["--max-silent-time", "--timeout"])
@pytest.mark.parametrize("how", ["flag", "option"])
def test_silent_build_times_out_with_101(project: Path, flag: str, how: str) -> None:
    setting = ("--option", flag.removeprefix("--"), "1") if how == "option" else (flag, "1")
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    nix, offload = both(project, "-A", "ok", *nonce, "--argstr", "sleep", "5", *setting)
    assert nix.returncode == 101, nix.stderr
    assert offload.returncode == 101, offload.stderr
    assert offload.stdout == ""


@pytest.mark.parametrize("jobs", ["99999999999999999999", "4294967296", "-1", "x"])
def test_impossible_job_count_is_refused_as_nix_refuses_it(project: Path, jobs: str) -> None:
    nix, offload = both(project, "-A", "ok", "-j", jobs)
    words = "configuration setting 'max-jobs' should be 'auto' or an integer"
    assert nix.returncode == offload.returncode == 1
    assert words in nix.stderr.splitlines()[0]
    assert words in offload.stderr.splitlines()[0]


@pytest.mark.parametrize(
    "flag",
    [("--no-such-flag",), ("--max-j", "2"), ("--builder", ""), ("--keep-go",), ("--show-tr",)],
    ids=" ".join,
)
def test_unknown_flag_is_refused(project: Path, flag: tuple[str, ...]) -> None:
    # A flag abbreviated (argparse's prefix matching took `--max-j` for --max-jobs) is no flag
    # to nix-build: "unrecognised flag '--max-j'".
    nix, offload = both(project, *flag, "-A", "ok")
    assert nix.returncode == offload.returncode == 1
    assert f"unrecognised flag '{flag[0]}'" in nix.stderr
    assert offload.stderr == (
        f"error: offload build: unrecognized arguments: {flag[0]}\nhint: see offload build --help\n"
    )


def test_build_log_is_shown_by_default_and_not_with_q(project: Path) -> None:
    for quiet in ((), ("-Q",), ("--no-build-output",)):
        nonces = uuid.uuid4().hex, uuid.uuid4().hex  # each tool builds its own
        nix = run_in(
            ["nix-build", *COMMON, "-A", "ok", "--argstr", "nonce", nonces[0], *quiet], project
        )
        offload = run_in(
            [*OFFLOAD, *COMMON, "-A", "ok", "--argstr", "nonce", nonces[1], *quiet],
            project,
        )
        assert (f"building {nonces[0]}" in nix.stderr) is not bool(quiet)
        assert (f"building {nonces[1]}" in offload.stderr) is not bool(quiet)


def test_nothing_to_do_is_quiet(project: Path) -> None:
    args = ("-A", "ok", "--argstr", "nonce", uuid.uuid4().hex)
    both(project, *args)
    _, offload = both(project, *args)
    assert offload.returncode == 0
    assert "total" not in offload.stderr  # no all-zero summary table


def test_the_last_of_out_link_and_no_out_link_wins(project: Path) -> None:
    # COMMON's --no-out-link comes first: a wrapper's default, then the caller's -o.
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    nix = run_in(["nix-build", *COMMON, "-A", "ok", *nonce, "-o", "nixlink"], project)
    offload = run_in([*OFFLOAD, *COMMON, "-A", "ok", *nonce, "-o", "offlink"], project)
    assert nix.returncode == offload.returncode == 0, offload.stderr
    assert (project / "nixlink").readlink() == (project / "offlink").readlink()
    assert offload.stdout == nix.stdout


def test_an_out_link_starting_with_a_dash_is_made(project: Path) -> None:
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    nix = run_in(["nix-build", *COMMON, "-A", "ok", *nonce, "-o", "-nixlink"], project)
    offload = run_in([*OFFLOAD, *COMMON, "-A", "ok", *nonce, "--out-link", "-offlink"], project)
    assert nix.returncode == offload.returncode == 0, offload.stderr
    assert (project / "-nixlink").readlink() == (project / "-offlink").readlink()
    assert offload.stdout == nix.stdout


def test_a_result_link_that_cannot_be_made_prints_no_path(project: Path) -> None:
    (project / "result").mkdir()  # in the way of the link
    nix, offload = both(project, "-A", "ok", "--argstr", "nonce", uuid.uuid4().hex, "-o", "result")
    assert nix.returncode == offload.returncode == 1
    assert offload.stdout == nix.stdout == ""


def test_the_keep_going_setting_goes_on_as_k_does(project: Path) -> None:
    # nix.conf's keep-going = true (common in CI), here as --option. Each tool builds its
    # own ok (its own nonce), after bad failed.
    said = []
    for tool, nonce in ((["nix-build"], uuid.uuid4().hex), (list(OFFLOAD), uuid.uuid4().hex)):
        args = ("-j", "1", "-A", "bad", "-A", "ok", "--argstr", "nonce", nonce)
        done = run_in([*tool, *COMMON, *args, "--option", "keep-going", "true"], project)
        said.append((done.returncode, f"building {nonce}" in done.stderr))
    assert said == [(100, True), (100, True)]


def test_repeat_builds_again_and_compares_as_nix_does(project: Path) -> None:
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    nix, offload = both(project, "-A", "random", *nonce, "--option", "repeat", "1")
    assert nix.returncode == offload.returncode == 1
    assert "from previous round" in nix.stderr
    assert "from previous round" in offload.stderr


def test_a_failure_stops_the_builds_still_running_without_keep_going(project: Path) -> None:
    # waits never ends by itself: the run ends only if the failure of bad stops it, as Nix
    # stops its other builds (offload let it run to its end, hours for a real build).
    for tool in (["nix-build"], list(OFFLOAD)):
        nonce = uuid.uuid4().hex
        args = ("-j", "2", "-A", "bad", "-A", "waits", "--argstr", "nonce", nonce)
        done = run_in([*tool, *COMMON, *args], project)
        assert done.returncode == 100, done.stderr
        left = subprocess.run(["pgrep", "-f", f"/nonexistent/{nonce}"], check=False)
        assert left.returncode == 1  # no builder of waits is left running


def test_a_build_stopped_after_another_failed_is_reported_from_its_start(project: Path) -> None:
    # latebad fails a second into its build; waits had started with it.
    args = ("-j", "2", "-A", "latebad", "-A", "waits", "--argstr", "nonce", uuid.uuid4().hex)
    done = run_in([*OFFLOAD, *COMMON, *args, "--json"], project)
    assert done.returncode == 100, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    ended = {r["name"].split("-")[0]: r for r in records if r["event"] == "job_finished"}
    assert ended["waits"]["status"] == "cancelled"
    assert ended["waits"]["finished"] - ended["waits"]["started"] >= 0.9


def test_files_among_the_options_are_all_built_in_order(project: Path) -> None:
    (project / "second.nix").write_text(
        '{ ok = derivation { name = "second"; system = builtins.currentSystem; '
        f'builder = "/bin/sh"; args = [ "-c" "echo {uuid.uuid4().hex} > $out" ]; }}; }}\n'
    )
    nonce = ("--argstr", "nonce", uuid.uuid4().hex)
    nix, offload = both(project, "default.nix", "-A", "ok", "second.nix", *nonce)
    assert nix.returncode == offload.returncode == 0, offload.stderr
    assert offload.stdout == nix.stdout
    assert len(offload.stdout.split()) == 2


UNUSED_HOOK = (
    "warning: build-hook is not used: offload build schedules the builds itself (the hook is"
    " for nix-build and the daemon: `offload hook install --print`)"
)


def test_a_build_hook_given_is_said_unused(project: Path) -> None:
    # nix-build --build-hook /bin/false runs it (and fails); offload schedules the build
    # itself, and took the flag without a word.
    for flags in (("--build-hook", "/bin/false"), ("--option", "build-hook", "/bin/false")):
        done = run_in([*OFFLOAD, *COMMON, *flags, "-A", "ok", "--argstr", "nonce", "hook"], project)
        assert done.returncode == 0, done.stderr
        said = [line for line in done.stderr.splitlines() if "build-hook" in line]
        assert said == [UNUSED_HOOK]
    done = run_in(
        [*OFFLOAD, *COMMON, "--build-hook", "", "-A", "ok", "--argstr", "nonce", "no"], project
    )
    assert done.returncode == 0, done.stderr
    assert "build-hook" not in done.stderr  # no hook given: nothing unused
