"""A failed build's Nix status, from the builder's answer to the exit code, and the build
options (Nix's timeouts) that go with every build.

nix-build exits 100 when a build failed, 101 when one timed out, 102 for a hash mismatch and 1
when no failure set one of those bits; ``offload build`` does the same from the ``BuildResult``
status Nix sends back.
"""

from __future__ import annotations

import asyncio

import pytest

from offload.cli import exit_status
from offload.cli.build_exec import _print_log_tails, build_failed
from offload.config.pool import load_pool
from offload.config.settings import NixSettings
from offload.errors import BuildFailed, ConfigError
from offload.history.records import RunReport
from offload.logs import BuildLogs
from offload.protocol.serve import BuildOptions, BuildStatus
from offload.scheduler.run import Executor, PoolMember
from offload.transport.fake import BuildOutcome, FakeBuild, FakeLink, FakeStore
from offload.ui.events import JobFinished
from tests.helpers.plans import make_plan, spec

SILENT = "building of 'slow.drv' timed out after 1 seconds of silence"


def test_a_timed_out_build_keeps_its_status_and_gets_the_runs_build_options():
    plan, paths, _, src = make_plan({"slow": [], "bad": []})
    given: list[BuildOptions] = []

    async def builder(build: FakeBuild) -> BuildOutcome | None:
        given.append(build.options)
        if build.drv.name == "slow":
            return BuildOutcome(BuildStatus.TIMED_OUT, SILENT)
        return BuildOutcome(BuildStatus.PERMANENT_FAILURE, "builder for bad failed")

    local = FakeLink(FakeStore("local", [src], builder=builder))
    options = BuildOptions(max_silent_time=1, build_timeout=5, max_log_size=100)
    executor = Executor(
        plan,
        [PoolMember(spec("local", slots=2), local, remote=False)],
        local,
        emit=lambda _: None,
        keep_going=True,
        build_options=options,
    )
    report = asyncio.run(executor.run())
    assert given == [options, options]
    assert report.failed == {paths["slow"]: SILENT, paths["bad"]: "builder for bad failed"}
    assert report.statuses == {
        paths["slow"]: BuildStatus.TIMED_OUT,
        paths["bad"]: BuildStatus.PERMANENT_FAILURE,
    }


def test_any_timed_out_build_makes_the_run_exit_101_and_is_the_one_named():
    report = RunReport("r", failed={"/a.drv": "exit 3", "/b.drv": SILENT})
    report.statuses = {"/a.drv": BuildStatus.PERMANENT_FAILURE, "/b.drv": BuildStatus.TIMED_OUT}
    error = build_failed(report)
    assert (error.drv_path, error.status, exit_status(error)) == ("/b.drv", 8, 101)
    assert error.message == f"build of '/b.drv' timed out: {SILENT} (and 1 more)"


def test_nixs_words_naming_the_derivation_are_the_error_as_nix_build_says_it():
    # It was "build of '/a.drv' failed: builder for '/a.drv' failed with exit code 3": the
    # path twice, where nix-build's last line is Nix's words alone.
    said = "builder for '/a.drv' failed with exit code 3"
    report = RunReport("r", failed={"/a.drv": said})
    report.statuses = {"/a.drv": BuildStatus.PERMANENT_FAILURE}
    assert build_failed(report).message == said


def test_failures_that_set_no_nix_bit_exit_1_and_name_the_first():
    # A failure Nix gave no status for (no machine could build it, a lost machine) and a
    # MiscFailure set none of Worker::exitStatus's bits: nix-build exits 1 for them.
    report = RunReport("r", failed={"/a.drv": "no machine can build it", "/b.drv": "exit 3"})
    report.statuses = {"/b.drv": BuildStatus.MISC_FAILURE}
    error = build_failed(report)
    assert (error.drv_path, error.status, exit_status(error)) == ("/a.drv", 9, 1)
    assert error.message == "build of '/a.drv' failed: no machine can build it (and 1 more)"
    # No machine took it: it has no log to see.
    assert error.hint == "`offload machines` shows each machine's systems and features"


def test_a_failed_build_that_ran_somewhere_points_at_its_log():
    report = RunReport("r", failed={"/b.drv": "exit 3"})
    report.statuses = {"/b.drv": BuildStatus.PERMANENT_FAILURE}
    report.finished = [JobFinished("/b.drv", "b", "fast", "failed", 1.0, 2.0, 0, 0, "x", 2.0)]
    assert build_failed(report).hint == "see its log with `offload log /b.drv`"


def test_a_builder_whose_nix_lacks_the_platform_its_line_claims_points_at_doctor():
    # A tester: a line claiming aarch64-linux on an x86_64 builder. Nix's words came after
    # offload's own "error: " ("error: error: a 'aarch64-linux' ..."), with "see its log".
    said = (
        "error: a 'aarch64-linux' with features {} is required to build '/a.drv', but I am a "
        "'x86_64-linux' with features {kvm}"
    )
    report = RunReport("r", failed={"/a.drv": said})
    report.statuses = {"/a.drv": BuildStatus.MISC_FAILURE}
    report.finished = [JobFinished("/a.drv", "a", "arm", "failed", 1.0, 2.0, 0, 0, "x", 2.0)]
    error = build_failed(report)
    assert error.message == said.removeprefix("error: ")
    assert error.hint is not None
    assert "machines line of 'arm' claims" in error.hint
    assert "`offload doctor arm`" in error.hint


MISSING = "builder for '/m.drv' failed to produce output path for output 'dev'"


@pytest.mark.parametrize(
    ("failures", "code"),
    [
        ({"/m.drv": (BuildStatus.OUTPUT_REJECTED, MISSING)}, 1),
        ({"/r.drv": (BuildStatus.OUTPUT_REJECTED, "output refers to forbidden path")}, 1),
        ({"/t.drv": (BuildStatus.TRANSIENT_FAILURE, "fixed-output builder failed")}, 1),
        ({"/l.drv": (BuildStatus.LOG_LIMIT_EXCEEDED, "killed after writing 10 bytes")}, 1),
        ({"/i.drv": (BuildStatus.INPUT_REJECTED, "a 'x' is required to build")}, 100),
        (
            {
                "/m.drv": (BuildStatus.OUTPUT_REJECTED, MISSING),
                "/p.drv": (BuildStatus.PERMANENT_FAILURE, "exit 3"),
            },
            100,
        ),
        ({"/m.drv": (None, "lost"), "/s.drv": (BuildStatus.TIMED_OUT, SILENT)}, 101),
    ],
)
def test_each_failure_counts_as_nix_counts_its_status(failures, code):
    report = RunReport("r", failed={drv: why for drv, (_, why) in failures.items()})
    report.statuses = {drv: s for drv, (s, _) in failures.items() if s is not None}
    assert exit_status(build_failed(report)) == code


def test_exit_status_follows_nix_build():
    def failed(status: BuildStatus) -> BuildFailed:
        return BuildFailed("x", drv_path="/a.drv", status=status)

    assert exit_status(failed(BuildStatus.TIMED_OUT)) == 101
    assert exit_status(failed(BuildStatus.PERMANENT_FAILURE)) == 100
    assert exit_status(failed(BuildStatus.LOG_LIMIT_EXCEEDED)) == 1
    assert exit_status(failed(BuildStatus.OUTPUT_REJECTED)) == 1
    assert exit_status(ConfigError("bad")) == 1


def test_the_pool_keeps_nixs_settings_for_the_build_options():
    settings = NixSettings(
        {"max-silent-time": "1", "timeout": "7", "max-build-log-size": "4096", "max-jobs": "1"}
    )
    pool = load_pool(builders="", config=None, env={}, nix_settings=settings)
    assert pool.select(max_jobs=2).nix_settings is settings  # kept through --on/-j
    assert BuildOptions.from_settings(pool.nix_settings.get) == BuildOptions(
        max_silent_time=1, build_timeout=7, max_log_size=4096
    )
    # Without Nix's settings (a pool made in code), builds get Nix's defaults: no limits.
    assert BuildOptions.from_settings(NixSettings({}).get) == BuildOptions()
    # --option repeat 1, enforce-determinism, keep-failed: what Nix's hook sends too.
    repeated = NixSettings({"repeat": "1", "enforce-determinism": "false", "keep-failed": "true"})
    assert BuildOptions.from_settings(repeated.get) == BuildOptions(
        nr_repeats=1, enforce_determinism=False, keep_failed=True
    )


def test_a_hash_mismatch_exits_102_and_a_repeat_that_differed_1_as_in_nix():
    mismatch = RunReport("r", failed={"/f.drv": "hash mismatch in fixed-output derivation"})
    mismatch.statuses = {"/f.drv": BuildStatus.OUTPUT_REJECTED}
    assert exit_status(build_failed(mismatch)) == 102
    both = RunReport(
        "r", failed={"/f.drv": "hash mismatch in fixed-output derivation", "/t": SILENT}
    )
    both.statuses = {"/f.drv": BuildStatus.OUTPUT_REJECTED, "/t": BuildStatus.TIMED_OUT}
    assert exit_status(build_failed(both)) == 103  # -k: both at once
    repeat = RunReport("r", failed={"/r.drv": "output differs from previous round"})
    repeat.statuses = {"/r.drv": BuildStatus.NOT_DETERMINISTIC}
    assert exit_status(build_failed(repeat)) == 1


def test_a_failed_builds_last_log_lines_are_shown_and_an_empty_log_says_nothing(tmp_path, capsys):
    logs = BuildLogs(tmp_path)
    failing, silent = "/nix/store/" + "a" * 32 + "-noisy.drv", "/nix/store/" + "b" * 32 + "-fod.drv"
    with logs.open(failing, "local") as writer:
        for n in range(15):
            writer.write(f"line {n}")
    with logs.open(silent, "local"):
        pass  # a hash mismatch: the build printed nothing
    _print_log_tails(logs, {failing: "exit 1", silent: "hash mismatch"}, 10)
    assert capsys.readouterr().err.splitlines() == [
        "last 10 log lines of noisy:",
        *(f"  noisy> line {n}" for n in range(5, 15)),
    ]


def test_a_failed_builds_last_log_lines_reach_the_terminal_without_its_controls(tmp_path, capsys):
    # Only colours were taken out: a build printing ESC c (a terminal's full reset) erased the
    # run's summary above it, failures included; C1 controls and backspaces went through too.
    logs = BuildLogs(tmp_path)
    failing = "/nix/store/" + "a" * 32 + "-noisy.drv"
    with logs.open(failing, "local") as writer:
        writer.write("reset\x1bc here")
        writer.write("c1 \u009b2J and \u009dtitle\x07 bs\x08\x08 so\x0e")
        writer.write("zw\u202edesrever")
    _print_log_tails(logs, {failing: "exit 1"}, 10)
    assert capsys.readouterr().err.splitlines()[1:] == [
        "  noisy> reset here",
        "  noisy> c1  and title bs so",
        "  noisy> zwdesrever",
    ]


def test_and_more_goes_on_the_line_that_names_the_build_not_after_nixs_last():
    # Now that Nix's words are printed on their lines, "(and 1 more)" ended up after a hash
    # mismatch's "got:" line.
    said = (
        "hash mismatch in fixed-output derivation '/a.drv':\n"
        "  specified: sha256-AAAA\n     got:    sha256-BBBB"
    )
    report = RunReport("r", failed={"/a.drv": said, "/b.drv": "exit 3"})
    report.statuses = {"/a.drv": BuildStatus.OUTPUT_REJECTED}
    lines = build_failed(report).message.splitlines()
    assert lines[0].endswith("'/a.drv': (and 1 more)")
    assert lines[-1] == "     got:    sha256-BBBB"
