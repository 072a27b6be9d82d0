"""Two local fleets whose members have the same name, up at once on this host (issue 14).

Slot locks on this host are named after a machine's URI, as Nix names them. Each fleet writes its
own client key into its members' URIs, so that two fleets' ``twin`` are two machines to the locks
(as they are), while both are still called ``twin``.
"""

from __future__ import annotations

from pathlib import Path

from offload.fleet import Fleet, MemberSpec
from offload.slots import NIX_CURRENT_LOAD, SlotLocks, slot_key
from tests.helpers import processes
from tests.helpers.fleets import fleet_machine, machines_lines, private_fleet_fixture
from tests.helpers.nix_files import marker_script, nix_file, out_path
from tests.helpers.offload_run import built_on, offload, start_offload, wait_for_marker

TWIN = MemberSpec("twin", 1.0, 1)
# The held build waits for its release file this many times 0.1 s at most, then fails.
POLLS = 300

twin_a = private_fleet_fixture([TWIN], "ofla", scope="module", doc="A fleet of one `twin`.")
twin_b = private_fleet_fixture([TWIN], "oflb", scope="module", doc="Another fleet of one `twin`.")


def test_same_named_members_of_two_fleets_have_their_own_uris_and_slot_keys(
    twin_a: Fleet, twin_b: Fleet
) -> None:
    ((uri_a, *_),) = machines_lines(twin_a)
    ((uri_b, *_),) = machines_lines(twin_b)
    assert uri_a == twin_a.member("twin").uri
    assert uri_b == twin_b.member("twin").uri
    assert uri_a != uri_b
    assert slot_key(uri_a) != slot_key(uri_b)
    # Users still see (and pick with --on) the member's own name.
    assert fleet_machine(twin_a, "twin").name == fleet_machine(twin_b, "twin").name == "twin"


def test_a_build_on_one_fleet_never_takes_the_others_slot(
    twin_a: Fleet, twin_b: Fleet, tmp_path: Path
) -> None:
    marker, release = tmp_path / "held-running", tmp_path / "go"
    wait = (
        f"i=0; while [ ! -e {release} ]; do i=$((i+1)); "
        f"if [ $i -gt {POLLS} ]; then exit 1; fi; /bin/sleep 0.1; done"
    )
    held = nix_file(
        tmp_path, f'{{ held = mk "held" "{marker_script(marker, wait)}; echo > $out" {{}}; }}\n'
    )
    quick = nix_file(tmp_path, '{ quick = mk "quick" "echo ${salt} > $out" {}; }\n', "quick.nix")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one_slot = ("--on", "twin", "-j", "0", "--json", "--no-out-link")
    run_a = start_offload(
        twin_a, tmp_path / "a", held, "-A", "held", "--builders", f"@{twin_a.machines_file}",
        *one_slot,
    )  # fmt: skip
    try:
        wait_for_marker(marker, run_a)
        locks = SlotLocks(NIX_CURRENT_LOAD)
        assert locks.probe(slot_key(twin_a.member("twin").uri), 1).free == 0
        assert locks.probe(slot_key(twin_b.member("twin").uri), 1).free == 1
        # B's only slot is free while A's is held: a build there runs now, not after A's.
        done = offload(
            twin_b, tmp_path / "b", quick, "-A", "quick",
            "--builders", f"@{twin_b.machines_file}", *one_slot, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert built_on(done.stdout) == {"quick": "twin"}
        assert twin_b.store_has("twin", out_path(quick, "quick"))
        assert run_a.poll() is None  # A's build was still holding its slot all along
        release.touch()
        out, err = run_a.communicate(timeout=60)
        assert run_a.returncode == 0, err
        assert built_on(out) == {"held": "twin"}
    finally:
        release.touch()
        if run_a.poll() is None:
            processes.kill_group(run_a)
            run_a.communicate()
