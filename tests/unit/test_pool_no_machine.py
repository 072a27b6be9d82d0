"""Why no machine of a selected pool takes a job (``Pool.no_machine``), as `offload build`
fails with it and `offload machines` warns with it: named where the user would fix it."""

from __future__ import annotations

import pytest

from offload.config.machines.check import machine_problems
from offload.config.pool import Pool
from offload.errors import ConfigError
from tests.helpers.pools import LOCAL, machines, pool

IDLE_TOML = """
[[machine]]
uri = "ssh://nx-new.invalid"
max-jobs = 0
[[machine]]
host = "nx-a.invalid"
max-jobs = 0
"""


def test_a_builder_given_no_jobs_by_offload_toml_is_said_there():
    # `offload machines -j 0` (and a run) said "(its maxJobs is 0: m:1)" of a line whose maxJobs
    # is 3 when offload.toml set it to 0, named the toml's table as a line, and the hint sent
    # every user to "a machines line's 4th column": the fix is max-jobs in that table.
    idle = pool("nx-a.invalid - - 3; nx-b.invalid - - 0", IDLE_TOML).select(max_jobs=0)
    why, hint = idle.no_machine() or ("", "")
    assert why == (
        "the local machine takes no jobs, and nx-a.invalid, nx-b.invalid, nx-new.invalid take"
        " no jobs (their max-jobs is 0: o.toml: [[machine]] #2, o.toml: [[machine]] #1;"
        " their maxJobs is 0: m:1)"
    )
    assert "max-jobs in their offload.toml [[machine]]" in hint
    (new,) = [m for m in idle.machines if m.name == "nx-new.invalid"]
    one = Pool(None, (new,), (), LOCAL)
    why, hint = one.no_machine() or ("", "")
    assert why.endswith("nx-new.invalid takes no jobs (its max-jobs is 0: o.toml: [[machine]] #1)")
    assert hint.startswith("give it jobs (max-jobs in its offload.toml [[machine]])")
    line = Pool(None, (machines("nx-b.invalid - - 0")[0],), (), LOCAL)
    why, hint = line.no_machine() or ("", "")
    assert why.endswith("nx-b.invalid takes no jobs (its maxJobs is 0: m:1)")
    assert hint.startswith("give it jobs (maxJobs, a machines line's 4th column)")


@pytest.mark.parametrize(
    ("picked", "said"),
    [
        ({"exclude": ["nx-a.invalid"]}, "--on/--exclude left out every builder"),
        (
            {"on": ["@nosuch-or-a"], "exclude": ["nx-a.invalid"]},
            "--on/--exclude left out every builder",
        ),
        ({}, "no builder is set"),
    ],
)
def test_builders_left_out_with_j_0_are_not_said_unset(picked, said):
    # `offload machines -j 0 --exclude a` (and a run) said "the local machine takes no jobs and
    # no builder is set", with the hint to set `builders` in nix.conf, where they are set.
    spec = "nx-a.invalid - - 2" if picked else ""
    toml = '[[machine]]\nhost = "nx-a.invalid"\ntags = ["nosuch-or-a"]\n' if picked else None
    why, hint = pool(spec, toml).select(max_jobs=0, **picked).no_machine() or ("", "")
    assert why == f"the local machine takes no jobs and {said}"
    assert ("--on/--exclude" in hint) == bool(picked)


def test_a_name_with_an_escape_is_refused_and_said_escaped():
    # offload.toml's name = "b\u001b[31mRED" reached the terminal as an escape sequence in
    # `offload machines`' warning, a run's error and a dry run's last line (it turned them red).
    toml = '[[machine]]\nuri = "ssh://nx-b.invalid"\nname = "b\\u001b[31mRED"\nmax-jobs = 0\n'
    with pytest.raises(ConfigError, match="name must be one word") as refused:
        pool("", toml)
    assert "\x1b" not in refused.value.message
    assert "b\\x1b[31mRED" in refused.value.message


def test_a_second_table_over_a_toml_machine_is_where_its_max_jobs_is():
    # A machine one table defines (max-jobs 2) and a second sets to 0 was said to be 0 in the
    # first table.
    toml = (
        '[[machine]]\nuri = "ssh://nx-new.invalid"\nmax-jobs = 2\n'
        '[[machine]]\nhost = "nx-new.invalid"\nmax-jobs = 0\n'
    )
    why, _ = pool("", toml).select(max_jobs=0).no_machine() or ("", "")
    assert why.endswith("(its max-jobs is 0: o.toml: [[machine]] #2)")


def test_offload_machines_says_a_problem_an_offload_toml_table_set_there():
    # `offload machines` said "m:1: nx-b.invalid: maxJobs is 0" of a line whose maxJobs is 3
    # when offload.toml set it to 0: the fix is in that table, not the line.
    toml = '[[machine]]\nhost = "nx-b.invalid"\nmax-jobs = 0\nssh-key = "/nonexistent/key"\n'
    (over,) = pool("nx-b.invalid - /also/missing 3", toml).machines
    said = " ".join(machine_problems(over, lambda _: False))
    assert "max-jobs is 0 in o.toml: [[machine]] #1: no build is ever sent to it" in said
    assert "/nonexistent/key (ssh-key of o.toml: [[machine]] #1) does not exist" in said
    (line,) = pool("nx-b.invalid - /also/missing 0", "").machines
    said = " ".join(machine_problems(line, lambda _: False))
    assert "maxJobs is 0: no build" in said
    assert "/also/missing does not exist" in said


def test_builders_offload_does_not_connect_to_are_named_with_why_and_the_fix():
    # `-j 0` with only such builders said "no builder is set", hint: set `builders` in nix.conf.
    spec = "ssh://nx-k.invalid - - 2 1 - - JUNK; ssh://nx$x.invalid - - 2; nx-a.invalid - - 2"
    kept = pool(spec).select(max_jobs=0, exclude=["nx-a.invalid"])
    why, hint = kept.no_machine() or ("", "")
    assert why == (
        "the local machine takes no jobs, and offload does not connect to nx-k.invalid (its host"
        " key is base64 of no ssh key), nx$x.invalid (its host name holds '$', which a shell acts"
        " on)"
    )
    lines = [line for m in pool(spec).machines[:2] for line in machine_problems(m, bool)]
    assert hint == "; ".join(lines)  # as `offload machines` says them, fixes included
    assert pool(spec).select(max_jobs=0).no_machine() is None  # nx-a.invalid takes the work
    left = pool(spec).select(on=["nx-k.invalid"]).no_machine() or ("", "")
    assert left[0].startswith("--on/--exclude left out the local machine, and offload does not")


@pytest.mark.parametrize(
    ("picked", "here"),
    [
        ({"max_jobs": 0}, "-j N builds locally"),
        ({"on": ["nx-a.invalid"], "max_jobs": 2}, "name `local` to build here"),
        ({"exclude": ["local"]}, "name `local` to build here"),
        ({"max_jobs": 2}, None),
    ],
)
def test_work_left_without_a_machine_names_what_builds_here(picked, here):
    # A run whose builders all fell mid-run said "-j N builds locally" whatever left the local
    # machine out: with `--on fast`, -j N keeps it out; where it builds already, it could not
    # take the work either (another system), and -j N changes nothing.
    hint = pool("nx-a.invalid - - 2").select(**picked).stranded_hint()
    assert hint.startswith("check the builders with `ssh` or `offload machines`; ")
    assert hint.endswith("naming a builder with --on retries it at once")
    if here is None:
        assert "local" not in hint
    else:
        assert here in hint
