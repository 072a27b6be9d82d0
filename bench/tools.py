"""How each tool builds a graph once, and what one build's raw result record holds.

The tools: "nix" (stock ``nix-build --builders`` with Nix's own hook), "hook" (the same
``nix-build`` with ``--option build-hook offload-hook``) and "offload" (``offload build``), all
given the fleet's machines file, and "offload-ng" (``offload build`` with that file's ``ssh://``
members as ``ssh-ng://``, bench/ng.py). A record is measured from outside the tool (wall time, store
growth on every member and here) as well as from what the tool reports; a build counts as "ok"
only if it exited 0, printed every output and every output arrived in this machine's store.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from pathlib import Path
from typing import Any

from bench.context import Bench
from bench.measure import (
    BuildAccount,
    StoreSnapshot,
    Timed,
    list_store,
    parse_nix_builds,
    parse_offload_events,
    received_bytes,
    run_timed,
    store_name,
)
from bench.ng import OFFLOAD_TOOLS, machines_arg
from offload.dagfile import Dag, to_nix_expression

HOST_STORE = Path(os.environ.get("NIX_STORE_DIR", "/nix/store"))
NO_SUBSTITUTES = ["--option", "substituters", "", "--option", "builders-use-substitutes", "false"]


def hook_path() -> str:
    """``offload-hook`` of this installation, for ``--option build-hook``."""
    return str(Path(sys.executable).with_name("offload-hook"))


def offload_argv() -> list[str]:
    exe = Path(sys.executable).with_name("offload")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "offload"]


def tool_argv(tool: str, nix_file: Path, machines: str, jobs: int) -> list[str]:
    """The command ``tool`` builds ``nix_file`` with, on the builders ``machines``."""
    if tool in OFFLOAD_TOOLS:
        argv = [*offload_argv(), "build", str(nix_file), "--builders", machines]
        return [*argv, "-j", str(jobs), "--no-out-link", "--json"]
    argv = ["nix-build", str(nix_file), "--builders", machines, "-j", str(jobs)]
    argv += ["--no-out-link", *NO_SUBSTITUTES]
    if tool == "hook":
        argv += ["--option", "build-hook", hook_path()]
    return argv


def build_once(
    bench: Bench,
    dag: Dag,
    *,
    tool: str,
    rep: int,
    label: str,
    jobs: int,
    timeout: float,
    builders: bool = True,
) -> dict[str, Any]:
    """Build ``dag`` once with ``tool`` (the module lists them); one raw result record."""
    salt = f"{label}-r{rep}-{tool}-{secrets.token_hex(4)}"
    nix_file = bench.work / f"{label}-r{rep}-{tool}.nix"
    nix_file.write_text(to_nix_expression(dag, salt=salt), encoding="utf-8")
    machines = machines_arg(bench, tool) if builders else ""
    argv = tool_argv(tool, nix_file, machines, jobs)
    names = {node.name for node in dag.nodes}
    before = StoreSnapshot.take(bench.stores)
    host_before = list_store(HOST_STORE, names)
    load = os.getloadavg()[0]
    done = run_timed(argv, env=bench.env, timeout=timeout)
    host_after = list_store(HOST_STORE, names)
    account = (
        parse_offload_events(done.stdout)
        if tool in OFFLOAD_TOOLS
        else parse_nix_builds(done.stderr, done.stdout)
    )
    sent, remote_outputs = before.growth(StoreSnapshot.take(bench.stores), account)
    # Salted outputs are new, so every node's output must have appeared in this machine's store.
    present = len({store_name(e) for e in host_after - host_before if not e.endswith(".drv")})
    status, error = _status(done, account, len(dag.nodes), present)
    record: dict[str, Any] = {
        "tool": tool,
        "rep": rep,
        "salt": salt,
        "argv": shlex.join(argv),
        "status": status,
        "exit_code": done.returncode,
        "wall_s": round(done.elapsed, 3),
        "loadavg_1m_before": round(load, 2),
        "builds": account.per_machine(),
        "built": len(account.built),
        "outputs": len(account.outputs),
        "outputs_present": present,
        # Outside measures, the same for both tools (file bytes, not NAR or wire bytes).
        "store_sent": sent,
        "store_remote_outputs": remote_outputs,
        "store_received": received_bytes(HOST_STORE, host_before, host_after, account),
        # What the tool itself reported (offload's events; stock Nix reports nothing).
        "bytes_sent": account.bytes_sent,
        "bytes_received": account.bytes_received,
        "run_s": None if account.run_s is None else round(account.run_s, 3),
        "error": error,
    }
    if account.bad_lines:
        record["non_json_lines"] = account.bad_lines
    nix_file.unlink(missing_ok=True)
    return record


def _status(done: Timed, account: BuildAccount, nodes: int, present: int) -> tuple[str, str | None]:
    if done.timed_out:
        return "timeout", f"stopped after {done.elapsed:.0f} s"
    if done.returncode != 0:
        return "failed", f"exit {done.returncode}: {done.tail()}"
    # Both tools print every output; a short list means something else was built (nix-build
    # silently skips top-level attributes whose names are not identifiers, for one).
    if len(account.outputs) != nodes:
        return "failed", f"exit 0 but {len(account.outputs)} outputs printed for {nodes} nodes"
    if present != nodes:
        return "failed", f"exit 0 but only {present} of {nodes} outputs are in the local store"
    return "ok", None
