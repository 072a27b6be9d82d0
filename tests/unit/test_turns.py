"""Turns on a builder's slots: the wrapper's arguments and a build session's turn in ``Link``.

The wrapper's shell is run for real in tests/integration/test_builder_slots.py; here, what
offload asks of it (quoted as it crosses ssh) and the bookkeeping above the transport, with
scripted sessions that only answer the serve handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from typing import Any

import pytest

from offload.protocol.serve import SERVE_MAGIC_2
from offload.protocol.wire import encode_int
from offload.transport.links import pool
from offload.transport.links.base import SessionPipes
from offload.transport.links.pool import Link
from offload.transport.links.turns import CLIENT_ID
from offload.transport.ssh import SshTarget, serve_argv
from offload.transport.wrapper import CLIENT_ID_CHARS, WANT_FRESH, serve_command
from tests.helpers.worker_wire import Writer, stream

SCRIPT = serve_command()[2]


def test_the_wrapper_is_given_the_slots_the_client_and_whether_it_waited():
    argv = serve_command({"remote-program": "/bin/x"}, slots=2, client="ab-1.c_d", waited=True)
    assert argv[3:8] == ["sh", "2", "ab-1.c_d", "1", "-"]
    assert argv[8:] == ["/bin/x", "--serve", "--write"]
    assert serve_command(slots=2, client="ab")[5:7] == ["ab", "0"]
    assert serve_command()[4:8] == ["0", "-", "0", "-"]  # no slot, no client, cores unknown


@pytest.mark.parametrize("bad", ["", "a b", "a;rm -rf /", "../x", "a/b", "$(id)", "é"])
def test_a_client_id_that_could_name_another_file_or_run_code_is_refused(bad):
    with pytest.raises(ValueError, match="invalid client id"):
        serve_command(slots=1, client=bad)


def test_the_client_id_crosses_ssh_as_one_quoted_word_and_the_script_quotes_its_uses():
    argv = serve_argv(SshTarget("b"), slots=1, client="x.y-z", waited=True)
    words = shlex.split(argv[-1])
    assert words[3:7] == ["sh", "1", "x.y-z", "1"]
    # The shell checks the id again (a wrapper run by something else), and uses it quoted.
    assert "case $ofl_id in ''|*[!A-Za-z0-9_.-]*) ofl_id=-;; esac;" in SCRIPT
    assert 'touch "$ofl_d/want-$ofl_id"' in SCRIPT
    assert 'rm -f "$ofl_d/want-$ofl_id"' in SCRIPT
    assert '! -name "want-$ofl_id" -mmin -0.1000 -print' in SCRIPT
    # Only a build that has not waited yet yields, and it skips every slot when it does.
    assert '[ "$ofl_w" != 1 ] && ofl_wanted && { ofl_i=$ofl_n; ofl_y=1; };' in SCRIPT


def test_this_process_has_one_client_id_fit_for_a_file_name():
    assert len(CLIENT_ID) >= 16
    assert CLIENT_ID_CHARS.issuperset(CLIENT_ID)


class _Builder:
    """Scripted slot answers: each session start takes the next one ("0", "busy")."""

    name = "b"

    def __init__(self, answers: list[str], count: str | None = None) -> None:
        self.answers = answers
        self.asks: list[tuple[int, str, bool]] = []
        self.open = 0
        self.count = count  # the start lines' count= word

    async def start(
        self, stack: contextlib.AsyncExitStack, slots: int, *, client: str, waited: bool
    ) -> SessionPipes:
        self.asks.append((slots, client, waited))
        hello = encode_int(SERVE_MAGIC_2) + encode_int(0x205)
        self.open += 1
        stack.callback(self._closed)
        slot = self.answers.pop(0)
        return SessionPipes(stream(hello), Writer(), None, 100, slot=slot, count=self.count)

    def _closed(self) -> None:
        self.open -= 1

    async def kill(self, pid: int, born: str | None = None) -> None:
        raise AssertionError(pid)

    async def start_plain(self, stack: contextlib.AsyncExitStack) -> SessionPipes:
        raise AssertionError("a build session must hold a slot")

    async def close(self) -> None:
        return None


def _link(builder: _Builder) -> Link:
    transport = type(
        "T",
        (),
        {"name": "b", "start": builder.start_plain, "kill": builder.kill, "close": builder.close},
    )()
    return Link(transport, max_sessions=2, builder_slots=1, slot_start=builder.start)


async def _two_builds(builder: _Builder) -> list[int]:
    """Two builds one after the other; how many sessions were open during each."""
    seen = []
    async with _link(builder) as link:
        for _ in range(2):
            async with link.build_session():
                seen.append(builder.open)
    return seen


def test_within_its_turn_a_session_is_lent_again_for_the_next_build(monkeypatch):
    monkeypatch.setattr(pool, "TURN", 3600.0)
    builder = _Builder(["0", "0"])
    assert asyncio.run(_two_builds(builder)) == [1, 1]
    assert len(builder.asks) == 1  # one session, kept for the second build
    assert builder.open == 0


def test_after_its_turn_a_session_is_closed_and_the_next_build_asks_the_builder_again(
    monkeypatch,
):
    monkeypatch.setattr(pool, "TURN", 0.0)
    builder = _Builder(["0", "0"])
    # The first session let go of its slot before the second build asked for one.
    assert asyncio.run(_two_builds(builder)) == [1, 1]
    assert len(builder.asks) == 2
    assert builder.open == 0


def test_a_waiting_build_says_so_on_its_next_ask(monkeypatch):
    monkeypatch.setattr(pool, "BUSY_POLL", 0.0)
    builder = _Builder(["busy", "busy", "0"])
    waits = []

    async def build() -> None:
        async with _link(builder) as link, link.build_session(on_wait=lambda: waits.append(1)):
            pass

    asyncio.run(build())
    assert builder.asks == [(1, CLIENT_ID, False), (1, CLIENT_ID, True), (1, CLIENT_ID, True)]
    assert waits == [1]


async def _refused_then_two_builds(builder: _Builder) -> None:
    async with _link(builder) as link:
        for _ in range(2):
            async with link.build_session():
                pass


@pytest.mark.parametrize(("fresh", "second"), [(WANT_FRESH, True), (0.0, False)])
def test_a_client_refused_lately_counts_as_waiting_for_its_next_build_there(
    monkeypatch, fresh, second
):
    monkeypatch.setattr(pool, "BUSY_POLL", 0.0)
    monkeypatch.setattr(pool, "TURN", 0.0)  # no lingering: each build asks the builder
    monkeypatch.setattr(pool, "WANT_FRESH", fresh)
    builder = _Builder(["busy", "0", "0"])
    asyncio.run(_refused_then_two_builds(builder))
    # The second build asks within WANT_FRESH of the first one's refusal: this client waits
    # there (its marker is still fresh), so it does not yield to another client's; later, it
    # is a newcomer again.
    assert [waited for _, _, waited in builder.asks] == [False, True, second]


def test_a_client_that_yielded_does_not_wait_itself_and_yields_again(monkeypatch):
    # A yield (a free slot left to a client waiting there) made this client wait: its next
    # ask took the slot back 0.25 s later, before a waiter asking each 5 s (a lone
    # offload-hook) could (55 s and more for one slot in the review's run). Now it yields
    # until it finds a slot, telling its build once that it waits.
    monkeypatch.setattr(pool, "BUSY_POLL", 0.0)
    monkeypatch.setattr(pool, "TURN", 0.0)
    builder = _Builder(["yield", "yield", "0", "0"])
    waits: list[int] = []

    async def builds() -> None:
        async with _link(builder) as link:
            for _ in range(2):
                async with link.build_session(on_wait=lambda: waits.append(1)):
                    pass

    asyncio.run(builds())
    assert [waited for _, _, waited in builder.asks] == [False, False, False, False]
    assert waits == [1]


def test_whose_slots_a_builder_counts_is_known_from_a_busy_answer_too(monkeypatch):
    # doctor on a full builder counting in its user's home said "by every offload client on
    # every host": only a session that got a slot said whose slots they were.
    monkeypatch.setattr(pool, "BUSY_POLL", 0.0)
    builder = _Builder(["busy"] * 3, count="home")

    async def refused() -> str | None:
        async with _link(builder) as link:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.build_session().__aenter__(), 0.05)
            return link.slots_counted

    builder.answers += ["busy"] * 10_000
    assert asyncio.run(refused()) == "home"


def test_a_probe_of_a_full_builder_counts_a_slot_beyond_the_runs_own(monkeypatch):
    # A builder this run found full (3 slots withheld) frees one slot: one probe gets it, and
    # the next finds the builder full again. A probe lent the first probe's lingering session
    # instead, so each probe "found" the same slot and every withheld slot came back.
    from offload.scheduler.run.full import FullBuilders

    monkeypatch.setattr(pool, "BUSY_POLL", 0.01)
    builder = _Builder(["0"] + ["busy"] * 200)

    class Policy:
        withheld_slots = 3

        def withheld(self, _name: str) -> int:
            return self.withheld_slots

        def waiting(self, _name: str) -> list[str]:
            return []

        def on_slot_freed(self, _name: str) -> None:
            self.withheld_slots -= 1

    class Events:
        def machine_up(self, *_args: object) -> None:
            pass

    async def probe_until_quiet() -> int:
        policy: Any = Policy()  # the policy's and the events' parts FullBuilders uses
        events: Any = Events()
        async with _link(builder) as link:
            member = type("Member", (), {"remote": True, "link": link})()
            full = FullBuilders(policy, {"b": member}, events, clock=lambda: 0.0, poke=lambda: None)
            while True:
                full.probe()
                done, _ = await asyncio.wait(set(full.probes), timeout=0.5)
                if not done:
                    for task in full.probes:
                        task.cancel()
                    await asyncio.gather(*full.probes, return_exceptions=True)
                    return 3 - int(policy.withheld_slots)
                for task in done:
                    full.probed(task)

    assert asyncio.run(probe_until_quiet()) == 1
    assert builder.asks[0][0] == 1  # every probe asked the builder for a slot of its own
    assert len(builder.asks) > 2
