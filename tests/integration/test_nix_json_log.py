"""`offload build --log-format internal-json` against the real nix-build 2.8's: the same
``@nix`` lines for the same builds, on the shared local fleet (-j 0: every build there)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

from offload.fleet import Fleet
from offload.protocol.stderr import strip_ansi
from tests.helpers.offload_run import offload_argv, offload_env

EXPR = r"""
{ nonce }:
let d = n: deps: bad: derivation {
  name = "nj-${n}-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo hello ${n}; ${if bad then "exit 3;" else ""} echo ${n} > $out" ];
  inherit deps;
};
a = d "a" [] false;
in builtins.trace "tracing" { ok = d "top" [ a ] false; bad = d "bad" [ a ] true; }
"""


def run(
    argv: list[str], fleet: Fleet, tmp_path: Path, attr: str, nonce: str
) -> tuple[int, list[str]]:
    (tmp_path / "nj.nix").write_text(EXPR)
    done = subprocess.run(
        [
            *argv,
            "nj.nix",
            "-A",
            attr,
            "--argstr",
            "nonce",
            nonce,
            "--no-out-link",
            "--log-format",
            "internal-json",
        ],
        env=offload_env(fleet, tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stderr.splitlines()


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line.removeprefix("@nix ")) for line in lines if line.startswith("@nix ")]


def build_logs(lines: list[dict[str, Any]]) -> dict[str, tuple[str, list[str]]]:
    """Each build activity's derivation name: (its machine field, its log lines)."""
    started = {x["id"]: x["fields"] for x in lines if x["action"] == "start" and x["type"] == 105}
    logs: dict[int, list[str]] = {}
    for x in lines:
        if x["action"] == "result" and x["type"] == 101:
            logs.setdefault(x["id"], []).append(x["fields"][0])
    return {
        fields[0].split("-", 1)[1].split("-")[1]: (fields[1], logs.get(i, []))
        for i, fields in started.items()
    }


def test_builds_are_told_in_nix_build_s_lines(fleet: Fleet, tmp_path: Path) -> None:
    remote = ["-j", "0", "--builders", f"@{fleet.machines_file}"]
    status, ours = run([*offload_argv(), *remote], fleet, tmp_path, "ok", uuid.uuid4().hex)
    assert status == 0, ours
    nix_status, theirs = run(["nix-build"], fleet, tmp_path, "ok", uuid.uuid4().hex)
    assert nix_status == 0, theirs
    # Every line is Nix's: a program reading them (nom --json) is told nothing in other words.
    assert all(line.startswith("@nix {") for line in ours), ours
    ours_, theirs_ = parsed(ours), parsed(theirs)
    trace = {"action": "msg", "level": 0, "msg": "trace: tracing"}
    assert trace in ours_
    assert trace in theirs_
    # A build: the same keys and fields; here on a builder (-j 0), there on Nix's machine.
    mine, nix = build_logs(ours_), build_logs(theirs_)
    assert sorted(mine) == sorted(nix) == ["a", "top"]
    for name in ("a", "top"):
        assert mine[name][0] in {m.name for m in fleet.members}
        assert nix[name][0] == ""
        assert f"hello {name}" in mine[name][1]
        assert f"hello {name}" in nix[name][1]
    starts = [
        [x for x in lines if x["action"] == "start" and x["type"] == 105]
        for lines in (ours_, theirs_)
    ]
    assert {tuple(sorted(x)) for x in starts[0]} == {tuple(sorted(x)) for x in starts[1]}
    assert [type(f) for f in starts[0][0]["fields"]] == [str, str, int, int]
    # Every activity ends, and the run's progress ends with both built.
    ids = [x["id"] for x in ours_ if x["action"] == "start"]
    assert sorted(ids) == sorted(x["id"] for x in ours_ if x["action"] == "stop")
    (run_id,) = [x["id"] for x in ours_ if x["action"] == "start" and x["type"] == 104]
    progress = [x["fields"] for x in ours_ if x["action"] == "result" and x["id"] == run_id]
    assert progress[-1] == [2, 2, 0, 0]


def test_a_failed_build_is_nix_s_error_message(fleet: Fleet, tmp_path: Path) -> None:
    nonce = uuid.uuid4().hex  # the same derivation for both: a failure registers nothing
    remote = ["-j", "0", "--builders", f"@{fleet.machines_file}"]
    status, ours = run([*offload_argv(), *remote], fleet, tmp_path, "bad", nonce)
    nix_status, theirs = run(["nix-build"], fleet, tmp_path, "bad", nonce)
    assert (status, nix_status) == (100, 100)
    errors = [
        [strip_ansi(x["msg"]) for x in parsed(lines) if x["action"] == "msg" and x["level"] == 0]
        for lines in (ours, theirs)
    ]
    mine = [e for e in errors[0] if "builder for" in e]
    nix = [e for e in errors[1] if "builder for" in e]
    assert len(mine) == 1
    assert len(nix) == 1
    said = nix[0].split(";")[0]
    assert said.startswith("error: builder for '/nix/store/")
    assert said.endswith("exit code 3")
    assert mine[0].split(";")[0] == said
    # offload's own last words (the run's error, its hint) are plain: the only lines that are.
    plain = [line for line in ours if not line.startswith("@nix ")]
    assert plain
    assert plain[0].startswith("error: ")
    assert ours[-len(plain) :] == plain
