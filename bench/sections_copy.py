"""The copy section: a ~200 MB closure to one member, ``nix-copy-closure`` against offload's own
serve-protocol copy, with and without ssh compression, wire bytes from ssh's own totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import secrets
import shlex
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.context import Bench, Options, Save, log
from bench.measure import parse_ssh_transferred, run_timed
from offload.errors import OffloadError
from offload.fleet import Fleet
from offload.process import run


def _blob(path: Path, size: int, *, compressible: bool) -> None:
    """Random bytes, or text that compresses like a build log (about 3-4x)."""
    with path.open("wb") as out:
        written = 0
        counter = 0
        while written < size:
            if compressible:
                words = secrets.token_hex(8)
                chunk = "".join(
                    f"[{counter + i:08d}] building module {words[i % 16]}{i % 97} ok {words}\n"
                    for i in range(2048)
                ).encode()
                counter += 2048
            else:
                chunk = os.urandom(1 << 20)
            chunk = chunk[: size - written]
            out.write(chunk)
            written += len(chunk)


async def _offload_copy(
    fleet: Fleet, member: str, paths: Sequence[str], env: Mapping[str, str], compress: bool
) -> tuple[float, int]:
    from offload.config.machines import parse_machines
    from offload.scheduler.run import send_closure
    from offload.transport.sessions import open_lane, open_local_store, open_ssh_store
    from offload.transport.ssh import ssh_target

    # The member's target from its machines line, as ``offload build`` takes it (its systems
    # tell the cipher its master offers: offload.transport.ciphers).
    machines, _ = parse_machines(
        fleet.machines_file.read_text(), source="fleet", system=fleet.system
    )
    machine = next(m for m in machines if m.name == member)
    if compress:
        machine = dataclasses.replace(machine, params={**machine.params, "compress": "true"})
    target = ssh_target(machine)
    # As ``offload build`` copies to a builder with ``compress=true``: large uploads take a
    # second connection (``offload.protocol.lanes``).
    lane = functools.partial(open_lane, machine, env) if compress else None

    began = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        # Both sessions start at once, as a build opens its links while it reads the graph.
        opened = await asyncio.gather(
            stack.enter_async_context(open_local_store()),
            stack.enter_async_context(open_ssh_store(target, name=member, env=env)),
            return_exceptions=True,
        )
        for result in opened:
            if isinstance(result, BaseException):
                raise result
        src, dst = opened
        assert not isinstance(src, BaseException)
        assert not isinstance(dst, BaseException)
        moved = await send_closure(src, dst, paths, lane=lane)
    return time.monotonic() - began, moved


def copy_section(bench: Bench, opts: Options, save: Save) -> dict[str, Any]:
    member = bench.fleet.members[0].name
    data = bench.work / "closure"
    data.mkdir()
    total = opts.copy_mb * (1 << 20)
    files = []
    for i in range(4):
        path = data / f"offload-bench-blob-{i}-{secrets.token_hex(4)}"
        _blob(path, total // 4, compressible=i % 2 == 1)
        files.append(path)
    added = run(["nix-store", "--add", *map(str, files)], timeout=600).stdout.split()
    shutil.rmtree(data)
    section: dict[str, Any] = {
        "member": member,
        "paths": len(added),
        "bytes": total,
        "offload_copy": "offload.scheduler.run.send_closure over open_local_store/open_ssh_store, "
        "opened at once (what a build does to send its inputs: validity and closure queries, "
        "small paths as one export stream, large ones by pipelined AddToStoreNar; compressed, "
        "large paths over two connections, as for a builder with compress=true: "
        "offload.protocol.lanes)",
        "runs": [],
    }
    wrapper = _ssh_wrapper(bench.work)
    try:
        for rep in range(opts.reps):
            for compress in (False, True):
                for tool in ("nix", "offload"):
                    # The member must lack the paths each time; nothing roots them there.
                    run(
                        bench.fleet.ssh_argv(member, "nix-store", "--delete", *added),
                        check=False,
                        timeout=120,
                    )
                    env = dict(bench.env)
                    env["NIX_SSHOPTS"] = bench.fleet.sshopts + (" -C" if compress else "")
                    env["PATH"] = f"{wrapper.parent}:{env.get('PATH', '/usr/bin:/bin')}"
                    env["OFFLOAD_BENCH_SSH_LOG"] = str(wrapper.parent / "log")
                    log(f"copy {total >> 20} MiB: {tool} compress={compress} rep {rep + 1}")
                    record = _copy_once(
                        bench.fleet, member, paths=added, env=env, tool=tool, compress=compress
                    )
                    record["rep"] = rep
                    section["runs"].append(record)
                    log(f"  -> {record['status']} in {record['wall_s']:.1f} s")
                    save("copy", section)
    finally:
        # Ours, unrooted, and 200 MB: remove them from this machine's store again.
        run(["nix-store", "--delete", *added], check=False, timeout=300)
    return section


def _ssh_wrapper(work: Path) -> Path:
    """An ``ssh`` first on PATH that logs ssh's ``Transferred:`` line to a file per connection.

    Nix stops its ssh with SIGKILL, before ssh prints what it transferred. The wrapper does not
    exec: when Nix kills it, the real ssh lives on until its stdin closes, then logs its totals.
    Both tools go through the same wrapper (one extra shell per connection).
    """
    real = shutil.which("ssh") or "/usr/bin/ssh"
    wrapper = work / "sshwrap" / "ssh"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\n{shlex.quote(real)} -E "$OFFLOAD_BENCH_SSH_LOG.$$" -o LogLevel=VERBOSE "$@"\n',
        encoding="utf-8",
    )
    wrapper.chmod(0o755)
    return wrapper


def _wire_bytes(log_prefix: Path, timeout: float = 10.0) -> tuple[int, int] | None:
    """Sum the ssh logs of one copy once every ssh has written its totals; remove them."""
    deadline = time.monotonic() + timeout
    logs: list[Path] = []
    while True:
        logs = sorted(log_prefix.parent.glob(log_prefix.name + ".*"))
        texts = [p.read_text(errors="replace") for p in logs]
        # Only sessions that connected print totals (some ssh calls log nothing at all).
        connected = [t for t in texts if "Authenticated to" in t]
        if all("Transferred:" in t for t in connected) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    wire = parse_ssh_transferred(line for t in texts for line in t.splitlines())
    for path in logs:
        path.unlink(missing_ok=True)
    return (wire.sent, wire.received) if wire else None


def _copy_once(
    fleet: Fleet,
    member: str,
    *,
    paths: Sequence[str],
    env: Mapping[str, str],
    tool: str,
    compress: bool,
) -> dict[str, Any]:
    record: dict[str, Any] = {"tool": tool, "compress": compress}
    if tool == "nix":
        done = run_timed(["nix-copy-closure", "--to", member, *paths], env=env, timeout=600)
        ok = done.returncode == 0
        record.update(
            status="ok" if ok else ("timeout" if done.timed_out else "failed"),
            wall_s=round(done.elapsed, 3),
            error=None if ok else done.tail(),
        )
    else:
        try:
            elapsed, _ = asyncio.run(_offload_copy(fleet, member, paths, env, compress))
        except (OffloadError, OSError) as exc:
            record.update(status="failed", wall_s=0.0, error=str(exc))
        else:
            record.update(status="ok", wall_s=round(elapsed, 3), error=None)
    if record["status"] == "ok" and not all(fleet.store_has(member, p) for p in paths):
        record.update(status="failed", error="paths not valid on the member afterwards")
    wire = _wire_bytes(Path(env["OFFLOAD_BENCH_SSH_LOG"]))
    record["wire_sent"] = wire[0] if wire else None
    record["wire_received"] = wire[1] if wire else None
    return record
