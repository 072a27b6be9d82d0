"""Scripted builds: what a builder is given and returns, and the BuildDerivation command.

BuildDerivation decodes the BasicDerivation (section 2.5) and the BuildOptions for the client's
minor version (2.4), then, like Nix 2.8's ``Store::buildDerivation``: outputs all valid already
-> ``AlreadyValid`` (nothing runs); an input source missing -> ``MiscFailure`` with Nix's
``dependency '...' of '...' does not exist, and substitution is disabled`` (the serve command
disables substitution, and the goal's error becomes the result, not a dropped connection);
otherwise the store's ``builder`` runs. The default builder succeeds at once; each output
becomes a ``FakePath`` whose file names the derivation and the store and whose references are
the input sources. A scripted builder gets a ``FakeBuild`` (the decoded request and a ``log``
function writing to the session's stderr, so ``ServeClient.on_log`` sees the lines) and returns
a ``BuildOutcome``. It may await events the test controls; it is cancelled (it sees
``CancelledError``) when the client goes away or ``FakeLink.cancel`` stops the session, as a
remote build dies with its ssh connection. The reply has 2.8's layout: status, errorMsg, the
four minor >= 3 fields, then builtOutputs whatever the version (its DrvOutput ids use a made-up
hash, not the derivation's hash modulo). Build timeouts, log limits and repeats are not
enforced.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from offload.protocol.serve import BuildOptions, BuildStatus
from offload.protocol.wire import encode_int, encode_str, read_int
from offload.store.drv import Derivation, DerivationOutput
from offload.store.path import nix32_encode
from offload.transport.fake.faults import Hangup
from offload.transport.fake.paths import FakePath
from offload.transport.fake.session_io import SessionIO

if TYPE_CHECKING:
    from offload.transport.fake.store import FakeStore

__all__ = ["BuildCommands", "BuildOutcome", "Builder", "FakeBuild", "default_outputs"]


@dataclass(frozen=True)
class FakeBuild:
    """What a scripted builder is given: the BuildDerivation request as the server decoded it.

    ``drv`` is the BasicDerivation from the wire: no input derivations, and the input sources the
    client sent (build-remote sends the whole input closure).
    """

    drv_path: str
    drv: Derivation
    options: BuildOptions
    store: FakeStore
    log: Callable[[str], None] = field(repr=False)  # one line to the session's stderr


@dataclass(frozen=True)
class BuildOutcome:
    """What a builder returns; ``None`` from a builder means ``BuildOutcome()``, a success.

    ``outputs`` replaces the default outputs of a successful build (``default_outputs``).
    """

    status: BuildStatus = BuildStatus.BUILT
    error_msg: str = ""
    outputs: Mapping[str, FakePath] | None = None


Builder = Callable[[FakeBuild], Awaitable[BuildOutcome | None]]


def _output_path(build: FakeBuild, name: str) -> str:
    path = build.drv.outputs[name].path
    if path:
        return path
    # Floating and deferred outputs have no path yet; make up one that is stable per output.
    store_dir, _, base = build.drv_path.rpartition("/")
    digest = hashlib.sha256(f"{build.drv_path}!{name}".encode()).digest()[:20]
    suffix = "" if name == "out" else f"-{name}"
    return f"{store_dir}/{nix32_encode(digest)}-{base[33:].removesuffix('.drv')}{suffix}"


def default_outputs(build: FakeBuild) -> dict[str, FakePath]:
    """The outputs a successful default build creates: one small file each."""
    return {
        name: FakePath.from_text(
            _output_path(build, name),
            f"{name} of {build.drv_path}, built on {build.store.name}\n",
            references=build.drv.input_srcs,
            deriver=build.drv_path,
        )
        for name in build.drv.outputs
    }


async def _instant(_build: FakeBuild) -> BuildOutcome | None:
    return None


class BuildCommands(SessionIO):
    """BuildDerivation on one session, and the build it may leave running."""

    building: str | None = None  # the derivation whose builder is running
    stopped: str | None = None  # a build stopped because the session ended under it

    async def read_basic_derivation(self) -> Derivation:
        outputs: dict[str, DerivationOutput] = {}
        for _ in range(await read_int(self.inp, "the number of outputs")):
            name = await self.read_drv_str("an output name")
            path = await self.read_drv_str("an output path")
            algo = await self.read_drv_str("an output hash algorithm")
            hash_ = await self.read_drv_str("an output hash")
            outputs[name] = DerivationOutput(path=path, hash_algo=algo, hash=hash_)
        input_srcs = await self.read_paths("the input sources")
        platform = await self.read_drv_str("the platform")
        builder = await self.read_drv_str("the builder")
        args = [
            await self.read_drv_str("an argument")
            for _ in range(await read_int(self.inp, "the number of arguments"))
        ]
        env: dict[str, str] = {}
        for _ in range(await read_int(self.inp, "the number of environment variables")):
            key = await self.read_drv_str("an environment variable name")
            env[key] = await self.read_drv_str("an environment variable value")
        return Derivation.create(
            outputs=outputs,
            input_drvs={},
            input_srcs=input_srcs,
            platform=platform,
            builder=builder,
            args=args,
            env=env,
        )

    async def read_build_options(self) -> BuildOptions:
        # Exactly the fields the client's announced minor version implies (2.4).
        r, minor = self.inp, self.minor
        max_silent_time = await read_int(r, "maxSilentTime")
        build_timeout = await read_int(r, "buildTimeout")
        max_log_size = await read_int(r, "maxLogSize") if minor >= 2 else 0
        nr_repeats, enforce = 0, True
        if minor >= 3:
            nr_repeats = await read_int(r, "nrRepeats")
            enforce = bool(await read_int(r, "enforceDeterminism"))
        keep_failed = bool(await read_int(r, "keepFailed")) if minor >= 7 else False
        return BuildOptions(
            max_silent_time, build_timeout, max_log_size, nr_repeats, enforce, keep_failed
        )

    async def build_derivation(self) -> None:
        drv_path = await self.read_path("the derivation path")
        drv = await self.read_basic_derivation()
        options = await self.read_build_options()
        build = FakeBuild(drv_path, drv, options, self.store, self.log)
        outputs = {name: _output_path(build, name) for name in drv.outputs}
        if all(self.store.has(p) for p in outputs.values()):
            self.reply_build(drv_path, BuildStatus.ALREADY_VALID, outputs=outputs)
            return
        missing = [p for p in drv.input_srcs if not self.store.has(p)]
        if missing:
            msg = (
                f"dependency '{missing[0]}' of '{drv_path}' does not exist,"
                " and substitution is disabled"
            )
            self.reply_build(drv_path, BuildStatus.MISC_FAILURE, msg)
            return
        self.check_break("build-start")
        self.store.builds.append(drv_path)
        start = int(time.time())
        outcome = await self.run_builder(build)
        stop = int(time.time())
        if not outcome.status.succeeded:
            msg = outcome.error_msg
            self.reply_build(drv_path, outcome.status, msg, times_built=1, start=start, stop=stop)
            return
        made = default_outputs(build) if outcome.outputs is None else dict(outcome.outputs)
        for fp in made.values():
            self.store.paths[fp.path] = fp
        self.check_break("build-end")
        built = {name: fp.path for name, fp in made.items()}
        self.reply_build(
            drv_path,
            outcome.status,
            outcome.error_msg,
            times_built=1,
            start=start,
            stop=stop,
            outputs=built,
        )

    async def run_builder(self, build: FakeBuild) -> BuildOutcome:
        builder = self.store.builder or _instant
        task = asyncio.ensure_future(builder(build))
        # A client that goes away mid-build (EOF on stdin) stops the build, as a remote build
        # dies with its ssh connection. A well-behaved client sends nothing during a build.
        gone = asyncio.ensure_future(self.inp.read(1))
        self.building = build.drv_path
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                self.stop_build()
                raise Hangup(None if gone.result() == b"" else "error: input during a build")
            try:
                return task.result() or BuildOutcome()
            except Exception as exc:
                msg = f"error: fake builder for '{build.drv_path}' raised {exc!r}"
                raise Hangup(msg) from exc
        except asyncio.CancelledError:
            self.stop_build()
            raise
        finally:
            self.building = None
            task.cancel()
            gone.cancel()
            await asyncio.gather(task, gone, return_exceptions=True)

    def stop_build(self) -> None:
        if self.building is not None:
            self.stopped = self.building
            self.store.interrupted.append(self.building)

    def reply_build(
        self,
        drv_path: str,
        status: BuildStatus,
        error_msg: str = "",
        *,
        times_built: int = 0,
        start: int = 0,
        stop: int = 0,
        outputs: Mapping[str, str] | None = None,
    ) -> None:
        out = [encode_int(status), encode_str(error_msg)]
        if self.minor >= 3:
            out += [encode_int(times_built), encode_int(0), encode_int(start), encode_int(stop)]
        # 2.8 sends builtOutputs whatever the client announced (nix-protocols.md 2.6). The id
        # should carry the derivation's hash modulo; a stand-in hash is enough for clients.
        outputs = outputs or {}
        out.append(encode_int(len(outputs)))
        fake_hash = hashlib.sha256(drv_path.encode()).hexdigest()
        for name in sorted(outputs):
            drv_output = f"sha256:{fake_hash}!{name}"
            realisation = {
                "dependentRealisations": {},
                "id": drv_output,
                "outPath": outputs[name].rpartition("/")[2],
                "signatures": [],
            }
            out += [
                encode_str(drv_output),
                encode_str(json.dumps(realisation, separators=(",", ":"))),
            ]
        self.out.write(b"".join(out))
