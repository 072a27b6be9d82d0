"""Nix's words for a binary cache it leaves out, by version, read as one fault per cache."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

from offload.build.caches import CacheFaults, cache_fault
from offload.scheduler.run import Executor, PoolMember
from offload.transport.fake import FakeLink, FakeStore
from offload.ui.events import Event, JobFinished, JobPhase, MachineEvent, Phase, RunStarted
from offload.ui.plain import describe_machine, machine_warning
from offload.ui.summary import render_summary
from offload.ui.tty import TtyRenderer
from tests.helpers.plans import make_plan, spec

CACHE = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        # Nix 2.8 (filetransfer.cc: curl's error and code), as the real Nix 2.8 here prints it.
        (
            f"warning: unable to download '{CACHE}/nix-cache-info': Couldn't connect to server (7)",
            "it cannot be reached (Couldn't connect to server (7))",
        ),
        # Nix 2.25 on add curl's error buffer: the same reason.
        (
            (
                f"warning: unable to download '{CACHE}/nix-cache-info': Couldn't connect to server "
                "(7) Failed to connect to 127.0.0.1 port 9 after 0 ms: Couldn't connect to server"
            ),
            "it cannot be reached (Couldn't connect to server (7))",
        ),
        # An HTTP error: 2.8 with its status text, 2.18 without.
        (
            (
                f"warning: unable to download '{CACHE}/nix-cache-info': HTTP error 500 "
                "('Internal Server Error')"
            ),
            "it cannot be reached (HTTP error 500 ('Internal Server Error'))",
        ),
        (
            f"warning: unable to download '{CACHE}/nix-cache-info': HTTP error 500",
            "it cannot be reached (HTTP error 500)",
        ),
        # Nix may colour its prefix.
        (
            f"\x1b[35;1mwarning:\x1b[0m '{CACHE}' does not appear to be a binary cache",
            "it does not appear to be a binary cache (it has no nix-cache-info)",
        ),
        (
            (
                f"warning: binary cache '{CACHE}' is for Nix stores with prefix '/gnu/store', "
                "not '/nix/store'"
            ),
            "it is for another store directory (/gnu/store)",
        ),
        (
            f"disabling binary cache '{CACHE}' for 60 seconds",
            "it failed, and Nix stopped using it for 60 seconds",
        ),
    ],
)
def test_each_of_nix_s_words_for_a_cache_left_out_is_read(line: str, why: str) -> None:
    assert cache_fault(line) == (CACHE, why)


SSH = "ssh://nix-ssh@cache.example?ssh-key=/k"
S3 = "s3://bucket?region=eu-west-1"


@pytest.mark.parametrize(
    ("line", "substituters", "fault"),
    [
        # ssh:// (legacy-ssh-store.cc), said with --fallback: Nix 2.8 to 2.30 name it by what
        # follows ssh:// (the real Nix 2.8 here), 2.31 on by its host alone.
        (
            "error: cannot connect to 'nix-ssh@cache.example'",
            [S3, SSH],
            (SSH, "it cannot be reached over ssh"),
        ),
        ("error: cannot connect to 'cache.example'", [SSH], (SSH, "it cannot be reached over ssh")),
        (
            "error: cannot connect to 'cache.example'",
            [],
            ("ssh://cache.example", "it cannot be reached over ssh"),
        ),
        (
            "error: 'nix-store --serve' protocol mismatch from 'nix-ssh@cache.example', got 'hi'",
            [SSH],
            (SSH, "it does not speak Nix's serve protocol: it answered 'hi'"),
        ),
        (
            "error: 'nix-store --serve' protocol mismatch from 'cache.example'",
            [SSH],
            (SSH, "it does not speak Nix's serve protocol"),
        ),
        # s3:// up to 2.32 (the AWS SDK's words, naming no bucket), 2.31 and 2.32 with the
        # request's id.
        (
            "warning: AWS error fetching 'nix-cache-info': Unable to connect to endpoint",
            [SSH, S3],
            (S3, "it cannot be reached (Unable to connect to endpoint)"),
        ),
        (
            (
                "warning: AWS error fetching 'nix-cache-info': Unable to connect to endpoint "
                "(request id: )"
            ),
            [S3, "s3://other"],
            ("s3://", "it cannot be reached (Unable to connect to endpoint)"),
        ),
    ],
)
def test_ssh_and_s3_caches_left_out_are_read_and_named_as_set(
    line: str, substituters: list[str], fault: tuple[str, str]
) -> None:
    assert cache_fault(line, substituters) == fault


@pytest.mark.parametrize(
    "line",
    [
        # A retry may still succeed: not a fault.
        (
            f"warning: error: unable to download '{CACHE}/nix-cache-info': Couldn't connect to "
            "server (7); retrying in 253 ms"
        ),
        # From Nix 2.34.1 a retry's line has no "error:" (filetransfer.cc: exc.message()), and
        # from 2.25 curl's error buffer (here empty) before it.
        (
            f"warning: unable to download '{CACHE}/nix-cache-info': Couldn't connect to "
            "server (7) ; retrying in 250 ms (attempt 1/5)"
        ),
        (
            f"warning: unable to download '{CACHE}/nix-cache-info': HTTP error 503; retrying "
            "from offset 10 in 512 ms (attempt 2/5)"
        ),
        # A path the cache does not have, or any other download: not the cache itself.
        f"warning: unable to download '{CACHE}/abc.narinfo': Couldn't connect to server (7)",
        "copying path '/nix/store/abc-x' from 'http://127.0.0.1:9'...",
        "building '/nix/store/abc-x.drv'...",
        # An S3 request Nix tries again (2.8 to 2.32): not a fault yet.
        "AWS error 'Unable to connect to endpoint' (NETWORK_CONNECTION), will retry in 250 ms",
    ],
)
def test_other_lines_are_no_fault(line: str) -> None:
    assert cache_fault(line) is None


def test_a_cache_fault_carries_no_escape_or_control_characters() -> None:
    # A builder's line is remote bytes: what is told of it (the URL, why) is shown on terminals.
    line = f"warning: unable to download '{CACHE}\x1b]0;t\x07/nix-cache-info': \x1b]0;t\x07x (7)"
    assert cache_fault(line) == (CACHE, "it cannot be reached (x (7))")


def test_each_cache_is_told_once_per_machine() -> None:
    told: list[Event] = []
    faults = CacheFaults(told.append)
    line = f"warning: unable to download '{CACHE}/nix-cache-info': Couldn't connect to server (7)"
    not_a_cache = "warning: 'file:///x' does not appear to be a binary cache"
    for machine, said in [("local", line), ("local", line), ("b1", line), ("local", not_a_cache)]:
        faults.heard(machine, said)
    assert [(e.machine, e.state, e.cache) for e in told if isinstance(e, MachineEvent)] == [
        ("local", "cache", CACHE),
        ("b1", "cache", CACHE),
        ("local", "cache", "file:///x"),
    ]


def _cache_event(machine: str, cache: str, why: str) -> MachineEvent:
    return MachineEvent(machine, "cache", why, None, 100.0, cache=cache)


def test_the_summary_lists_each_cache_left_out_once_with_its_machine_when_a_builder() -> None:
    events: list[Event] = [
        JobFinished("/nix/store/a-x.drv", "x", "local", "built", 1.0, 2.0, 0, 0, None, 2.0),
        _cache_event("local", CACHE, "it cannot be reached"),
        _cache_event("b1", "https://c", "it does not appear to be a binary cache"),
        _cache_event("local", CACHE, "it cannot be reached"),
    ]
    out = io.StringIO()
    render_summary(events, out, rich=False)
    lines = out.getvalue().splitlines()
    at = lines.index("binary caches left out (2):")
    assert lines[at + 1 : at + 3] == [
        f"  {CACHE}: it cannot be reached",
        "  https://c (on b1): it does not appear to be a binary cache",
    ]
    assert lines[at + 3].startswith("  what they have is built instead")


@pytest.mark.parametrize("rich", [False, True])
def test_the_summary_says_what_caches_left_out_cost_once_not_on_each(rich: bool) -> None:
    # With several caches left out each line is its cache and why: the rest is the same for all.
    told: list[Event] = []
    faults = CacheFaults(told.append)
    for port in (1, 2, 3):
        url = f"http://127.0.0.1:{port}"
        faults.heard("local", f"warning: unable to download '{url}/nix-cache-info': x (7)")
    out = io.StringIO()
    render_summary(told, out, rich=rich)
    text = out.getvalue()
    assert text.count("--option substituters") == 1, text
    assert "http://127.0.0.1:3: it cannot be reached (x (7))\n" in text, text
    assert all(m.count("--option substituters") == 2 for m in (_plain_line(e) for e in told)), told


def _plain_line(event: Event) -> str:
    assert isinstance(event, MachineEvent)
    return f"{machine_warning(event)}\n{describe_machine(event, event.time)}"


def test_the_live_view_warns_of_a_cache_left_out_and_shows_no_machine_for_it() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, height=40, force_terminal=True, color_system=None)
    renderer = TtyRenderer(console, print_logs=False, auto_refresh=False)
    renderer.handle(RunStarted("r", 1, ("b1",), 1.0, 100.0))
    renderer.handle(_cache_event("local", CACHE, "it cannot be reached"))
    renderer.close()
    text = out.getvalue()
    assert f"warning: binary cache '{CACHE}' is left out: it cannot be reached" in text
    assert "local" not in text.replace(CACHE, "")  # no row for a machine not in the run


def test_a_build_s_own_log_is_not_read_once_it_builds() -> None:
    # A build may run a Nix of its own whose caches fail on purpose: only what its machine's
    # Nix says while the inputs are sent is read; a copy starting again is read again.
    told: list[Event] = []
    faults = CacheFaults(told.append)
    line = f"warning: unable to download '{CACHE}/nix-cache-info': Couldn't connect to server (7)"

    def phase(phase: Phase) -> None:
        faults.emit(JobPhase("/nix/store/a-x.drv", "x", "b1", phase, None, 100.0))

    phase("building")
    faults.build_log("/nix/store/a-x.drv", "b1", line)
    assert [e for e in told if isinstance(e, MachineEvent)] == []
    phase("sending")
    faults.build_log("/nix/store/a-x.drv", "b1", line)
    assert [(e.machine, e.cache) for e in told if isinstance(e, MachineEvent)] == [("b1", CACHE)]
    assert [e.phase for e in told if isinstance(e, JobPhase)] == ["building", "sending"]


def test_a_builder_s_cache_left_out_is_told_when_ssh_passes_its_line_on_after_the_answer():
    # builders-use-substitutes: the builder's Nix says a cache it leaves out while it
    # substitutes the inputs. Over ssh:// that line is stderr, the answer stdout: ssh may pass
    # the answer on first, by any number of loop turns (``late_stderr``: the line comes only
    # with the next answer, which ssh does pass on after it). Here its cache has
    # the input, so the build starts at once: the line must still be heard before it does
    # (``CacheFaults`` reads a build's log only until then).
    plan, _, _, src = make_plan({"a": []})
    line = f"warning: unable to download '{CACHE}/nix-cache-info': Couldn't connect to server (7)"
    remote = FakeLink(FakeStore("r", cache=[src], cache_says=[line], late_stderr="a round trip"))
    told: list[Event] = []
    faults = CacheFaults(told.append)
    executor = Executor(
        plan,
        [PoolMember(spec("r"), remote, remote=True, substitute=True)],
        FakeLink(FakeStore("local", [src])),
        emit=faults.emit,
        log_sink=faults.build_log,
    )
    assert asyncio.run(executor.run()).ok
    assert [(e.machine, e.cache) for e in told if isinstance(e, MachineEvent)] == [("r", CACHE)]


def test_another_build_s_lines_on_the_builder_do_not_tell_a_cache_its_nix_stopped_on() -> None:
    # Two builds' sessions on one builder whose one cache is an ssh:// one that refuses, no
    # fallback: each Nix there says ssh's line, then its error, and stops. The second's ssh
    # line came between the first's error and the builder found down (as real Nix 2.8 on the
    # fleet did in 3 of 12 runs): it was taken for the first going on, and the cache was told
    # left out besides the builder down.
    told: list[Event] = []
    faults = CacheFaults(told.append)
    ssh = "ssh: connect to host 127.0.0.1 port 22: Connection refused"
    error = "error: cannot connect to 'nobody-here@127.0.0.1'"
    first, second = "/nix/store/a-one.drv", "/nix/store/b-two.drv"
    for drv in (first, second):
        faults.emit(JobPhase(drv, drv[13:], "cached", "sending", None, 100.0))
    faults.build_log(first, "cached", ssh)
    faults.build_log(first, "cached", error)
    faults.build_log(second, "cached", ssh)
    down = f"its Nix stopped on a binary cache of its own: {error.removeprefix('error: ')}"
    faults.emit(MachineEvent("cached", "down", down, None, 101.0))
    faults.build_log(second, "cached", error)
    for drv in (first, second):
        faults.emit(JobFinished(drv, drv[13:], "cached", "lost", 100.0, 101.0, 0, 0, down, 101.0))
    states = [e.state for e in told if isinstance(e, MachineEvent)]
    assert states == ["down"], told
