"""A builder's load from its serve session's start line, the slot rule, and how runs show it."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from offload.errors import FleetError
from offload.fleet.records import FleetState, MemberRecord
from offload.fleet.spec import (
    MemberSpec,
    member_argv,
    proc_override_file,
)
from offload.load import (
    BOOT_ID_FILE,
    LOAD1_SECONDS,
    FollowedLoad,
    OwnLoad,
    RemoteLoad,
    adjusted_slots,
    effective_slots,
    parse_load_report,
)
from offload.transport.wrapper import parse_pid_line, parse_start_line
from offload.ui.events import MachineEvent, RunStarted
from offload.ui.jsonl import JsonRenderer
from offload.ui.plain import PlainRenderer
from offload.ui.tty import TtyRenderer

BOOT = "dbbc011a-5ae4-49c8-99cd-9ae6b03e2b61"
OTHER_BOOT = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
T0 = 1_700_000_000.0

# -- the start line ---------------------------------------------------------------------------


def test_a_linux_start_line_gives_pid_cores_load_runnable_and_boot_id():
    line = f"offload-serve-pid 4242 8 9.50 7.10 5.00 3/345 6789 {BOOT}\n"
    assert parse_start_line(line) == (4242, RemoteLoad(8, 9.5, 3, BOOT))
    assert parse_pid_line(line) == 4242


def test_an_old_pid_only_line_still_gives_the_pid_and_no_load():
    assert parse_start_line("offload-serve-pid 123") == (123, None)
    assert parse_start_line("offload-serve-pid 123\r\n") == (123, None)


@pytest.mark.parametrize(
    "report",
    [
        "8 - -",  # macOS: nproc answers, no /proc
        "- - -",  # nothing known
        f"- 1.00 0.50 0.20 1/80 99 {BOOT}",  # no nproc
        "8 -",  # too short to hold a boot id
        f"0 1.0 1.0 1.0 1/2 3 {BOOT}",  # no cores
        f"8 nan 1 1 1/2 3 {BOOT}",
        f"8 inf 1 1 1/2 3 {BOOT}",
        f"8 -1.0 1 1 1/2 3 {BOOT}",
        f"8 1e9 1 1 1/2 3 {BOOT}",
        f"eight 1.0 1.0 1.0 1/2 3 {BOOT}",
        f"8 1_0 1.0 1.0 1/2 3 {BOOT}",
        f"٨ 1.0 1.0 1.0 1/2 3 {BOOT}",  # Arabic-Indic digit eight: not what nproc prints
    ],
)
def test_a_report_that_cannot_tell_the_load_gives_the_pid_and_no_load(report):
    assert parse_start_line(f"offload-serve-pid 77 {report}") == (77, None)


def test_missing_loadavg_fields_or_boot_id_leave_only_those_unknown():
    # A loadavg of one field (not Linux's five): no runnable count.
    assert parse_load_report(f"4 2.5 {BOOT}") == RemoteLoad(4, 2.5, None, BOOT)
    # No boot id: the load still counts.
    assert parse_load_report("4 2.5 1.0 1.0 2/100 5 -") == RemoteLoad(4, 2.5, 2, None)
    # A malformed runnable field or boot id is dropped, not fatal.
    assert parse_load_report("4 2.5 1.0 1.0 x/100 5 not/a/boot") == RemoteLoad(4, 2.5, None, None)
    # Boot ids compare case-insensitively.
    assert parse_load_report(f"4 2.5 1 1 1/2 3 {BOOT.upper()}") == RemoteLoad(4, 2.5, 1, BOOT)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "offload-serve-pid",
        "offload-serve-pid x 8 1 1 1 1/2 3 b",
        "offload-serve-pid -1",
        "offload-serve-pid ١٢٣",
        "offload-serve-pid " + "9" * 5000,
        "offload-master-ready",
        "building '/nix/store/x.drv'",
        "Warning: Permanently added 'fast' (ED25519) to the list of known hosts.",
    ],
)
def test_other_lines_are_not_start_lines(line):
    assert parse_start_line(line) is None
    assert parse_pid_line(line) is None


@given(st.text())
def test_parsing_never_raises_on_any_text(text):
    parse_load_report(text)
    start = parse_start_line(text)
    assert start is None or start[0] >= 0
    parse_start_line("offload-serve-pid 1 " + text)


@given(
    pid=st.integers(1, 4_194_304),
    cores=st.integers(1, 4096),
    loads=st.lists(st.decimals(0, 9999, places=2, allow_nan=False), min_size=3, max_size=3),
    runnable=st.integers(0, 10_000),
    boot=st.uuids(),
)
def test_what_the_shell_prints_parses_back(pid, cores, loads, runnable, boot):
    loadavg = f"{loads[0]} {loads[1]} {loads[2]} {runnable}/{runnable + 100} 12345"
    line = f"offload-serve-pid {pid} {cores} {loadavg} {boot}"
    assert parse_start_line(line) == (
        pid,
        RemoteLoad(cores, float(loads[0]), runnable, str(boot)),
    )


# -- the slot rule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slots", "load", "expected"),
    [
        (4, RemoteLoad(8, 9.5, 3, OTHER_BOOT), 3),  # 1.5 cores of excess: one whole core
        (4, RemoteLoad(8, 10.0, 3, OTHER_BOOT), 2),
        (4, RemoteLoad(8, 3.9, 3, OTHER_BOOT), 4),  # busy, but within its cores
        (4, RemoteLoad(8, 8.9, 3, OTHER_BOOT), 4),  # less than a whole core beyond them
        (4, RemoteLoad(8, 400.0, 3, OTHER_BOOT), 1),  # swamped: one slot stays
        (1, RemoteLoad(2, 50.0, None, None), 1),
        (4, RemoteLoad(8, 9.5, 3, None), 3),  # no boot id: cannot be this host, adjusted
        (4, None, 4),  # load unknown (no /proc)
        (0, RemoteLoad(8, 400.0, 3, OTHER_BOOT), 0),  # takes no jobs at all
    ],
)
def test_each_whole_core_of_excess_load_takes_one_slot_and_one_stays(slots, load, expected):
    assert effective_slots(slots, load, BOOT) == expected


def test_a_builder_on_this_hosts_kernel_keeps_its_slots_whatever_its_load():
    swamped = RemoteLoad(2, 400.0, 50, BOOT)
    assert effective_slots(4, swamped, BOOT) == 4
    # Without a local boot id nothing can be matched, and neither can two unknown ones.
    assert effective_slots(4, swamped, None) == 1
    assert effective_slots(4, RemoteLoad(2, 400.0, 50, None), None) == 1


def test_this_runs_own_share_of_the_load_is_left_out():
    load = RemoteLoad(8, 12.5, 9, OTHER_BOOT)  # 4.5 cores beyond its cores
    assert effective_slots(6, load, BOOT) == 2
    assert effective_slots(6, load, BOOT, own=3.0) == 5  # 1.5 of it others': one slot
    assert effective_slots(6, load, BOOT, own=4.6) == 6  # all but a fraction was ours
    assert effective_slots(6, load, BOOT, own=50.0) == 6
    assert effective_slots(6, RemoteLoad(8, 12.5, 9, BOOT), BOOT, own=0.0) == 6


@pytest.mark.parametrize(
    ("current", "load1", "expected"),
    [
        (4, 10.2, 2),  # cut at once
        (2, 10.2, 2),
        (2, 9.7, 2),  # 1.7 beyond: one slot would come back, but not half a core below
        (2, 9.4, 3),  # 1.4 beyond: half a core below the line that cut the second slot
        (2, 8.4, 4),  # 0.4 beyond: both back
        (3, 9.9, 3),  # hovering just below the line: it stays as it was
        (3, 10.0, 2),  # on the line: cut again
        (1, 400.0, 1),  # never below one
    ],
)
def test_slots_are_cut_at_once_and_given_back_below_the_line(current, load1, expected):
    load = RemoteLoad(8, load1, 3, OTHER_BOOT)
    assert adjusted_slots(4, current, load, BOOT, own=0.0) == expected


def test_a_builder_on_this_kernel_gets_every_slot_back_whatever_it_was_cut_to():
    assert adjusted_slots(4, 2, RemoteLoad(8, 400.0, 3, BOOT), BOOT, own=0.0) == 4


def _kernel_load1(counts: list[int]) -> float:
    """The kernel's own update (kernel/sched/loadavg.c), every 5 s, of runnable ``counts``."""
    load, factor = 0.0, math.exp(-5 / LOAD1_SECONDS)
    for count in counts:
        load = load * factor + count * (1 - factor)
    return load


@given(st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=60))
def test_own_load_follows_the_kernels_average_of_this_runs_running_builds(counts):
    own = OwnLoad()
    for tick, count in enumerate(counts):
        own.change(tick * 5.0, count - own.running)
    now = len(counts) * 5.0
    # The kernel samples every 5 s where OwnLoad averages continuously: with the count changing
    # only at its ticks, the two are the same average.
    assert own.value(now) == pytest.approx(_kernel_load1(counts), abs=1e-9)


def test_own_load_rises_towards_the_builds_running_and_decays_after_them():
    own = OwnLoad()
    assert own.value(100.0) == 0.0
    own.change(0.0, +2)
    assert own.value(LOAD1_SECONDS) == pytest.approx(2 * (1 - math.exp(-1)))
    own.change(LOAD1_SECONDS, -2)
    assert own.running == 0
    peak = 2 * (1 - math.exp(-1))
    assert own.value(2 * LOAD1_SECONDS) == pytest.approx(peak * math.exp(-1))
    own.change(3 * LOAD1_SECONDS, -1)  # a count never goes below none
    assert own.running == 0


def test_a_followed_builder_says_each_change_of_its_slots_once():
    followed = FollowedLoad(4)
    busy = RemoteLoad(2, 4.5, 9, OTHER_BOOT)  # 2.5 cores beyond its 2: two slots go
    assert followed.reported(busy, 0.0, BOOT) == "load 4.5 on 2 cores: 2 of 4 slots"
    assert followed.slots == 2
    assert followed.reported(busy, 1.0, BOOT) is None  # no change, nothing said
    # Its own two builds there for a minute: 1.3 of the load is theirs, one slot comes back.
    followed.own.change(1.0, +2)
    said = followed.reported(busy, 1.0 + LOAD1_SECONDS, BOOT)
    assert said == "load 4.5 on 2 cores (1.3 of it this run's builds): 3 of 4 slots"
    idle = RemoteLoad(2, 0.5, 1, OTHER_BOOT)
    assert followed.reported(idle, 2.0 + LOAD1_SECONDS, BOOT) == (
        "load 0.5 on 2 cores (1.3 of it this run's builds): all 4 slots again"
    )
    assert followed.slots == 4


def test_describe_names_load_and_cores():
    assert RemoteLoad(8, 9.5).describe() == "load 9.5 on 8 cores"
    assert RemoteLoad(1, 2.0).describe() == "load 2 on 1 core"


# -- how a run shows it -------------------------------------------------------------------------

LOADED = MachineEvent(
    "fast", "loaded", "load 9.5 on 8 cores: 3 of 4 slots", None, T0 + 0.2, slots=3
)


def test_plain_and_json_show_a_loaded_builder():
    out = io.StringIO()
    plain = PlainRenderer(out, print_logs=False, clock=lambda: T0)
    plain.handle(LOADED)
    assert out.getvalue() == "[  0.2s] fast: loaded: load 9.5 on 8 cores: 3 of 4 slots\n"
    out = io.StringIO()
    JsonRenderer(out, print_logs=False).handle(LOADED)
    record = json.loads(out.getvalue())
    assert (record["event"], record["state"], record["slots"]) == ("machine", "loaded", 3)


def test_tty_shows_a_loaded_builder_on_its_own_row():
    out = io.StringIO()
    console = Console(file=out, width=100, height=20, force_terminal=True, color_system=None)
    tty = TtyRenderer(console, print_logs=False, clock=lambda: T0 + 1, auto_refresh=False)
    tty.handle(LOADED)
    tty.handle(RunStarted("r", 1, ("fast", "slow"), 5.0, T0 + 0.3))
    tty.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    lines = [line.rstrip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    assert any(
        line.startswith("fast") and "loaded: load 9.5 on 8 cores: 3 of 4 slots" in line
        for line in lines
    )
    assert not any("loaded" in line for line in lines if line.startswith("slow"))


# -- the fleet's busy members (fleet.spec proc_overrides) ----------------------------------------


def test_proc_overrides_are_bind_mounted_in_order_and_kept_in_the_state():
    overrides = (("/proc/loadavg", "9.50 1 1 1/2 3\n"), (BOOT_ID_FILE, f"{OTHER_BOOT}\n"))
    spec = MemberSpec("busy", 1, 4, proc_overrides=overrides)
    root = Path("/f/busy")
    script = member_argv(root, root / "sshd_config", spec.proc_overrides)[-1]
    mounts = [cmd.split()[2:] for cmd in script.split(" && ") if cmd.startswith("mount")]
    assert mounts[2:] == [
        [str(proc_override_file(root, 0)), "/proc/loadavg"],
        [str(proc_override_file(root, 1)), BOOT_ID_FILE],
    ]
    assert script.split(" && ")[-1].startswith("exec ")  # sshd only after every mount
    state = FleetState("x86_64-linux", (MemberRecord(spec, 1, 2, 3, "mnt:[1]"),))
    assert FleetState.from_json(state.to_json()) == state
    # A state written before overrides existed still reads, as a member without any.
    old = state.to_json().replace('"proc_overrides"', '"ignored"')
    assert FleetState.from_json(old).members[0].spec == MemberSpec("busy", 1, 4)


@pytest.mark.parametrize(
    "overrides",
    [
        (("/etc/passwd", "x"),),
        (("/proc", "x"),),
        (("/proc/../etc/shadow", "x"),),
        (("proc/loadavg", "x"),),
        (("/proc/loadavg", "1"), ("/proc/loadavg", "2")),
    ],
)
def test_only_distinct_files_in_proc_can_be_overridden(overrides):
    with pytest.raises(FleetError):
        MemberSpec("busy", proc_overrides=overrides)
