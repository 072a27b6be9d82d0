"""``offload build`` over ``ssh-ng://`` against itself over ``ssh://``, in the same run (issue #17).

The fleet's machines file lists every member as ``ssh://`` (the serve protocol, ``nix-store
--serve --write``). Tool ``offload-ng`` is ``offload build`` with the same file rewritten to
``ssh-ng://`` URIs, so offload speaks Nix's worker protocol to ``nix-daemon --stdio`` on the same
members, keys and stores: the only difference between the two tools is the protocol. The bench
members' client key is unrestricted, so either command runs there.

Where: the trivial derivations (each build's fixed cost, nothing to hide it) and one graph,
``layered``: many builds whose inputs come from other members, so the protocols' differing
copies (serve's export/import against the daemon's NAR adds) and per-build round trips both show,
with enough parallelism to be typical; it is also the graph ``--quick`` builds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bench.context import Bench

NG_TOOL = "offload-ng"
NG_GRAPH = "layered"
# Both offload tools print the same --json events.
OFFLOAD_TOOLS = frozenset({"offload", NG_TOOL})

# A machines file's entries are separated by newlines or ';'; the URI is an entry's first field.
_SSH_URI = re.compile(r"(^|[;\n])([ \t]*)ssh://")


def ng_machines_text(text: str) -> str:
    """``text`` (a machines file) with its ``ssh://`` entries as ``ssh-ng://``, the rest as is."""
    return _SSH_URI.sub(r"\1\2ssh-ng://", text)


def with_ng(tools: Sequence[str], graph: str | None = None) -> tuple[str, ...]:
    """``tools`` with ``offload-ng`` right after ``offload`` (so the pair runs back to back) for
    the trivial derivations (``graph`` None) and the one graph it is measured on."""
    if graph is not None and graph != NG_GRAPH:
        return tuple(tools)
    out: list[str] = []
    for tool in tools:
        out.append(tool)
        if tool == "offload":
            out.append(NG_TOOL)
    return tuple(out)


def machines_arg(bench: Bench, tool: str) -> str:
    """``--builders`` for ``tool``: the fleet's machines file, or its ``ssh-ng://`` copy."""
    if tool != NG_TOOL:
        return f"@{bench.fleet.machines_file}"
    path = bench.work / "machines-ng"
    if not path.exists():
        text = bench.fleet.machines_file.read_text(encoding="utf-8")
        path.write_text(ng_machines_text(text), encoding="utf-8")
    return f"@{path}"
