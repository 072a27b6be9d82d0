"""`offload machines`'s list view (cli/machines_list.py) and backoff kept with a reason."""

from __future__ import annotations

import base64
import dataclasses
import json

from offload.backoff import UNKNOWN_REASON, Health, clear_backoff, load_backoff, save_backoff
from offload.cli.machines_list import backoff_cell, format_table, pool_problems
from offload.config.machines import parse_machines
from offload.config.pool import Pool

SYSTEM = "x86_64-linux"


def pool(spec: str, **kwargs: object) -> Pool:
    machines, _ = parse_machines(spec, source="f", system=SYSTEM)
    return Pool(None, tuple(machines), **kwargs)  # type: ignore[arg-type]


def test_the_table_fits_100_columns_and_wide_shows_everything():
    features = ",".join(f"feature-{i}" for i in range(12))
    systems = "x86_64-linux,i686-linux,aarch64-linux,riscv64-linux"
    p = pool(f"builder@nx-long-name-{'x' * 30}.invalid:2222 {systems} - 8 2 {features} kvm")
    why = "refused: " + "the whole reason, " * 8 + "to its end"
    backoff = {f"nx-long-name-{'x' * 30}.invalid:2222": Health(3, 2e9, why)}
    narrow = format_table(p, backoff).splitlines()
    assert max(map(len, narrow)) <= 100
    assert narrow[1].split()[-1] == "(3x)"
    assert ".." in narrow[1]
    wide = format_table(p, backoff, wide=True)
    assert ",".join(sorted(features.split(","))) + ",!kvm" in wide
    assert "builder@nx-long-name-" + "x" * 30 + ".invalid:2222" in wide
    assert f"(3x): {why}" in wide
    assert "f:1" in wide


def test_a_cut_name_keeps_its_end_the_port_that_tells_it_from_its_neighbour():
    features = ",".join(f"feature-{i}" for i in range(12))
    host = f"nx-{'long-' * 8}host.invalid"
    p = pool("\n".join(f"{host}:{port} x86_64-linux - 1 1 {features}" for port in (2201, 2202)))
    rows = format_table(p, {}).splitlines()[1:]
    assert max(map(len, rows)) <= 100
    cut = [row.split()[0] for row in rows]
    assert [name[-7:] for name in cut] == ["..:2201", "..:2202"]  # "nx-long-long-l..:2201"
    assert all(name.startswith("nx-long-") for name in cut)


def test_cells_say_mandatory_key_and_disabled():
    junk = base64.b64encode(b"no key").decode()
    p = pool(f"nx-a.invalid - - 1 1 kvm,big big {junk}")
    off = Pool(None, (dataclasses.replace(p.machines[0], enabled=False),))
    row = format_table(off, {}).splitlines()[1].split()
    assert row[:2] == ["nx-a.invalid", "(off)"]
    assert "kvm,!big" in row
    assert "junk" in row


def test_problems_are_in_file_order_errors_included():
    p = dataclasses.replace(
        pool("nx-a.invalid - - 0\nnx-b.invalid"),
        errors=("f:2: column 4 (maxJobs): 'x' is not a whole number of jobs",),
        warnings=("f:1: Nix before 2.29 reads this line as nothing",),
    )
    assert [(level, line.split(": ")[0]) for level, line in pool_problems(p)] == [
        ("warning", "f:1"),
        ("warning", "f:1"),
        ("error", "f:2"),
    ]


def test_backoff_keeps_a_reason_and_clears_by_name(tmp_path):
    path = tmp_path / "backoff.json"
    save_backoff(path, {"a": Health(1, 200.0, "ssh: refused"), "b": Health(2, 300.0)}, 100.0)
    assert load_backoff(path, 100.0) == {
        "a": Health(1, 200.0, "ssh: refused"),
        "b": Health(2, 300.0),
    }
    assert "reason" not in json.loads(path.read_text())["b"]
    assert clear_backoff(path, ["a", "c"], 100.0) == ["a"]
    assert load_backoff(path, 100.0) == {"b": Health(2, 300.0)}
    assert clear_backoff(tmp_path / "none.json", ["a"], 100.0) == []


def test_likely_slips_nix_takes_are_warned_with_the_one_meant():
    p = pool(
        "ssh://nx-a.invalid /home/me/.ssh/id 2 4\n"  # column 2 left out: the key is read as system
        "ssh://nx-b.invalid x86-64-linux\n"
        "ssh://nx-c.invalid?ssh-kye=/k&compress=true x86_64-linux\n"
        "ssh://nx-b.invalid aarch64-linux\n"
        "nx-d.invalid x86_64-linux,aarch64-darwin,x86_64-v3-linux\n"  # nothing wrong
        "ssh://local x86_64-linux\n"  # a host named as the local machine is
    )
    lines = [line for _, line in pool_problems(p)]
    assert lines == [
        "f:1: nx-a.invalid: ssh key file 2 does not exist",
        (
            "f:1: nx-a.invalid: system '/home/me/.ssh/id' looks like a path"
            " (are the columns shifted? 2 is the systems, 3 the ssh key): no build asks for it"
        ),
        (
            "f:2: nx-b.invalid: system 'x86-64-linux' is no Nix system"
            " (did you mean x86_64-linux?): no build asks for it"
        ),
        (
            "f:3: nx-c.invalid: URI parameter 'ssh-kye' means nothing to Nix's ssh stores"
            " (did you mean ssh-key?)"
        ),
        (
            "f:4: nx-b.invalid: named as f:2 is: offload cannot tell them apart"
            " (give one a name in offload.toml)"
        ),
        (
            "f:6: local: named as the local machine is: offload cannot tell them apart"
            " (give one a name in offload.toml)"
        ),
    ]


def test_a_well_formed_system_with_a_typo_is_warned_and_real_ones_are_not():
    # Nix takes x86_64-linx and sends that builder nothing for x86_64-linux, without a word.
    p = pool(
        "ssh://nx-a.invalid x86_64-linx,i686-linux\n"
        "ssh://nx-b.invalid aarch64-linux,x86_64-v3-linux,x86_64-solaris,riscv64-linux\n"
    )
    said = (
        "f:1: nx-a.invalid: system 'x86_64-linx' is no Nix system"
        " (did you mean x86_64-linux?): no build asks for it"
    )
    assert [line for _, line in pool_problems(p)] == [said]


def test_a_feature_a_slip_from_one_of_nixs_is_warned_and_ones_of_ones_own_are_not():
    # A tester: `bigparallel` was caught by doctor only; builds needing big-parallel never
    # went there. Features are any word: cuda and slowboard are the user's own.
    p = pool("ssh://nx-a.invalid x86_64-linux - 1 1 bigparallel,kvm,cuda slowboard\n")
    said = (
        "f:1: nx-a.invalid: feature 'bigparallel' is not Nix's big-parallel (a misspelling?):"
        " builds that need big-parallel never go there"
    )
    assert [line for _, line in pool_problems(p)] == [said]


def test_wide_says_when_why_a_machine_is_backed_off_is_not_known():
    assert backoff_cell(Health(1, 2e9), wide=True).endswith(f"(1x): {UNKNOWN_REASON}")
    assert backoff_cell(Health(1, 2e9), wide=False).endswith("(1x)")


def test_a_key_file_others_may_read_is_warned_with_the_chmod(tmp_path):
    """ssh ignores it and logs in with another key, or not at all: `offload build` and doctor
    said so, `offload machines` nothing."""
    key = tmp_path / "id"
    key.write_text("not read\n")
    key.chmod(0o644)
    lines = [line for _, line in pool_problems(pool(f"ssh://nx-a.invalid x86_64-linux {key}\n"))]
    said = f"ssh key file {key} is readable by others, so ssh ignores it (chmod 600 {key})"
    assert lines == [f"f:1: nx-a.invalid: {said}"]
    key.chmod(0o600)
    assert pool_problems(pool(f"ssh://nx-a.invalid x86_64-linux {key}\n")) == []
