from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.dagfile import (
    MAX_DAG_BYTES,
    Dag,
    DagNode,
    dump_dag,
    load_dag,
    parse_dag,
    to_nix_expression,
)
from offload.errors import ConfigError


def node(name: str, work: object = 1.0, *deps: str, **extra: object) -> dict[str, object]:
    return {"name": name, "work": work, "deps": list(deps), **extra}


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_dag(data, source="g.json")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("g.json: ")
    return message


# -- parse errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], 'g.json: expected an object with a "nodes" list'),
        ({"node": []}, 'g.json: expected an object with a "nodes" list'),
        ({"nodes": {}}, 'g.json: "nodes" must be a list'),
        ({"nodes": [], "edges": []}, "g.json: unknown top-level key 'edges'"),
        ({"nodes": ["a"]}, "g.json: nodes[0]: must be an object, not str"),
        ({"nodes": [{"work": 1}]}, 'g.json: nodes[0]: needs a string "name"'),
        ({"nodes": [{"name": "a"}]}, "g.json: node 'a': missing \"work\""),
        ({"nodes": [node("a", -1)]}, "g.json: node 'a': work must be a finite number >= 0"),
        ({"nodes": [node("a", math.nan)]}, "g.json: node 'a': work must be a finite number"),
        ({"nodes": [node("a", math.inf)]}, "g.json: node 'a': work must be a finite number"),
        # Two of them summed to inf: the lower bound "inf s", the makespan 5e307 s.
        (
            {"nodes": [node("a", 1e308)]},
            "work must be a finite number >= 0 (at most 1e+09 s), not 1e+308",
        ),
        # An integer no float holds (JSON's have no bound) was an OverflowError: internal error.
        (
            {"nodes": [node("a", 10**400)]},
            "g.json: node 'a': work must be a finite number >= 0 (at most 1e+09 s), not inf",
        ),
        ({"nodes": [node("a", "3")]}, "g.json: node 'a': work must be a number, not \"3\""),
        ({"nodes": [node("a", True)]}, "g.json: node 'a': work must be a number, not true"),
        ({"nodes": [{"name": "a", "work": 1, "deps": "b"}]}, "deps must be a list of strings"),
        ({"nodes": [node("a", 1, features=[1])]}, "features must be a list of strings"),
        ({"nodes": [node("a", 1, features=["x y"])]}, "bad feature 'x y'"),
        ({"nodes": [node("a", 1, features=["k", "k"])]}, "a feature is listed twice"),
        ({"nodes": [node("a", 1, system=7)]}, "g.json: node 'a': system must be a string"),
        ({"nodes": [node("a", 1, system="")]}, "g.json: node 'a': bad system ''"),
        # Nix's strings end at a NUL: the derivation would need "x86", not what was simulated.
        ({"nodes": [node("a", 1, system="x86\x00-linux")]}, "node 'a': bad system"),
        ({"nodes": [node("a", 1, system="\ud800")]}, "node 'a': bad system"),
        ({"nodes": [node("a", 1, features=["kvm\x00"])]}, "bad feature 'kvm\\x00'"),
        # No --machines line could offer them: it splits on these.
        ({"nodes": [node("a", 1, features=["a+b"])]}, "bad feature 'a+b'"),
        ({"nodes": [node("a", 1, features=["a:b"])]}, "bad feature 'a:b'"),
        ({"nodes": [node("a", 1, wrk=2)]}, "g.json: node 'a': unknown key 'wrk'"),
        ({"nodes": [node("a b")]}, "g.json: node 'a b': name must be 1-207 characters"),
        # Nix refuses both: a .drv file's name is at most 211 characters, and no name ends so.
        ({"nodes": [node("a" * 208)]}, "name must be 1-207 characters"),
        ({"nodes": [node("foo.drv")]}, "node 'foo.drv': name must be"),
        ({"nodes": [node(".a")]}, "g.json: node '.a': name must be"),
        ({"nodes": [node("")]}, "g.json: node '': name must be"),
        ({"nodes": [node("a"), node("a")]}, "g.json: node 'a': duplicate name"),
        ({"nodes": [node("a", 1, "b")]}, "g.json: node 'a': unknown dependency 'b'"),
        ({"nodes": [node("b"), node("a", 1, "b", "b")]}, "node 'a': a dependency is listed twice"),
        ({"nodes": [node("a", 1, "a")]}, "g.json: node 'a': depends on itself"),
    ],
)
def test_parse_errors_name_the_node_and_the_problem(data: object, expected: str) -> None:
    assert expected in error_of(data)


def test_a_cycle_is_reported_with_its_members() -> None:
    data = {
        "nodes": [
            node("root"),
            node("x", 1, "root", "z"),
            node("y", 1, "x"),
            node("z", 1, "y"),
            node("after", 1, "x"),
        ]
    }
    message = error_of(data)
    assert "dependency cycle" in message
    # The cycle is x -> z -> y -> x, reported from whichever member it starts at.
    cycle = message.rsplit("dependency cycle ", 1)[1].split(" -> ")
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"x", "y", "z"}
    assert len(cycle) == 4


def test_valid_nodes_keep_their_fields() -> None:
    dag = parse_dag(
        {
            "nodes": [
                node("b", 2.5, "a", features=["kvm", "big-parallel"], system="aarch64-linux"),
                {"name": "a", "work": 0},
            ]
        },
        source="g.json",
    )
    assert dag.by_name()["b"] == DagNode(
        "b", 2.5, ("a",), frozenset({"kvm", "big-parallel"}), "aarch64-linux"
    )
    assert dag.by_name()["a"] == DagNode("a", 0.0)


def test_nodes_in_any_order_come_out_deps_first() -> None:
    dag = parse_dag(
        {"nodes": [node("d", 1, "b", "c"), node("c", 1, "a"), node("b", 1, "a"), node("a")]},
        source="g.json",
    )
    position = {n.name: i for i, n in enumerate(dag.nodes)}
    for n in dag.nodes:
        assert all(position[d] < position[n.name] for d in n.deps)
    assert sorted(position) == ["a", "b", "c", "d"]


def test_constructing_a_dag_directly_checks_order() -> None:
    with pytest.raises(ConfigError, match="dependency 'a' is not an earlier node"):
        Dag((DagNode("b", 1, ("a",)), DagNode("a", 1)))
    with pytest.raises(ConfigError, match="duplicate name"):
        Dag((DagNode("a", 1), DagNode("a", 2)))
    with pytest.raises(ConfigError, match="work must be a finite number"):
        Dag((DagNode("a", -0.5),))


# -- graph measures, computed by hand --------------------------------------------------------

# A diamond a(2) -> {b(3), c(5)} -> d(1), and e(4) on its own.
DIAMOND = Dag.of(
    [
        DagNode("d", 1, ("b", "c")),
        DagNode("b", 3, ("a",)),
        DagNode("c", 5, ("a",)),
        DagNode("a", 2),
        DagNode("e", 4),
    ]
)


def test_critical_path_and_total_work_by_hand() -> None:
    assert DIAMOND.critical_path() == 8.0  # a + c + d = 2 + 5 + 1
    assert DIAMOND.total_work() == 15.0  # 2 + 3 + 5 + 1 + 4


def test_remaining_path_is_the_longest_chain_from_each_node() -> None:
    assert dict(DIAMOND.remaining_path()) == {"a": 8.0, "b": 4.0, "c": 6.0, "d": 1.0, "e": 4.0}
    assert dict(DIAMOND.dependents()) == {
        "a": ("b", "c"),
        "b": ("d",),
        "c": ("d",),
        "d": (),
        "e": (),
    }


def test_lower_bound_by_hand() -> None:
    # Fleet of speed 4 x 2 slots and 1 x 1: fastest 4 -> 8 / 4 = 2; capacity 9 -> 15 / 9 = 1.67.
    assert DIAMOND.lower_bound([(4, 2), (1, 1)]) == 2.0
    # One slow slot: capacity bound 15 / 1 dominates the path bound 8 / 1.
    assert DIAMOND.lower_bound([(1, 1)]) == 15.0
    # Three slots of speed 0.5: path 8 / 0.5 = 16 beats work 15 / 1.5 = 10.
    assert DIAMOND.lower_bound([(0.5, 3)]) == 16.0
    # A machine without slots adds nothing, not even its speed.
    assert DIAMOND.lower_bound([(1, 2), (100, 0)]) == 8.0  # max(8 / 1, 15 / 2)


def test_lower_bound_rejects_fleets_without_capacity() -> None:
    with pytest.raises(ValueError, match="at least one machine"):
        DIAMOND.lower_bound([])
    with pytest.raises(ValueError, match="at least one machine"):
        DIAMOND.lower_bound([(2, 0)])
    with pytest.raises(ValueError, match="positive"):
        DIAMOND.lower_bound([(0, 2)])


def test_empty_dag() -> None:
    dag = parse_dag({"nodes": []}, source="g.json")
    assert dag.critical_path() == 0.0
    assert dag.total_work() == 0.0
    assert dag.lower_bound([(1, 1)]) == 0.0
    assert parse_dag(json.loads(dump_dag(dag)), source="again") == dag


@st.composite
def dags(draw: st.DrawFn) -> Dag:
    count = draw(st.integers(min_value=1, max_value=9))
    nodes = []
    for i in range(count):
        deps = draw(st.sets(st.integers(min_value=0, max_value=i - 1))) if i else set()
        work = draw(st.floats(min_value=0, max_value=100, allow_nan=False))
        nodes.append(DagNode(f"n{i}", work, tuple(f"n{d}" for d in sorted(deps))))
    return Dag(tuple(nodes))


def all_paths(dag: Dag) -> list[list[str]]:
    """Every path from a node to a node without dependents, enumerated naively."""
    users = {n.name: [m.name for m in dag.nodes if n.name in m.deps] for n in dag.nodes}

    def walk(name: str) -> list[list[str]]:
        rest = [p for user in users[name] for p in walk(user)] or [[]]
        return [[name, *p] for p in rest]

    return [p for n in dag.nodes for p in walk(n.name)]


@settings(max_examples=60, deadline=None)
@given(dags())
def test_critical_path_is_the_heaviest_path(dag: Dag) -> None:
    work = {n.name: n.work for n in dag.nodes}
    heaviest = max(sum(work[n] for n in path) for path in all_paths(dag))
    assert math.isclose(dag.critical_path(), heaviest, rel_tol=1e-9, abs_tol=1e-9)
    assert parse_dag(json.loads(dump_dag(dag)), source="again") == dag


def test_dump_and_parse_round_trip_with_optional_fields(tmp_path: Path) -> None:
    dag = Dag.of(
        [
            DagNode("a", 0.25),
            DagNode("b", 3, ("a",), frozenset({"kvm", "big-parallel"})),
            DagNode("c", 1e-3, ("a", "b"), system="aarch64-linux"),
        ]
    )
    text = dump_dag(dag)
    data = json.loads(text)
    assert data["nodes"][0] == {"name": "a", "work": 0.25, "deps": []}
    assert data["nodes"][1]["features"] == ["big-parallel", "kvm"]
    assert "features" not in data["nodes"][2]
    assert data["nodes"][2]["system"] == "aarch64-linux"
    path = tmp_path / "g.json"
    path.write_text(text)
    assert load_dag(path) == dag


def test_load_dag_reports_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read DAG file"):
        load_dag(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": [\n  {"name": "a",, }\n]}')
    with pytest.raises(ConfigError, match=r"bad\.json:2: not valid JSON"):
        load_dag(bad)
    cyclic = tmp_path / "cyclic.json"
    cyclic.write_text(json.dumps({"nodes": [node("a", 1, "b"), node("b", 1, "a")]}))
    with pytest.raises(ConfigError, match=r"cyclic\.json: node '(a|b)': dependency cycle"):
        load_dag(cyclic)


def test_a_byte_order_mark_is_read_past_and_a_long_number_said_in_words(tmp_path: Path) -> None:
    marked = tmp_path / "marked.json"
    marked.write_bytes(b"\xef\xbb\xbf" + json.dumps({"nodes": [node("a", 1)]}).encode())
    assert [n.name for n in load_dag(marked).nodes] == ["a"]  # was "Unexpected UTF-8 BOM"
    long = tmp_path / "long.json"
    long.write_text('{"nodes": [{"name": "a", "work": 1' + "0" * 5000 + "}]}")
    with pytest.raises(ConfigError) as raised:
        load_dag(long)
    # Was Python's "Exceeds the limit (4300 digits) ... use sys.set_int_max_str_digits()".
    assert raised.value.message == f"{long}: a number has too many digits"


def test_a_dag_file_of_a_big_build_graph_is_read(tmp_path: Path) -> None:
    # 40,000 nodes, each with a store-path-like name and a dependency: 4.9 MB of JSON, more
    # than the 4 MiB other user files are read up to, and `simulate` plans it in seconds.
    names = [f"{i:032x}-package-{i}-1.2.3" for i in range(40_000)]
    data = {"nodes": [node(name, 1.5, *names[max(i - 1, 0) : i]) for i, name in enumerate(names)]}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(data))
    assert path.stat().st_size > 4 << 20
    assert len(load_dag(path).nodes) == 40_000
    # Still bounded: a file past the DAG files' own cap is refused, not parsed.
    huge = tmp_path / "huge.json"
    with huge.open("wb") as out:
        out.truncate(MAX_DAG_BYTES + 1)
    with pytest.raises(ConfigError, match="larger than 64 MiB"):
        load_dag(huge)


# -- the Nix expression, as text (tests/integration/test_dag_nix.py evaluates and builds it) ----


def test_nix_expression_quotes_awkward_salts_and_names() -> None:
    dag = Dag.of([DagNode("x+1", 1), DagNode("y", 2, ("x+1",))])
    expr = to_nix_expression(dag, salt='a"${b}\\c')
    assert 'salt = "a\\"\\${b}\\\\c";' in expr
    assert '"x+1" = n0;' in expr
    # Every node is its own binding, and dependencies refer to the bindings, not to strings.
    assert "deps = [ n0 ];" in expr


@pytest.mark.parametrize("name", ["app-1.0", "0lib", "x?y", "a=b", "__functor"])
def test_names_nix_build_would_skip_make_the_expression_a_list(name: str) -> None:
    # nix-build takes from a set only the names its attribute pattern matches, and skips the
    # rest without a word ("__functor" made the set a function): a list builds every node.
    dag = Dag.of([DagNode("lib", 1), DagNode(name, 2, ("lib",))])
    expr = to_nix_expression(dag, salt="s")
    assert expr.endswith("in [ n0 n1 ]\n")
    assert f'name = "{name}";' in expr
    assert to_nix_expression(DIAMOND, salt="s").endswith("}\n")  # names it takes: a set


@pytest.mark.parametrize("salt", ["s1", "s2"])
def test_nix_expression_changes_only_in_the_salt(salt: str) -> None:
    one = to_nix_expression(DIAMOND, salt="s0").splitlines()
    two = to_nix_expression(DIAMOND, salt=salt).splitlines()
    changed = [(a, b) for a, b in itertools.zip_longest(one, two) if a != b]
    assert changed == [('  salt = "s0";', f'  salt = "{salt}";')]


def test_a_wrapped_script_runs_before_and_after_and_the_default_changes_nothing() -> None:
    plain = to_nix_expression(DIAMOND, salt="s0")
    assert to_nix_expression(DIAMOND, salt="s0", wrap=("", "")) == plain
    wrapped = to_nix_expression(DIAMOND, salt="s0", wrap=("echo a $x", "echo b"))
    (line,) = [x for x in wrapped.splitlines() if x.startswith("  script = ")]
    # Nix would otherwise read ``$`` followed by ``{`` as an antiquotation.
    assert line.startswith('  script = "echo a \\$x\\n')
    assert line.endswith('\\necho b\\n";')
    assert [x for x in wrapped.splitlines() if "script" not in x] == [
        x for x in plain.splitlines() if "script" not in x
    ]


@pytest.mark.parametrize(
    "text",
    [
        '{"nodes": [{"name": "a", "work": -1}]}',
        '{"nodes": [',
        "[" * 100_000,
        "[]",
        # More digits than Python reads as an integer: "internal error: ValueError".
        '{"nodes": [{"name": "a", "work": 1' + "0" * 5000 + "}]}",
    ],
)
def test_a_dag_file_s_errors_say_the_form_it_takes(tmp_path: Path, text: str) -> None:
    # Each was an error line with no hint.
    path = tmp_path / "g.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_dag(path)
    assert raised.value.hint is not None
    assert raised.value.hint.startswith('a DAG file is {"nodes": [')
