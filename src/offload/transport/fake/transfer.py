"""The commands that move paths: their metadata and NARs in either direction.

2 QueryPathInfos    one record per valid path (invalid ones are skipped), then ``""``; narHash
                    is ``sha256:<nix32>``, ca is ``""`` and sigs are empty.
3 DumpStorePath     the NAR with no length prefix; an invalid path is an error.
4 ImportPaths       the export stream of section 3.2, checked and registered path by path.
9 AddToStoreNar     reads the header and exactly narSize bytes, then checks like Nix's
                    ``LocalStore::addToStore``, in its order: the NAR parses (``bad archive``),
                    its hash and size match (``hash mismatch importing path ...``), every
                    reference is valid (``path '...' is not valid``). Nix reads the whole NAR
                    before any check, and so does this. The path is registered only after all
                    of that; an already valid path is left as it is.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

from offload.errors import ProtocolError, StoreError
from offload.protocol.serve import EXPORT_MAGIC
from offload.protocol.wire import encode_int, encode_str, encode_strs, read_int, read_str, read_strs
from offload.store.nar import copy_nar
from offload.store.path import nix32_decode, nix32_encode
from offload.transport.fake.faults import Hangup, fatal
from offload.transport.fake.paths import FakePath, sorted_paths
from offload.transport.fake.session_io import SessionIO

__all__ = ["TransferCommands"]


def _parse_sha256(text: str) -> bytes:
    """Like Nix's ``Hash::parseAny(s, htSHA256)``: base16, nix32, base64 or SRI."""
    rest = text.removeprefix("sha256:")
    if rest.startswith("sha256-"):
        rest = rest.removeprefix("sha256-")
    try:
        if len(rest) == 64:
            return bytes.fromhex(rest)
        if len(rest) == 52:
            return nix32_decode(rest)
        if len(rest) == 44:
            return base64.b64decode(rest, validate=True)
    except (ValueError, StoreError) as exc:
        raise Hangup(f"error: invalid hash '{text}'") from exc
    raise Hangup(f"error: hash '{text}' has wrong length for hash type 'sha256'")


class TransferCommands(SessionIO):
    """QueryPathInfos, DumpStorePath, ImportPaths and AddToStoreNar on one session."""

    async def query_path_infos(self) -> None:
        out = []
        for path in sorted_paths(await self.read_paths()):
            fp = self.store.paths.get(path)
            if fp is None:
                continue
            out += [
                encode_str(path),
                encode_str(fp.deriver or ""),
                encode_strs(sorted_paths(fp.references)),
                encode_int(fp.nar_size),  # downloadSize: the NAR size, as 2.8 sends it
                encode_int(fp.nar_size),
            ]
            if self.minor >= 4:
                out += [encode_str(fp.nar_hash), encode_str(""), encode_strs([])]
        self.out.write(b"".join(out) + encode_str(""))

    async def dump_store_path(self) -> None:
        fp = self.valid(await self.read_path("the path to dump"))
        hangup = self.store._take_break("dump")  # noqa: SLF001
        if hangup is not None:
            self.out.write(fp.nar[: len(fp.nar) // 2])
            raise hangup
        self.out.write(fp.nar)

    async def add_to_store_nar(self) -> None:
        path = await self.read_path("the path")
        deriver = await read_str(self.inp, "the deriver")
        nar_hash = await read_str(self.inp, "the narHash")
        references = await self.read_paths("the references")
        await read_int(self.inp, "the registration time")
        nar_size = await read_int(self.inp, "the narSize")
        await read_int(self.inp, "ultimate")
        await read_strs(self.inp, "the signatures")
        await read_str(self.inp, "the ca")
        if deriver:
            self.check_path(deriver)
        expected = _parse_sha256(nar_hash)
        if nar_size == 0:
            raise fatal("narInfo is too old and missing the narSize field")
        hangup = self.store._take_break("add-to-store")  # noqa: SLF001
        if hangup is not None:
            await self.inp.readexactly(nar_size // 2)
            raise hangup
        try:
            nar = await self.inp.readexactly(nar_size)
        except asyncio.IncompleteReadError as exc:
            raise fatal("unexpected end-of-file") from exc
        fp = FakePath(path, tuple(references), nar, deriver or None)
        await self.register(fp, expected)
        self.out.write(encode_int(1))

    async def import_paths(self) -> None:
        while True:
            marker = await read_int(self.inp, "the export marker")
            if marker == 0:
                break
            if marker != 1:
                raise fatal("input doesn't look like something created by 'nix-store --export'")
            hangup = self.store._take_break("add-to-store")  # noqa: SLF001
            if hangup is not None:
                await self.inp.readexactly(8)
                raise hangup
            nar = bytearray()

            async def keep(chunk: bytes, nar: bytearray = nar) -> None:
                nar.extend(chunk)

            try:
                await copy_nar(self.inp, keep)
            except ProtocolError as exc:
                raise fatal(f"bad archive: {exc.message}") from exc
            if await read_int(self.inp, "the export magic") != EXPORT_MAGIC:
                raise fatal("Nix archive cannot be imported; wrong format")
            path = await self.read_path("the imported path")
            references = await self.read_paths("the references")
            deriver = await read_str(self.inp, "the deriver")
            if await read_int(self.inp, "the signature marker") == 1:
                await read_str(self.inp, "a legacy signature")
            if deriver:
                self.check_path(deriver)
            # The importer computes the hash itself, so there is nothing to compare it with.
            await self.register(FakePath(path, tuple(references), bytes(nar), deriver or None))
        self.out.write(encode_int(1))

    async def register(self, fp: FakePath, expected: bytes | None = None) -> None:
        if self.store.has(fp.path):
            return  # Nix leaves a valid path alone and discards the NAR sent for it.
        reader = asyncio.StreamReader()
        reader.feed_data(fp.nar)
        reader.feed_eof()
        try:
            stats = await copy_nar(reader)
        except ProtocolError as exc:
            raise fatal(f"bad archive: {exc.message}") from exc
        got = hashlib.sha256(fp.nar[: stats.size]).digest()
        if expected is not None and got != expected:
            raise fatal(
                f"hash mismatch importing path '{fp.path}';\n"
                f"  specified: sha256:{nix32_encode(expected)}\n"
                f"  got:       sha256:{nix32_encode(got)}"
            )
        if stats.size != fp.nar_size:
            raise fatal(
                f"size mismatch importing path '{fp.path}';\n"
                f"  specified: {fp.nar_size}\n  got:       {stats.size}"
            )
        for ref in fp.references:
            if ref != fp.path:
                self.valid(ref)
        self.store.paths[fp.path] = fp
        self.store.received.append(fp.path)
