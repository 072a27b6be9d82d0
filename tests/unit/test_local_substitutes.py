"""Substituting from the local store's binary caches while the graph is read, and showing it.

The local store here is a stub that answers QueryValidPaths like ``nix-store --serve --write``:
with the substitute flag, the paths its "cache" has become valid before it answers. Every query
is recorded, so a test can say which were made.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from typing import cast

import pytest
from rich.console import Console

from offload.build import load_graph
from offload.build.prebuilt import report_substituted as _report_substituted
from offload.config.pool import Pool, load_pool
from offload.config.settings import NixSettings, substitutes_locally, with_nix_options
from offload.errors import ConfigError
from offload.names import LOCAL
from offload.protocol.serve import ServeClient
from offload.store.drv import Derivation, DerivationOutput
from offload.transport.fake import FakePath, FakeStore
from offload.ui.events import Event, JobFinished, RunStarted
from offload.ui.plain import PlainRenderer, describe_finished
from offload.ui.summary import render_summary, summarize
from offload.ui.tty import TtyRenderer
from tests.helpers.plans import make_plan

# d needs b and c, b needs a.
EDGES = {"a": [], "b": ["a"], "c": [], "d": ["b", "c"]}


class CachingStore:
    """The local store: ``valid`` paths, and a cache holding ``cached`` ones."""

    def __init__(self, valid: Iterable[str], cached: Iterable[str]) -> None:
        self.valid = set(valid)
        self.cached = set(cached)
        self.queries: list[tuple[frozenset[str], bool]] = []

    async def query_valid_paths(
        self, paths: Iterable[str], *, lock: bool = False, substitute: bool = False
    ) -> set[str]:
        paths = frozenset(paths)
        self.queries.append((paths, substitute))
        if substitute:
            self.valid |= paths & self.cached
        return set(paths & self.valid)

    def client(self) -> ServeClient:
        """Itself, for code typed to take a ``ServeClient`` (it only calls this one query)."""
        return cast("ServeClient", self)

    @property
    def substituting(self) -> list[frozenset[str]]:
        return [paths for paths, substitute in self.queries if substitute]


def graph_of(
    local,
    *,
    substitute,
    remote_paths=(),
    edges=EDGES,
    roots=("d",),
    unsubstitutable=(),
    always=False,
):
    plan, paths, outs, _ = make_plan(edges)
    read: list[str] = []
    # allowSubstitutes = false, as Nix writes it in a derivation's environment: "".
    refusing = {paths[n] for n in unsubstitutable}

    def reader(drv):
        read.append(drv)
        made = plan.drvs[drv]
        return replace(made, env={**made.env, "allowSubstitutes": ""}) if drv in refusing else made

    async def scenario():
        remote = FakeStore("fast", [FakePath.from_text(outs[n], n) for n in remote_paths])
        async with remote.connect() as rc:
            return await load_graph(
                local.client(),
                [(paths[n], "out") for n in roots],
                read=reader,
                remotes={"fast": rc},
                substitute=substitute,
                always_substitute=always,
            )

    return asyncio.run(scenario()), paths, outs, read


def test_a_cached_root_is_substituted_and_nothing_under_it_is_read_or_built():
    _, _, outs, _ = make_plan(EDGES)
    local = CachingStore(valid=[], cached=[outs["d"]])
    graph, paths, outs, read = graph_of(local, substitute=True)
    assert graph.order == []
    assert list(graph.substituted) == [paths["d"]]
    assert graph.substituted[paths["d"]].outputs == (outs["d"],)
    assert read == [paths["d"]]  # b, c and a were never looked at
    assert outs["d"] in local.valid


def test_without_substitution_no_substituting_query_is_made_and_all_is_built():
    _, _, outs, _ = make_plan(EDGES)
    local = CachingStore(valid=[], cached=list(outs.values()))
    graph, paths, _, _ = graph_of(local, substitute=False)
    assert local.substituting == []
    assert graph.substituted == {}
    assert set(graph.order) == set(paths.values())


def test_a_cached_dependency_is_substituted_and_the_rest_built():
    _, _, outs, _ = make_plan(EDGES)
    local = CachingStore(valid=[], cached=[outs["b"]])
    graph, paths, _, read = graph_of(local, substitute=True)
    assert set(graph.order) == {paths["c"], paths["d"]}
    assert list(graph.substituted) == [paths["b"]]
    assert paths["a"] not in read  # only b needed it
    # One substituting query per level that had something missing: d, then b and c.
    assert local.substituting == [frozenset({outs["d"]}), frozenset({outs["b"], outs["c"]})]


def test_a_derivation_that_disallows_substitutes_is_built_and_its_inputs_still_substituted():
    # allowSubstitutes = false (writeText, runCommandLocal...): Nix builds it though a cache
    # has it, and looks further down for its inputs, which the cache may give; offload took it
    # from the cache.
    _, _, outs, _ = make_plan(EDGES)
    local = CachingStore(valid=[], cached=[outs["d"], outs["b"]])
    graph, paths, _, read = graph_of(local, substitute=True, unsubstitutable=["d"])
    assert set(graph.order) == {paths["c"], paths["d"]}
    assert list(graph.substituted) == [paths["b"]]
    assert outs["d"] not in local.valid
    assert local.substituting == [frozenset({outs["b"], outs["c"]})]  # d never asked for
    assert paths["a"] not in read


def test_always_allow_substitutes_takes_even_those_from_the_cache():
    # Nix's always-allow-substitutes (a setting of newer Nix) overrides the attribute.
    _, _, outs, _ = make_plan(EDGES)
    local = CachingStore(valid=[], cached=[outs["d"]])
    graph, paths, _, _ = graph_of(local, substitute=True, unsubstitutable=["d"], always=True)
    assert graph.order == []
    assert list(graph.substituted) == [paths["d"]]


def test_a_builders_copy_is_taken_before_the_cache_and_costs_no_cache_query():
    _, _, outs, _ = make_plan(EDGES)
    local = CachingStore(valid=[], cached=[outs["d"]])
    graph, paths, _, _ = graph_of(local, substitute=True, remote_paths=["d"])
    assert graph.fetch == {paths["d"]: "fast"}
    assert graph.substituted == {}
    assert local.substituting == []


def test_nothing_missing_means_no_substituting_query():
    _, _, outs, _ = make_plan(EDGES)
    local = CachingStore(valid=[outs["d"]], cached=[outs["d"]])
    graph, _, _, _ = graph_of(local, substitute=True)
    assert graph.order == []
    assert local.queries == [(frozenset({outs["d"]}), False)]


def test_a_derivation_with_only_some_outputs_cached_is_built():
    plan, paths, outs, _ = make_plan({"m": []})
    drv = plan.drvs[paths["m"]]
    dev = outs["m"] + "-dev"
    two = Derivation.create(
        outputs={"out": DerivationOutput(outs["m"], "", ""), "dev": DerivationOutput(dev, "", "")},
        input_drvs={},
        input_srcs=list(drv.input_srcs),
        platform=drv.platform,
        builder=drv.builder,
        args=list(drv.args),
        env={**drv.env, "dev": dev},
    )
    local = CachingStore(valid=[], cached=[outs["m"]])
    roots = [(paths["m"], "out"), (paths["m"], "dev")]
    read = {paths["m"]: two}.__getitem__
    graph = asyncio.run(load_graph(local.client(), roots, read=read, substitute=True))
    assert graph.order == [paths["m"]]
    assert graph.substituted == {}


def test_substituted_derivations_are_reported_as_local_jobs():
    _, _, outs, _ = make_plan(EDGES)
    local = CachingStore(valid=[], cached=[outs["b"], outs["c"]])
    graph, paths, _, _ = graph_of(local, substitute=True)
    seen: list[Event] = []
    events = _report_substituted(graph, seen.append)
    assert events == seen
    assert {(e.drv_path, e.name, e.machine, e.status) for e in events} == {
        (paths["b"], "b", LOCAL, "substituted"),
        (paths["c"], "c", LOCAL, "substituted"),
    }
    assert all(e.finished >= e.started and e.bytes_received == 0 for e in events)


# --- settings and pool ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, True),  # Nix's defaults: substitute, from cache.nixos.org
        ({"substituters": ""}, False),
        ({"substitute": "false", "substituters": "file:///c"}, False),
        ({"substitute": "true", "substituters": "file:///c https://x"}, True),
    ],
)
def test_substitutes_locally_follows_nix_settings(values, expected):
    assert substitutes_locally(NixSettings(values)) is expected


def test_nix_options_are_appended_to_nix_config_and_builders_left_out():
    env = {"NIX_CONFIG": "sandbox = false", "HOME": "/h"}
    options = {"substituters": "file:///c", "require-sigs": "false", "builders": "a\nb"}
    merged = with_nix_options(env, options)
    assert merged["HOME"] == "/h"
    assert merged["NIX_CONFIG"].splitlines() == [
        "sandbox = false",
        "substituters = file:///c",
        "require-sigs = false",
    ]
    assert env["NIX_CONFIG"] == "sandbox = false"  # not changed in place
    assert with_nix_options(env, {}) == env
    assert with_nix_options({}, {"substituters": ""})["NIX_CONFIG"] == "substituters = \n"


@pytest.mark.parametrize("value", ["a\nb", "x # y"])
def test_an_option_nix_config_cannot_hold_is_refused(value):
    with pytest.raises(ConfigError, match="require-sigs"):
        with_nix_options({}, {"require-sigs": value})


def test_the_pool_carries_local_substitution_and_the_options(tmp_path):
    options = {"substituters": "file:///c", "require-sigs": "false"}
    settings = NixSettings({"substitute": "true", **options, "max-jobs": "1"})
    env = {"HOME": str(tmp_path)}
    pool = load_pool(builders="", config=None, env=env, options=options, nix_settings=settings)
    assert pool.local_substitutes
    assert pool.select(max_jobs=2).local_substitutes  # kept through --on/-j
    local_env = pool.local_env()
    assert local_env is not None
    assert local_env["NIX_CONFIG"].endswith("substituters = file:///c\nrequire-sigs = false\n")
    assert local_env["PATH"] == os.environ["PATH"]
    off = NixSettings({"substituters": "", "max-jobs": "1"})
    plain = load_pool(builders="", config=None, env=env, nix_settings=off)
    assert not plain.local_substitutes
    assert plain.local_env() is None  # no options: the serve process inherits ours unchanged
    assert Pool(None, ()).local_env() is None


def test_the_pool_refuses_an_option_it_could_not_pass_on(tmp_path):
    settings = NixSettings({"max-jobs": "1"})
    with pytest.raises(ConfigError, match="cannot be passed on"):
        load_pool(
            builders="",
            config=None,
            env={"HOME": str(tmp_path)},
            options={"trusted-public-keys": "k#1"},
            nix_settings=settings,
        )


# --- rendering ------------------------------------------------------------------------------

T0 = 1_700_000_000.0
SUB = "/nix/store/4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e-zlib-1.3.drv"
BUILT = "/nix/store/5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f-app-1.drv"


def _job(job: tuple[str, str, str], status, span, moved=(0, 0)) -> JobFinished:
    drv, name, machine = job
    start, end = span
    sent, received = moved
    return JobFinished(
        drv, name, machine, status, T0 + start, T0 + end, sent, received, None, T0 + end
    )


def _run():
    return [
        _job((SUB, "zlib-1.3", "local"), "substituted", (0.0, 0.4)),
        RunStarted("r", 1, ("fast", "local"), 10.0, T0 + 0.5),
        _job((BUILT, "app-1", "fast"), "built", (0.5, 3.0), (100, 2048)),
    ]


def test_plain_says_substituted_from_a_cache():
    assert describe_finished(_run()[0]) == "substituted zlib-1.3 from a binary cache in 0.4s"
    out = io.StringIO()
    renderer = PlainRenderer(out, print_logs=False)
    for event in _run():
        renderer.handle(event)
    assert "local: substituted zlib-1.3 from a binary cache" in out.getvalue()


def test_summary_shows_a_substituted_column_only_when_something_was():
    summary = summarize(_run())
    assert summary.total.substituted == 1
    assert summary.columns[:4] == ("machine", "built", "fetched", "substituted")
    out = io.StringIO()
    render_summary(_run(), out, rich=False)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:5] == ["machine", "built", "fetched", "substituted", "failed"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line[0].isalpha()}
    assert rows["local"][1:5] == ["0", "0", "1", "0"]
    assert rows["fast"][1:5] == ["1", "0", "0", "0"]
    assert rows["total"][1:5] == ["1", "0", "1", "0"]
    plain = io.StringIO()
    render_summary(_run()[1:], plain, rich=False)
    assert "substituted" not in plain.getvalue()
    rich = io.StringIO()
    render_summary(_run(), rich, rich=True, width=120)
    assert "substituted" in rich.getvalue()


def test_tty_counts_substituted_as_done_but_not_in_the_pace():
    out = io.StringIO()
    console = Console(file=out, width=100, height=20, force_terminal=True, color_system=None)
    now = [T0 + 0.5]
    renderer = TtyRenderer(console, print_logs=False, clock=lambda: now[0], auto_refresh=False)
    first, started, _ = _run()
    renderer.handle(first)
    renderer.handle(started)
    now[0] = T0 + 2.5
    renderer._live.refresh()
    text = out.getvalue()
    renderer.close()
    last = [line for line in text.splitlines() if " done" in line][-1]
    assert "1/2 done" in last
    assert "ETA 8.0s" in last  # the plan's 10 s minus 2 s run: the cached one made no pace


@pytest.mark.parametrize("told_first", [False, True])
def test_tty_counts_an_output_substituted_before_the_run_however_it_is_told(told_first):
    """``offload build`` tells its run's first event first, counting the outputs settled
    before it (``ready``), then those outputs: the count is the same as when they came first."""
    out = io.StringIO()
    console = Console(file=out, width=100, height=20, force_terminal=True, color_system=None)
    renderer = TtyRenderer(console, print_logs=False, clock=lambda: T0 + 2.5, auto_refresh=False)
    first, started, _ = _run()
    order = [replace(started, ready=1), first] if told_first else [first, started]
    for event in order:
        renderer.handle(event)
    renderer._live.refresh()
    text = out.getvalue()
    renderer.close()
    assert "1/2 done" in [line for line in text.splitlines() if " done" in line][-1]


def test_plain_lines_never_go_back_for_what_is_told_after_the_run_started():
    out = io.StringIO()
    renderer = PlainRenderer(out, print_logs=False, clock=lambda: T0)
    first, started, _ = _run()
    for event in (replace(started, ready=1), first):
        renderer.handle(event)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[  0.0s] run: 1 to build"), lines
    assert lines[1].startswith("[  0.0s] local: substituted zlib-1.3"), lines


@pytest.mark.parametrize("said", [False, True])
def test_a_builder_failing_as_its_outputs_come_home_is_left_out_and_they_are_built(
    monkeypatch: pytest.MonkeyPatch, said: bool
) -> None:
    # It held d's output: the graph stopped at d ("fetch it"), and the builder dropped during
    # the copy. The run failed with that error; now the builder is left out (said as one
    # that did not answer) and the graph is read again without it: d and all under it built.
    # Its Nix refusing in words of its own (``said``: a path its collector took meanwhile) is
    # no connection lost: it is not asked again, but stays in the run.
    from types import SimpleNamespace

    from offload.build import run as run_module
    from offload.errors import ProtocolError, RemoteError

    plan, paths, outs, _ = make_plan(EDGES)
    local = CachingStore(valid=[], cached=[])
    read = functools.partial(load_graph, read=lambda drv: plan.drvs[drv])
    monkeypatch.setattr(run_module, "load_graph", read)

    class Dropping:
        """The builder's session: it holds d's output, then drops as the copy begins."""

        def __init__(self, client: ServeClient) -> None:
            self.client = client

        async def query_valid_paths(self, paths: Iterable[str], **_: object) -> set[str]:
            return await self.client.query_valid_paths(paths)

        async def query_closure(self, paths: Iterable[str]) -> set[str]:
            if said:
                raise RemoteError(f"fast: path '{outs['d']}' is not valid")
            raise ProtocolError("fast closed the connection during QueryClosure")

    async def scenario() -> tuple[object, dict[str, str], dict[str, object], list[Event]]:
        remote = FakeStore("fast", [FakePath.from_text(outs["d"], "d")])
        async with remote.connect() as rc:
            clients: dict[str, object] = {"fast": Dropping(rc)}
            unreachable: dict[str, str] = {}
            told: list[Event] = []

            @contextlib.asynccontextmanager
            async def session() -> AsyncIterator[object]:
                yield local.client()

            graph, _ = await run_module._existing(
                local.client(),
                SimpleNamespace(session=session),  # type: ignore[arg-type]
                [(paths["d"], "out")],
                clients,  # type: ignore[arg-type]
                unreachable=unreachable,
                pool=SimpleNamespace(local_substitutes=False, always_substitutes=False),  # type: ignore[arg-type]
                emit=told.append,
            )
            return graph, unreachable, clients, told

    graph, unreachable, clients, told = asyncio.run(scenario())
    assert sorted(graph.order) == sorted(paths[n] for n in "abcd")  # type: ignore[attr-defined]
    lost = {} if said else {"fast": "fast closed the connection during QueryClosure"}
    assert unreachable == lost
    assert clients == {}
    assert told == []  # nothing fetched: no job told finished
