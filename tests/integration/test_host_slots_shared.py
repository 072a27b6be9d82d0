"""Two `offload build` runs on one host share a builder's slots first come, first served.

Both runs hold this host's slot files (Nix's ``current-load``) for the one member they build on,
each with a state directory of its own, as two users' or two terminals' runs do. A run with
builds to spare used to take every slot it let go at once, and a second run waited for all of
its work (offload.slot_waiters); on the builder, the second's want marker then outlived its
build (``transport.wrapper``, turns). The builds append start stamps to a file of their own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from offload.fleet import Fleet, MemberSpec
from tests.helpers import processes
from tests.helpers.fleets import member_line, private_fleet_fixture
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import offload_argv, offload_env, second_while_first

slots_fleet = private_fleet_fixture(
    [MemberSpec.parse("share:1:2")], "ofhs2", doc="One member with two slots, two runs on it."
)


def _jobs(tmp_path: Path, who: str, count: int) -> tuple[Path, Path]:
    """A Nix file of ``count`` builds of half a second that stamp their start: (file, stamps)."""
    stamps = tmp_path / f"stamps-{who}"
    script = f"echo $(/bin/date +%s.%N) >> {stamps}; /bin/sleep 0.5; echo {who} > $out"
    body = (
        'builtins.listToAttrs (builtins.genList (i: { name = "j${toString i}"; value = '
        f'mk "{who}-${{toString i}}" "{script}" {{}}; }}) {count})\n'
    )
    (tmp_path / who).mkdir()
    return nix_file(tmp_path / who, body), stamps


def _run(fleet: Fleet, tmp_path: Path, who: str, file: Path) -> subprocess.Popen[str]:
    home = tmp_path / who
    argv = offload_argv(file, "--builders", member_line(fleet, "share"), "-j", "0")
    return processes.start(
        [*argv, "--no-out-link", "--json"], env=offload_env(fleet, home), cwd=home,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_a_run_with_work_to_spare_lets_another_runs_waiting_build_go_first(
    slots_fleet: Fleet, tmp_path: Path
) -> None:
    files = {"a": _jobs(tmp_path, "a", 12), "b": _jobs(tmp_path, "b", 1)}
    first = _run(slots_fleet, tmp_path, "a", files["a"][0])
    second_while_first(
        first,
        files["a"][1].exists,
        "run A's first build",
        lambda: _run(slots_fleet, tmp_path, "b", files["b"][0]),
    )
    starts = {
        who: sorted(map(float, stamps.read_text().split())) for who, (_, stamps) in files.items()
    }
    assert len(starts["a"]) == 12
    # B built while A still had builds to start: it waited for one of A's builds at most,
    # not for all of them.
    assert starts["b"][0] < starts["a"][-3], starts
    # And no client's want marker is left on the builder: B's sessions opened ahead (and its
    # probe of the builder it found full) were answered busy and left one, fresh after its
    # only build began, and A's builds yielded to it, a slot idle, until it went stale.
    slots = slots_fleet.member("share").root / "nix" / "var" / "nix" / "offload-slots"
    assert not list(slots.glob("want-*")), list(slots.iterdir())
