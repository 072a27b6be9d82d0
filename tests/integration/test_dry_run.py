import json
import os
import secrets
import socket
import subprocess
import sys
import time

from offload.backoff import Health, save_backoff
from tests.helpers.fleets import member_line
from tests.helpers.nix_files import nix_file, out_path, valid_locally
from tests.helpers.offload_run import offload, offload_env

NO_MACHINE = "the local machine takes no jobs (max-jobs 0)"

NIX = """
{ salt }:
let mk = name: deps: derivation {
  inherit name salt deps; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo ${name} > $out" ]; };
  a = mk "dry-a" [];
  b = mk "dry-b" [ a ];
in { inherit a b; }
"""


def test_dry_run_plans_every_missing_derivation_and_builds_nothing(tmp_path):
    (tmp_path / "d.nix").write_text(NIX)
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    salt = secrets.token_hex(4)
    argv = [sys.executable, "-m", "offload", "build", str(tmp_path / "d.nix"), "-A", "b"]
    argv += ["--argstr", "salt", salt, "--builders", "", "-j", "2", "--dry-run", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1  # one object per line, as --json's help says
    plan = json.loads(done.stdout)
    names = [row["name"] for row in plan["build"]]
    assert names == ["dry-a", "dry-b"]  # a must come first: b depends on it
    assert {row["machine"] for row in plan["build"]} == {"local"}
    assert plan["makespan"] >= plan["lower_bound"] > 0
    drv = plan["build"][1]["drv_path"]
    out = subprocess.run(
        ["nix-store", "-q", "--outputs", drv], capture_output=True, text=True, check=True
    ).stdout.strip()
    valid = subprocess.run(["nix-store", "--check-validity", out], capture_output=True, check=False)
    assert valid.returncode != 0, "a dry run must not build"
    assert not (tmp_path / "result").exists()


def test_a_dry_run_says_why_no_machine_can_build_a_derivation(tmp_path):
    # A tester: "on no machine: none can build it", and --json's bare list, where the run
    # itself says what the derivation needs and why each machine cannot.
    (tmp_path / "d.nix").write_text(NIX.replace("builtins.currentSystem", '"aarch64-linux"'))
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    argv = [sys.executable, "-m", "offload", "build", str(tmp_path / "d.nix"), "-A", "b"]
    argv += ["--argstr", "salt", secrets.token_hex(4), "--builders", "", "-j", "2", "--dry-run"]
    plain = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert plain.returncode == 0, plain.stderr
    assert "on no machine: none can build it: it needs system aarch64-linux; " in plain.stderr
    done = subprocess.run([*argv, "--json"], capture_output=True, text=True, env=env, check=False)
    plan = json.loads(done.stdout)
    assert sorted(plan["unschedulable_why"]) == sorted(plan["unschedulable"])  # a and b
    assert len(plan["unschedulable"]) == 2
    for why in plan["unschedulable_why"].values():
        assert why.startswith("it needs system aarch64-linux; "), why


def test_a_dry_run_names_the_machine_left_out_that_could_build_it(fleet, tmp_path):
    # As the run says it (a review): "--exclude local" left out the one machine that could.
    (tmp_path / "d.nix").write_text(NIX)
    columns = member_line(fleet, "fast").split()
    columns[1] = "aarch64-linux"  # a builder that answers, and cannot build it
    argv = [sys.executable, "-m", "offload", "build", str(tmp_path / "d.nix"), "-A", "a"]
    argv += ["--argstr", "salt", secrets.token_hex(4), "--dry-run", "--exclude", "local"]
    argv += ["--builders", " ".join(columns), "--json"]
    env = offload_env(fleet, tmp_path)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    [why] = json.loads(done.stdout)["unschedulable_why"].values()
    assert why.endswith(
        "; the local machine could, but --exclude local leaves it out (drop --exclude local)"
    )


def test_a_dry_runs_estimated_time_says_what_its_bound_is_of(tmp_path):
    # "lower bound 32.0s" for a run of 12 s: a bound of the estimates, which Nix's build logs
    # give too high for a build that ran on a slower machine (scheduling tester).
    (tmp_path / "d.nix").write_text(NIX)
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    argv = [sys.executable, "-m", "offload", "build", str(tmp_path / "d.nix"), "-A", "b"]
    argv += ["--argstr", "salt", secrets.token_hex(4), "--builders", "", "--dry-run"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("estimated time 20.0s (lower bound 20.0s, by these estimates); ")
    assert "Nix's build logs read as if it built on the fastest machine" in last


def test_dry_run_asks_builders_and_plans_a_fetch_for_what_they_hold(fleet, tmp_path):
    file = nix_file(
        tmp_path,
        'rec { x = mk "x" "echo x-${salt} > $out" {};\n'
        '  y = mk "y" "echo $x > $out" { inherit x; }; }\n',
    )
    builders = ("--builders", f"@{fleet.machines_file}", "-j", "0")
    first = offload(fleet, tmp_path, file, "-A", "x", *builders, "--on", "fast", "--no-out-link")
    assert first.returncode == 0, first.stderr
    x = out_path(file, "x")
    deleted = subprocess.run(
        ["nix-store", "--delete", x], capture_output=True, text=True, check=False
    )
    assert deleted.returncode == 0, deleted.stderr
    plan_run = offload(fleet, tmp_path, file, "-A", "y", *builders, "--dry-run", "--json")
    assert plan_run.returncode == 0, plan_run.stderr
    plan = json.loads(plan_run.stdout)
    assert [(row["name"], row["machine"]) for row in plan["fetch"]] == [("x", "fast")]
    assert [row["name"] for row in plan["build"]] == ["y"]
    assert plan["unreachable"] == {}
    assert not valid_locally(x)  # planned, not fetched
    text = offload(fleet, tmp_path, file, "-A", "y", *builders, "--dry-run")
    x_drv = plan["fetch"][0]["drv_path"]
    assert f"this output will be fetched from builders:\n  {x_drv}  from fast\n" in text.stderr


def test_a_dry_run_with_a_report_is_refused_before_evaluating(tmp_path):
    # It wrote no page and said nothing: the report asked for silently went missing.
    (tmp_path / "d.nix").write_text(NIX)
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    argv = [sys.executable, "-m", "offload", "build", str(tmp_path / "d.nix"), "-A", "b"]
    argv += ["--argstr", "salt", "x", "--builders", "", "--dry-run", "--report", "r.html"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: --report: a dry run builds nothing, so there is no run to report",
        "hint: drop --dry-run to build and report, or --report to see the plan",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.nix"]


def test_a_dry_run_whose_only_builder_is_unreachable_lists_what_would_be_built(fleet, tmp_path):
    # With -j 0 it said "error: no machine to build on" and exited 1.
    file = nix_file(tmp_path, 'rec { x = mk "x" "echo x-${salt} > $out" {}; }\n')
    drv = subprocess.run(
        ["nix-instantiate", str(file), "-A", "x"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = offload_env(fleet, tmp_path)
    machines = tmp_path / "machines"
    machines.write_text(f"ssh://ghost {fleet.system} {fleet.client_key} 1 1\n")
    with socket.socket() as sock:  # bound, not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        config = tmp_path / "ssh_config"
        config.write_text(
            f"Host ghost\n  HostName 127.0.0.1\n  Port {sock.getsockname()[1]}\n  User root\n"
            f"  IdentityFile {fleet.client_key}\n  BatchMode yes\n  ConnectTimeout 5\n"
        )
        env["NIX_SSHOPTS"] = f"-F {config}"
        done = offload(fleet, tmp_path, file, "-A", "x", "--builders", f"@{machines}", "-j", "0",
                       "--dry-run", env=env, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("warning: builder 'ghost' left out of the plan: "), lines
    assert lines[1:] == [
        "this derivation will be built:",
        f"  {drv}",
        f"no machine could build it: {NO_MACHINE} and every builder was left out",
    ]


def test_a_dry_run_with_the_local_machine_excluded_says_so_not_that_it_takes_no_jobs(tmp_path):
    # It said "the local machine takes no jobs (max-jobs 0) and no builder is set", where the
    # local machine takes jobs and --exclude left it out (a run says that since 858a992).
    (tmp_path / "d.nix").write_text(NIX)
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    argv = [sys.executable, "-m", "offload", "build", str(tmp_path / "d.nix"), "-A", "a"]
    argv += ["--argstr", "salt", secrets.token_hex(4), "--builders", "", "-j", "2"]
    # No binary cache to ask (cache.nixos.org is out of reach here: 4.5 s of Nix's retries).
    argv += ["--exclude", "local", "--dry-run", "--option", "substituters", ""]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    said = "--on/--exclude left out the local machine and every builder"
    assert done.stderr.splitlines()[-1] == f"no machine could build it: {said}"
    done = subprocess.run([*argv, "--json"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["no_machine"] == said


def test_a_dry_run_with_j_0_and_every_builder_excluded_says_they_were_left_out(tmp_path):
    # It said "... and no builder is set" (a run and `offload machines`: with the hint to set
    # `builders`), where a builder is set and --exclude took it out.
    (tmp_path / "d.nix").write_text(NIX)
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    argv = [sys.executable, "-m", "offload", "build", str(tmp_path / "d.nix"), "-A", "a"]
    argv += ["--argstr", "salt", secrets.token_hex(4), "--builders", "ssh://nx-x.invalid - - 2"]
    argv += ["-j", "0", "--exclude", "nx-x.invalid", "--dry-run", "--option", "substituters", ""]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    said = f"{NO_MACHINE} and every builder was left out"
    assert done.stderr.splitlines()[-1] == f"no machine could build it: {said}"
    machines = [sys.executable, "-m", "offload", "machines", *argv[argv.index("--builders") :]]
    machines.remove("--dry-run")
    listed = subprocess.run(machines, capture_output=True, text=True, env=env, check=False)
    assert "and --on/--exclude left out every builder\nhint: name a builder" in listed.stderr


def test_a_dry_run_with_j_0_names_the_builder_offload_does_not_connect_to(tmp_path):
    # It said "... and no builder is set", where one is, and offload refuses its host key.
    (tmp_path / "d.nix").write_text(NIX)
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    argv = [sys.executable, "-m", "offload", "build", str(tmp_path / "d.nix"), "-A", "a"]
    argv += ["--argstr", "salt", secrets.token_hex(4), "-j", "0", "--dry-run"]
    argv += ["--builders", "ssh://nx-k.invalid - - 2 1 - - JUNK", "--option", "substituters", ""]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    said = (
        "the local machine takes no jobs, and offload does not connect to nx-k.invalid (its host"
        " key is base64 of no ssh key)"
    )
    assert done.stderr.splitlines()[-1] == f"no machine could build it: {said}"


def test_a_dry_run_leaves_out_a_builder_an_earlier_run_backed_off_as_a_run_does(fleet, tmp_path):
    # A run leaves 'fast' out (backed off, its fleet down then): the plan did not, and asked
    # it, so a dead builder cost the dry run a connect timeout and a plan no run would follow.
    machines = tmp_path / "machines"
    machines.write_text(member_line(fleet, "fast") + "\n" + member_line(fleet, "slow") + "\n")
    why = "connection refused by 127.0.0.1:22: is sshd running and listening there?"
    backoff = tmp_path / "state" / "backoff.json"
    save_backoff(backoff, {"fast": Health(2, time.time() + 600, why)}, time.time())
    file = nix_file(tmp_path, 'rec { x = mk "x" "echo x-${salt} > $out" {}; }\n')
    builders = ("--builders", f"@{machines}", "-j", "0", "--dry-run")
    plan = json.loads(offload(fleet, tmp_path, file, "-A", "x", *builders, "--json").stdout)
    assert [row["machine"] for row in plan["build"]] == ["slow"]
    assert plan["backed_off"]["fast"]["reason"] == why
    assert plan["backed_off"]["fast"]["retried"] is False
    text = offload(fleet, tmp_path, file, "-A", "x", *builders)
    assert text.returncode == 0, text.stderr
    assert (
        f"warning: builder 'fast' left out of the plan: backed off after 2 failure(s) in earlier "
        f"runs: {why}" in text.stderr
    )
    # Named, it is tried now, as a run tries it; alone, a run tries it again, and so does the plan.
    named = json.loads(
        offload(fleet, tmp_path, file, "-A", "x", *builders, "--on", "fast", "--json").stdout
    )
    assert [row["machine"] for row in named["build"]] == ["fast"]
    assert named["backed_off"] == {}
    machines.write_text(member_line(fleet, "fast") + "\n")
    alone = json.loads(offload(fleet, tmp_path, file, "-A", "x", *builders, "--json").stdout)
    assert [row["machine"] for row in alone["build"]] == ["fast"]
    assert alone["backed_off"]["fast"]["retried"] is True  # in the plan, said so
    text = offload(fleet, tmp_path, file, "-A", "x", *builders)
    assert "warning: builder 'fast' is in the plan though backed off after 2" in text.stderr


def test_a_dry_run_of_a_check_says_what_is_valid_is_built_again(tmp_path):
    # nix-build --dry-run --check says nothing; offload said "nothing to build" of outputs a
    # real --check builds again (to compare), which misled.
    (tmp_path / "d.nix").write_text(NIX)
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path / "state")}
    argv = [sys.executable, "-m", "offload", "build", str(tmp_path / "d.nix"), "-A", "a"]
    argv += ["--argstr", "salt", secrets.token_hex(4), "--builders", "", "--no-out-link"]
    built = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert built.returncode == 0, built.stderr
    valid = "nothing to build: every requested output is valid locally"
    again = " (--check builds them again here, to compare)"
    for extra, said in (([], f"{valid}\n"), (["--check"], f"{valid}{again}\n")):
        done = subprocess.run(
            [*argv, "--dry-run", *extra], capture_output=True, text=True, env=env, check=False
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.endswith(said), done.stderr
