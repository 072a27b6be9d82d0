import asyncio

from offload.build import build_plan, load_graph, out_links
from offload.build.graph import check_impossible
from offload.transport.fake import FakePath, FakeStore
from tests.helpers.plans import make_plan


def _graph(local_paths, remote_paths, roots_names=("d",)):
    plan, paths, outs, src = make_plan({"a": [], "b": ["a"], "c": [], "d": ["b", "c"]})

    async def scenario():
        local = FakeStore("local", [src, *(FakePath.from_text(outs[n], n) for n in local_paths)])
        remote = FakeStore("fast", [FakePath.from_text(outs[n], n) for n in remote_paths])
        async with local.connect() as lc, remote.connect() as rc:
            return await load_graph(
                lc,
                [(paths[n], "out") for n in roots_names],
                read=plan.drvs.__getitem__,
                remotes={"fast": rc},
            )

    return asyncio.run(scenario()), paths, outs


def test_only_missing_outputs_are_built_dependencies_first():
    graph, paths, _ = _graph(local_paths=["a"], remote_paths=[])
    order = graph.order
    assert set(order) == {paths["b"], paths["c"], paths["d"]}
    assert order.index(paths["b"]) < order.index(paths["d"])
    assert order.index(paths["c"]) < order.index(paths["d"])
    assert graph.fetch == {}
    plan = build_plan(graph)
    assert set(plan.inputs[paths["d"]]) >= {graph.output_path(paths["b"], "out")}
    # Sources are sized from what the local store reports, per derivation.
    srcs = {src for d in order for src in graph.drvs[d].input_srcs}
    sized = build_plan(graph, dict.fromkeys(srcs, 5))
    for d in order:
        assert sized.source_bytes[d] == 5 * len(graph.drvs[d].input_srcs)
    assert plan.source_bytes == dict.fromkeys(order, 0)


def test_an_output_a_builder_already_has_is_fetched_and_its_inputs_are_not_built():
    graph, paths, _ = _graph(local_paths=[], remote_paths=["b"])
    assert graph.fetch == {paths["b"]: "fast"}
    assert paths["a"] not in graph.order  # only b needed it
    assert set(graph.order) == {paths["c"], paths["d"]}


def test_nothing_to_do_when_the_roots_are_valid_locally():
    graph, _, _ = _graph(local_paths=["d"], remote_paths=["d"])
    assert graph.order == []
    assert graph.fetch == {}


def test_result_links_are_named_like_nix_build():
    graph, paths, outs = _graph(local_paths=["c", "d"], remote_paths=[], roots_names=("d", "c"))
    links = out_links([(paths["d"], "out"), (paths["c"], "out")], graph, "result")
    assert links == [(outs["d"], "result"), (outs["c"], "result-2")]


def test_check_is_impossible_only_for_a_root_that_would_be_built():
    # nix-build --check: a root valid here (its missing inputs are not looked at) or held by a
    # builder (fetched, not built) can be checked; one that is to be built cannot.
    for local, remote in ((["d"], []), ([], ["d"])):
        graph, _, _ = _graph(local_paths=local, remote_paths=remote)
        assert check_impossible(graph) is None
    graph, paths, _ = _graph(local_paths=["a", "b", "c"], remote_paths=[])
    refused = check_impossible(graph)
    assert refused is not None
    assert refused.message == (
        f"some outputs of '{paths['d']}' are not valid, so checking is not possible"
    )
    assert refused.hint is not None
    assert refused.hint.startswith("build it first without --check")


def test_check_names_the_first_unbuilt_root_by_name_as_nix_goals_go():
    graph, paths, _ = _graph(local_paths=["a"], remote_paths=[], roots_names=("d", "b", "c"))
    refused = check_impossible(graph)
    assert refused is not None
    assert refused.message.startswith(f"some outputs of '{paths['b']}' are not valid")
    assert refused.message.endswith(" (and 2 more)")
