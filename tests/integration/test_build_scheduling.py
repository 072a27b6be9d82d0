"""`offload build` end to end, where builds go: a derivation with inputs built on a named member
(issue 2) and whole-graph scheduling over the pool (issue 4). The CLI as a subprocess, real Nix,
the real local fleet.

Every test writes its own Nix file with a fresh salt (tests/helpers/nix_files.py says how its
builders behave). Which machine built what is read from ``--json`` events and proved by the
output's content: each output records the builder's speed file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from offload.fleet import Fleet, MemberSpec
from tests.helpers.fleets import (
    drop_member,
    host_of,
    machines_lines,
    private_fleet_fixture,
    speed_of,
)
from tests.helpers.nix_files import SPEED, marker_script, nix_file, out_path, salt_of, valid_locally
from tests.helpers.offload_run import (
    built_on,
    events,
    finished,
    offload,
    peak_running,
    run_outputs,
    start_offload,
    wait_for_marker,
)
from tests.helpers.processes import stop

own_fleet = private_fleet_fixture(
    [MemberSpec.parse("a:2:1"), MemberSpec.parse("b:1:1")],
    "ofk",
    doc="A private two-member fleet (a: speed 2, b: speed 1, one slot each) for destructive tests.",
)

four_slots = private_fleet_fixture(
    [MemberSpec.parse("four:2:4")], "ofw", doc="One member with four slots, to be killed."
)

# -- issue 2: a derivation with inputs, built on a named member ----------------------------------


def test_builds_on_the_named_member_and_registers_the_output_locally(fleet, tmp_path):
    file = nix_file(
        tmp_path,
        """rec {
  dep = mk "dep" "echo dep-${salt} > $out" {};
  top = mk "top" "/bin/cat $dep > $out; SPEED >> $out" { inherit dep; };
}
""".replace("SPEED", SPEED),
    )
    done = offload(
        fleet,
        tmp_path,
        file,
        "-A",
        "top",
        "--builders",
        f"@{fleet.machines_file}",
        "--on",
        "medium",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert built_on(done.stdout) == {"dep": "medium", "top": "medium"}
    (top,) = run_outputs(done.stdout)
    dep = out_path(file, "dep")
    salt = salt_of(file)
    assert valid_locally(top)
    assert Path(top).read_text() == f"dep-{salt}\n{speed_of(fleet, 'medium')}\n"
    assert (tmp_path / "result").readlink() == Path(top)
    # Each member has its own store: only the one that built it has it.
    assert fleet.store_has("medium", top)
    assert fleet.store_has("medium", dep)
    assert not fleet.store_has("fast", top)
    assert not fleet.store_has("slow", top)
    assert not fleet.store_has("fast", dep)


def test_out_link_and_no_out_link_behave_like_nix_build(fleet, tmp_path):
    file = nix_file(
        tmp_path,
        """{
  one = mk "one" "echo one-${salt} > $out" {};
  two = mk "two" "echo two-${salt} > $out" {};
}
""",
    )
    builders = ("--builders", f"@{fleet.machines_file}", "--on", "fast")
    named = offload(fleet, tmp_path, file, "-A", "one", *builders, "-o", "mylink")
    assert named.returncode == 0, named.stderr
    one = out_path(file, "one")
    # Without --json the output paths are stdout, one per line, and nothing else.
    assert named.stdout.splitlines() == [one]
    assert (tmp_path / "mylink").readlink() == Path(one)
    assert not (tmp_path / "result").exists()

    unlinked = offload(fleet, tmp_path, file, "-A", "two", *builders, "--no-out-link")
    assert unlinked.returncode == 0, unlinked.stderr
    two = out_path(file, "two")
    assert unlinked.stdout.splitlines() == [two]
    assert valid_locally(two)
    assert Path(two).read_text() == f"two-{salt_of(file)}\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_symlink()) == ["mylink"]


# -- issue 4: whole-graph scheduling over the pool -----------------------------------------------


def _independent(count: int, sleep: float = 0, extra: str = "{}") -> str:
    return f"""builtins.genList (i: mk "w${{toString i}}"
  "/bin/sleep {sleep}; {SPEED} > $out" {extra}) {count}
"""


def _check_contents(fleet: Fleet, file: Path, stdout: str) -> None:
    """Every built output is valid here and says it was made where the events say."""
    for name, machine in built_on(stdout).items():
        index = int(name.removeprefix("w"))
        path = (
            subprocess.run(
                [
                    "nix-instantiate",
                    "--eval",
                    "-E",
                    f"(builtins.elemAt (import {file}) {index}).outPath",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .strip('"')
        )
        assert valid_locally(path)
        expected = "local" if machine == "local" else speed_of(fleet, machine)
        assert Path(path).read_text().strip() == expected, name


def test_a_graph_is_split_across_local_and_remote_members(fleet, tmp_path):
    file = nix_file(tmp_path, _independent(6, sleep=1))
    done = offload(
        fleet,
        tmp_path,
        file,
        "--builders",
        f"@{fleet.machines_file}",
        "--exclude",
        "medium,fast",
        "-j",
        "1",
        "--json",
        "--no-out-link",
    )
    assert done.returncode == 0, done.stderr
    where = built_on(done.stdout)
    assert len(where) == 6
    assert "local" in where.values()
    assert "slow" in where.values()
    _check_contents(fleet, file, done.stdout)


@pytest.mark.parametrize(
    ("selection", "allowed"),
    [
        (("--on", "fast"), {"fast"}),
        (("--exclude", "fast,medium", "-j", "1"), {"local", "slow"}),
        (("-j", "0"), {"fast", "medium", "slow"}),
    ],
    ids=["on-fast", "exclude-fast-medium", "j0"],
)
def test_machine_selection_is_honoured(fleet, tmp_path, selection, allowed):
    file = nix_file(tmp_path, _independent(5))
    done = offload(
        fleet,
        tmp_path,
        file,
        "--builders",
        f"@{fleet.machines_file}",
        *selection,
        "--json",
        "--no-out-link",
    )
    assert done.returncode == 0, done.stderr
    where = built_on(done.stdout)
    assert len(where) == 5
    assert set(where.values()) <= allowed
    _check_contents(fleet, file, done.stdout)


def test_a_mandatory_feature_machine_gets_only_matching_work(fleet, tmp_path):
    # fast demands `benchmark`; the others no longer offer it. The fastest machine is the one
    # every plain build would prefer, so plain work landing there would show.
    lines = []
    for columns in machines_lines(fleet):
        name = host_of(columns[0])
        features = columns[5].split(",")
        if name == "fast":
            columns[6] = "benchmark"
        else:
            columns[5] = ",".join(f for f in features if f != "benchmark")
        lines.append(" ".join(columns))
    machines = tmp_path / "machines"
    machines.write_text("\n".join(lines) + "\n")
    file = nix_file(
        tmp_path,
        f"""{{
  bench = builtins.genList (i: mk "bench${{toString i}}" "{SPEED} > $out"
    {{ requiredSystemFeatures = [ "benchmark" ]; }}) 2;
  plain = builtins.genList (i: mk "plain${{toString i}}" "{SPEED} > $out" {{}}) 4;
}}
""",
    )
    done = offload(
        fleet,
        tmp_path,
        file,
        "-A",
        "bench",
        "-A",
        "plain",
        "--builders",
        f"@{machines}",
        "-j",
        "0",
        "--json",
        "--no-out-link",
    )
    assert done.returncode == 0, done.stderr
    where = built_on(done.stdout)
    assert sorted(where) == ["bench0", "bench1", "plain0", "plain1", "plain2", "plain3"]
    assert {where["bench0"], where["bench1"]} == {"fast"}
    assert "fast" not in {where[f"plain{i}"] for i in range(4)}


def test_an_output_already_on_a_builder_is_fetched_not_rebuilt(fleet, tmp_path):
    counter = tmp_path / "counter"
    file = nix_file(
        tmp_path, f'{{ x = mk "x" "echo run >> {counter}; echo x-${{salt}} > $out" {{}}; }}\n'
    )
    builders = ("--builders", f"@{fleet.machines_file}", "-j", "0")
    first = offload(fleet, tmp_path, file, "-A", "x", *builders, "--on", "fast", "--no-out-link")
    assert first.returncode == 0, first.stderr
    x = out_path(file, "x")
    assert counter.read_text() == "run\n"
    deleted = subprocess.run(
        ["nix-store", "--delete", x], capture_output=True, text=True, check=False
    )
    assert deleted.returncode == 0, deleted.stderr
    assert not valid_locally(x)
    assert fleet.store_has("fast", x)

    # slow is in the pool too: a rebuild could go there; fetching can only come from fast.
    again = offload(
        fleet, tmp_path, file, "-A", "x", *builders, "--on", "fast,slow", "--no-out-link", "--json"
    )
    assert again.returncode == 0, again.stderr
    assert valid_locally(x)
    assert counter.read_text() == "run\n"  # the builder did not run again anywhere
    assert [(e["name"], e["machine"], e["status"]) for e in finished(again.stdout)] == [
        ("x", "fast", "fetched")
    ]


def test_a_member_killed_mid_build_is_replaced_and_the_run_succeeds(own_fleet, tmp_path):
    marker = tmp_path / "marker"
    # The first copy to start sleeps (long enough to be killed); a retry elsewhere is quick.
    script = marker_script(marker, "/bin/sleep 60")
    file = nix_file(
        tmp_path,
        f'{{ x = mk "x" "if [ -e {marker} ]; then :; else {script}; fi; {SPEED} > $out" {{}}; }}\n',
    )
    speeds = {speed_of(own_fleet, m.name): m.name for m in own_fleet.members}
    proc = start_offload(
        own_fleet,
        tmp_path,
        file,
        "-A",
        "x",
        "--builders",
        f"@{own_fleet.machines_file}",
        "-j",
        "0",
        "--json",
        "--no-out-link",
    )
    try:
        victim = speeds[wait_for_marker(marker, proc)]
        (survivor,) = set(speeds.values()) - {victim}
        drop_member(own_fleet.member(victim))
        out, err = proc.communicate(timeout=45)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    statuses = [(e["machine"], e["status"]) for e in finished(out)]
    assert (victim, "lost") in statuses
    assert statuses[-1] == (survivor, "built")
    x = out_path(file, "x")
    assert valid_locally(x)
    assert Path(x).read_text().strip() == speed_of(own_fleet, survivor)


def test_a_member_killed_with_four_builds_running_is_down_once(four_slots, tmp_path):
    markers = {name: tmp_path / f"marker-{name}" for name in ("w", "x", "y", "z")}
    file = nix_file(
        tmp_path,
        "{ "
        + " ".join(
            f'{name} = mk "{name}" "{marker_script(marker, "/bin/sleep 60")}; echo > $out" {{}};'
            for name, marker in markers.items()
        )
        + " }\n",
    )
    attrs = [arg for name in markers for arg in ("-A", name)]
    proc = start_offload(
        four_slots, tmp_path, file, *attrs,
        "--builders", f"@{four_slots.machines_file}", "-j", "0", "--json", "--no-out-link",
    )  # fmt: skip
    try:
        for marker in markers.values():
            wait_for_marker(marker, proc)  # all four build there
        drop_member(four_slots.member("four"))
        out, err = proc.communicate(timeout=45)
    finally:
        stop(proc)
    assert proc.returncode == 1, err  # nothing else could build them
    # Another build's loss may be noticed first as the machine's fall (it is then stopped).
    assert {e["status"] for e in finished(out)} == {"lost"}
    downs = [e for e in events(out) if e["event"] == "machine" and e["state"] == "down"]
    assert [e["machine"] for e in downs] == ["four"]
    assert [line for line in err.splitlines() if "is down" in line] == [
        f"warning: builder 'four' is down: {downs[0]['message']}"
    ]


def test_builds_with_keep_going_continue_past_a_failure(fleet, tmp_path):
    file = nix_file(
        tmp_path,
        """rec {
  bad = mk "bad" "echo broken >&2; exit 3" {};
  after-bad = mk "after-bad" "/bin/cat $bad > $out" { inherit bad; };
  first = mk "first" "/bin/sleep 1; echo first > $out" {};
  after-first = mk "after-first" "/bin/cat $first > $out" { inherit first; };
  alone = mk "alone" "echo alone > $out" {};
}
""",
    )
    attrs = ["-A", "after-bad", "-A", "after-first", "-A", "alone"]
    done = offload(
        fleet,
        tmp_path,
        file,
        *attrs,
        "--builders",
        f"@{fleet.machines_file}",
        "--on",
        "medium",
        "-j",
        "0",
        "-k",
        "--json",
        "--no-out-link",
    )
    assert done.returncode == 100, done.stderr
    status = {e["name"]: e["status"] for e in finished(done.stdout)}
    assert status == {
        "bad": "failed",
        "after-bad": "skipped",
        "first": "built",
        "after-first": "built",
        "alone": "built",
    }
    for attr in ("after-first", "alone"):
        assert valid_locally(out_path(file, attr))
    # first was built, and stays on medium: only requested outputs come home.
    assert fleet.store_has("medium", out_path(file, "first"))
    for attr in ("bad", "after-bad"):
        assert not valid_locally(out_path(file, attr))


def test_concurrent_runs_never_exceed_a_members_slots(fleet, tmp_path):
    log = tmp_path / "log"
    stamp = "$(/bin/date +%s.%N)"
    procs = []
    try:
        for run in ("r1", "r2"):
            file = nix_file(
                tmp_path,
                f"""builtins.genList (i: mk "{run}-${{toString i}}"
  "echo start {stamp} >> {log}; /bin/sleep 1; echo end {stamp} >> {log}; echo > $out" {{}}) 4
""",
                name=f"{run}.nix",
            )
            procs.append(
                start_offload(
                    fleet,
                    tmp_path,
                    file,
                    "--builders",
                    f"@{fleet.machines_file}",
                    "--on",
                    "slow",
                    "-j",
                    "0",
                    "--no-out-link",
                )
            )
        results = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            stop(proc)
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    stamps, peak = peak_running(log)
    assert stamps == 16
    assert peak <= fleet.member("slow").spec.jobs
