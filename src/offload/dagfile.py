"""DAG files: abstract build graphs for ``offload simulate`` and the benchmarks.

A DAG file is JSON (design.md, "Interfaces")::

    {"nodes": [{"name": "n0001", "work": 3.5, "deps": ["n0000"],
                "features": ["big-parallel"], "system": "x86_64-linux"}]}

``work`` is the build's duration in seconds on a machine of speed 1; ``features`` (required system
features) and ``system`` are optional. Nodes may appear in any order in the file; a parsed ``Dag``
always holds them in topological order (dependencies first, otherwise in file order), so one
forward pass over ``Dag.nodes`` sees every node after all of its inputs.

Node names become derivation names, so they are limited to the characters Nix allows in store
path names. ``to_nix_expression`` turns a DAG into real derivations that need nothing but
``/bin/sh`` and coreutils: each sleeps ``work / speed`` seconds, where the speed is read from
``/etc/nix/offload-speed`` on the machine that builds it (a per-member file in the local fleet),
and writes an output that names its inputs' outputs and their hashes, so outputs really depend on
inputs. A salt goes into every derivation so each benchmark repetition builds fresh outputs, while
the derivation name (what history keys on) stays the node name.

The demo's bundled graph ``offload/data/sample.json`` was generated with::

    python bench/graphs.py layered 30 0 --scale 2 --prefix sample > src/offload/data/sample.json
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from offload.config.machines.files import read_user_file
from offload.errors import ConfigError

__all__ = [
    "MAX_DAG_BYTES",
    "MAX_WORK",
    "Dag",
    "DagNode",
    "dump_dag",
    "load_dag",
    "parse_dag",
    "to_nix_expression",
    "write_nix_file",
]

# Nix's store path name alphabet (a name may not start with a dot). A node is a derivation, whose
# ".drv" file's name Nix caps at 211 characters: 207 for the name, which may not end in ".drv".
_NAME_RE = re.compile(r"[A-Za-z0-9+\-_?=][A-Za-z0-9+\-._?=]{0,206}")
# The names Nix's nix-instantiate and nix-build take from a top-level set (get-drvs' attrRegex;
# others it skips without a word), less the "__" ones Nix gives a meaning (``__functor`` makes
# the set a function).
_ATTR_RE = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_+\-]*")
# Seconds at speed 1 a node may take (31 years): a graph's totals and the simulator's clock
# stay finite and exact enough; 1e308 twice summed to inf, a lower bound of "inf s".
MAX_WORK = 1e9
_NODE_KEYS = frozenset({"name", "work", "deps", "features", "system"})
# Printable ASCII but the separators of machines lines and of simulate's --machines: Nix's own
# strings end at a NUL, so a feature with one would not be the one simulated.
_FEATURE_RE = re.compile(r"[!-~]+")
_SEPARATORS = frozenset(",+:")


def _plain(text: str) -> bool:
    """Whether ``text`` may be a feature or a system (the comment above)."""
    return _FEATURE_RE.fullmatch(text) is not None and not _SEPARATORS & set(text)


@dataclass(frozen=True)
class DagNode:
    name: str
    work: float
    deps: tuple[str, ...] = ()
    features: frozenset[str] = frozenset()
    system: str | None = None


@dataclass(frozen=True)
class Dag:
    """A validated build graph; ``nodes`` is in topological order (deps first)."""

    nodes: tuple[DagNode, ...]
    _by_name: Mapping[str, DagNode] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Constructing a Dag directly (generators, tests) must give the same guarantees as parsing.
        _check_order(self.nodes, source="dag")
        object.__setattr__(self, "_by_name", MappingProxyType({n.name: n for n in self.nodes}))

    @classmethod
    def of(cls, nodes: Iterable[DagNode], *, source: str = "dag") -> Dag:
        """Validate nodes given in any order and return them as a Dag in topological order."""
        return cls(_topological(tuple(nodes), source=source))

    def by_name(self) -> Mapping[str, DagNode]:
        return self._by_name

    def dependents(self) -> Mapping[str, tuple[str, ...]]:
        """Each node's direct dependents, in topological order."""
        out: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for node in self.nodes:
            for dep in node.deps:
                out[dep].append(node.name)
        return {name: tuple(users) for name, users in out.items()}

    def remaining_path(self) -> Mapping[str, float]:
        """For each node, the longest chain of work from its start to the end of the graph.

        This is the node's own work plus the longest remaining path of any dependent (the "bottom
        level" list schedulers order ready work by).
        """
        users = self.dependents()
        level: dict[str, float] = {}
        for node in reversed(self.nodes):
            level[node.name] = node.work + max((level[u] for u in users[node.name]), default=0.0)
        return level

    def critical_path(self) -> float:
        """The longest path through the graph, in work seconds at speed 1."""
        finish: dict[str, float] = {}
        for node in self.nodes:
            finish[node.name] = node.work + max((finish[d] for d in node.deps), default=0.0)
        return max(finish.values(), default=0.0)

    def total_work(self) -> float:
        return math.fsum(n.work for n in self.nodes)

    def lower_bound(self, speeds_and_slots: Iterable[tuple[float, int]]) -> float:
        """max(critical path / fastest speed, total work / total capacity) for these machines.

        Capacity is the sum of speed * slots; machines without slots add nothing and do not count
        as the fastest.
        """
        machines = [(speed, slots) for speed, slots in speeds_and_slots if slots > 0]
        if any(not math.isfinite(speed) or speed <= 0 for speed, _ in machines):
            raise ValueError("machine speeds must be positive and finite")
        if not machines:
            raise ValueError("a lower bound needs at least one machine with a slot")
        fastest = max(speed for speed, _ in machines)
        capacity = math.fsum(speed * slots for speed, slots in machines)
        return max(self.critical_path() / fastest, self.total_work() / capacity)


def _check_order(nodes: tuple[DagNode, ...], *, source: str) -> None:
    seen: set[str] = set()
    for node in nodes:
        _check_node(node, source=source)
        if node.name in seen:
            raise ConfigError(f"{source}: node {node.name!r}: duplicate name")
        for dep in node.deps:
            if dep not in seen:
                raise ConfigError(
                    f"{source}: node {node.name!r}: dependency {dep!r} is not an earlier node",
                    hint="use Dag.of(...) to sort nodes given in any order",
                )
        seen.add(node.name)


def _check_node(node: DagNode, *, source: str) -> None:
    where = f"{source}: node {node.name!r}"
    if not _NAME_RE.fullmatch(node.name) or node.name.endswith(".drv"):
        raise ConfigError(
            f"{where}: name must be 1-207 characters of A-Z a-z 0-9 + - . _ ? = "
            "and not start with '.' nor end in '.drv'",
            hint="a node is a derivation, and its name that derivation's name, as Nix takes it",
        )
    if not math.isfinite(node.work) or not 0 <= node.work <= MAX_WORK:
        raise ConfigError(
            f"{where}: work must be a finite number >= 0 (at most {MAX_WORK:g} s),"
            f" not {node.work!r}"
        )
    if len(set(node.deps)) != len(node.deps):
        raise ConfigError(f"{where}: a dependency is listed twice")
    if node.name in node.deps:
        raise ConfigError(f"{where}: depends on itself (dependency cycle)")
    for feature in node.features:
        if not _plain(feature):
            raise ConfigError(
                f"{where}: bad feature {feature!r}",
                hint="a feature is printable ASCII without spaces, ',', '+' or ':'",
            )
    if node.system is not None and not _plain(node.system):
        raise ConfigError(
            f"{where}: bad system {node.system!r}",
            hint="a system is printable ASCII without spaces, ',', '+' or ':' (x86_64-linux)",
        )


def _topological(nodes: tuple[DagNode, ...], *, source: str) -> tuple[DagNode, ...]:
    """Kahn's algorithm, keeping file order among nodes that are ready together."""
    by_name: dict[str, DagNode] = {}
    for node in nodes:
        _check_node(node, source=source)
        if node.name in by_name:
            raise ConfigError(f"{source}: node {node.name!r}: duplicate name")
        by_name[node.name] = node
    users: dict[str, list[int]] = {n.name: [] for n in nodes}
    missing = [0] * len(nodes)
    for i, node in enumerate(nodes):
        for dep in node.deps:
            if dep not in by_name:
                raise ConfigError(f"{source}: node {node.name!r}: unknown dependency {dep!r}")
            users[dep].append(i)
        missing[i] = len(node.deps)
    # Always taking the earliest ready node in file order keeps a file that is already
    # topologically sorted exactly as written.
    ready = [i for i, count in enumerate(missing) if count == 0]
    heapq.heapify(ready)
    order: list[DagNode] = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for user in users[node.name]:
            missing[user] -= 1
            if missing[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(nodes):
        raise ConfigError(f"{source}: {_describe_cycle(nodes, missing, by_name)}")
    return tuple(order)


def _describe_cycle(
    nodes: tuple[DagNode, ...], missing: list[int], by_name: Mapping[str, DagNode]
) -> str:
    """Name one cycle among the nodes Kahn's algorithm could not place."""
    stuck = {n.name for n, count in zip(nodes, missing, strict=True) if count > 0}
    # Every stuck node has a stuck dependency, so walking stuck deps must revisit a node.
    start = next(n.name for n in nodes if n.name in stuck)
    path: list[str] = []
    position: dict[str, int] = {}
    current = start
    while current not in position:
        position[current] = len(path)
        path.append(current)
        current = next(d for d in by_name[current].deps if d in stuck)
    cycle = [*path[position[current] :], current]
    return f"node {current!r}: dependency cycle {' -> '.join(cycle)}"


def _as_float(value: object, where: str) -> float:
    # bool is an int subclass; `"work": true` is a mistake, not 1 second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: work must be a number, not {json.dumps(value)}")
    try:
        return float(value)
    except OverflowError:  # an integer no float holds (JSON's have no bound): out of range
        return math.inf


def _as_strings(value: object, where: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings")
    return list(value)


def _parse_node(raw: object, index: int, source: str) -> DagNode:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: nodes[{index}]: must be an object, not {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str):
        raise ConfigError(f'{source}: nodes[{index}]: needs a string "name"')
    where = f"{source}: node {name!r}"
    unknown = sorted(set(raw) - _NODE_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}",
            hint="a node has name, work, deps, features and system",
        )
    if "work" not in raw:
        raise ConfigError(f'{where}: missing "work" (seconds at speed 1)')
    work = _as_float(raw["work"], where)
    deps = _as_strings(raw.get("deps", []), where, "deps")
    features = _as_strings(raw.get("features", []), where, "features")
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise ConfigError(f"{where}: system must be a string")
    if len(set(features)) != len(features):
        raise ConfigError(f"{where}: a feature is listed twice")
    return DagNode(name, work, tuple(deps), frozenset(features), system)


def parse_dag(data: object, *, source: str) -> Dag:
    """Validate decoded DAG JSON; errors are one-line ``ConfigError``s prefixed by ``source``."""
    if not isinstance(data, dict) or "nodes" not in data:
        raise ConfigError(f'{source}: expected an object with a "nodes" list')
    extra = sorted(set(data) - {"nodes"})
    if extra:
        raise ConfigError(f"{source}: unknown top-level key {extra[0]!r}")
    raw_nodes = data["nodes"]
    if not isinstance(raw_nodes, list):
        raise ConfigError(f'{source}: "nodes" must be a list')
    nodes = tuple(_parse_node(raw, i, source) for i, raw in enumerate(raw_nodes))
    return Dag.of(nodes, source=source)


# A DAG file is the one file a user names that is big when it is right: a build graph of
# 40,000 nodes (which `simulate` plans in seconds) is 4.5 MB of JSON. 64 MiB holds several
# hundred thousand nodes and still bounds what `simulate /dev/zero` reads.
MAX_DAG_BYTES = 64 << 20
_BIG_HINT = 'a DAG file is JSON: {"nodes": [{"name", "work", "deps"}, ...]}'
_FORM = (
    'a DAG file is {"nodes": [{"name": "a", "work": 1.5, "deps": []}, ...]}: see simulate --help'
)


def load_dag(path: Path) -> Dag:
    # Bounded in size and time, as every file a user names: `simulate /dev/zero` (or a FIFO
    # nobody writes to) hung the command for good.
    data = read_user_file(
        str(path), "DAG file", hint_big=_BIG_HINT, limit=MAX_DAG_BYTES, named=True
    )
    if data is None:
        raise ConfigError(
            f"{path}: cannot read DAG file: No such file or directory", hint="check the path"
        )
    try:
        text = data.decode("utf-8-sig")  # a byte order mark, as some editors write, is read past
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: byte {exc.start} is not UTF-8", hint="JSON files are UTF-8; save it as UTF-8"
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}", hint=_FORM) from exc
    except RecursionError as exc:  # the decoder recurses once per level of nesting
        raise ConfigError(f"{path}: JSON nested too deeply to be a DAG file", hint=_FORM) from exc
    except ValueError as exc:  # an integer of more than 4300 digits, Python's limit
        raise ConfigError(f"{path}: a number has too many digits", hint=_FORM) from exc
    try:
        return parse_dag(data, source=str(path))
    except ConfigError as exc:  # what is wrong, said by node: and the form it should have
        raise ConfigError(exc.message, hint=exc.hint or _FORM) from None


def dump_dag(dag: Dag) -> str:
    """The DAG as JSON text, one node per line; ``parse_dag`` reads it back to an equal Dag."""
    lines = []
    for node in dag.nodes:
        record: dict[str, object] = {"name": node.name, "work": node.work, "deps": list(node.deps)}
        if node.features:
            record["features"] = sorted(node.features)
        if node.system is not None:
            record["system"] = node.system
        lines.append("  " + json.dumps(record))
    body = ",\n".join(lines)
    return '{"nodes": [\n' + body + "\n]}\n" if lines else '{"nodes": []}\n'


# The builder script shared by every node. Builders run with an empty PATH, so every program is
# called by its full path; the speed file is bind-mounted per fleet member.
_SCRIPT = r"""
speed=1
if [ -r /etc/nix/offload-speed ]; then speed=$(/bin/cat /etc/nix/offload-speed); fi
secs=$(/usr/bin/awk -v w="$work" -v s="$speed" \
  'BEGIN { s += 0; if (s <= 0) s = 1; printf "%.3f", w / s }')
printf 'offload-dag: %s sleeps %s s (work %s, speed %s)\n' "$nodeName" "$secs" "$work" "$speed" >&2
/bin/sleep "$secs"
{
  printf 'node %s\n' "$nodeName"
  printf 'salt %s\n' "$salt"
  printf 'work %s\n' "$work"
  for d in $deps; do
    set -- $(/usr/bin/sha256sum "$d")
    printf 'dep %s %s\n' "$d" "$1"
  done
} > "$out"
"""


def _nix_string(text: str) -> str:
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("$", "\\$")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def to_nix_expression(
    dag: Dag,
    *,
    salt: str,
    system_expr: str = "builtins.currentSystem",
    wrap: tuple[str, str] = ("", ""),
) -> str:
    """A Nix expression for ``{ <name> = <derivation>; ... }``, one plain derivation per node
    (a list of them when a name is not one nix-build takes from a set: ``app-1.0``, ``0lib``).

    No nixpkgs: each derivation runs ``/bin/sh``. Dependencies are passed in the ``deps`` attribute,
    so they are the derivation's inputDrvs and their outputs' paths and hashes end up in its output.
    ``system_expr`` is a Nix expression for the default system; a node's ``system`` overrides it.
    ``wrap``: shell lines every builder runs before and after its work (the bench's stamps); the
    default leaves the script, and so every derivation's hash, as it always was.
    """
    ident = {node.name: f"n{i}" for i, node in enumerate(dag.nodes)}
    before, after = wrap
    script = f"{before}\n{_SCRIPT}\n{after}\n" if before or after else _SCRIPT
    lines = [
        "let",
        f"  system = {system_expr};",
        f"  salt = {_nix_string(salt)};",
        f"  script = {_nix_string(script)};",
    ]
    for node in dag.nodes:
        attrs = [
            f"name = {_nix_string(node.name)};",
            f"nodeName = {_nix_string(node.name)};",
            'builder = "/bin/sh";',
            'args = [ "-c" script ];',
            "system = " + (_nix_string(node.system) if node.system is not None else "system") + ";",
            "inherit salt;",
            f"work = {_nix_string(repr(node.work))};",
            "deps = [ " + " ".join(ident[d] for d in node.deps) + " ];",
        ]
        if node.features:
            features = " ".join(_nix_string(f) for f in sorted(node.features))
            attrs.append(f"requiredSystemFeatures = [ {features} ];")
        lines.append(f"  {ident[node.name]} = derivation {{ " + " ".join(attrs) + " };")
    if all(_ATTR_RE.fullmatch(node.name) for node in dag.nodes):
        lines.append("in {")
        lines.extend(f"  {_nix_string(node.name)} = {ident[node.name]};" for node in dag.nodes)
        lines.append("}")
    else:  # nix-build would skip the nodes a set cannot name: a list builds every one
        lines.append("in [ " + " ".join(ident[node.name] for node in dag.nodes) + " ]")
    return "\n".join(lines) + "\n"


def write_nix_file(dag: Dag, path: Path, salt: str) -> Path:
    path.write_text(to_nix_expression(dag, salt=salt), encoding="utf-8")
    return path
