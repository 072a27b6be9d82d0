"""Nix's words for a binary cache (substituter) it leaves out, read by version: the pure part
of ``build.caches``, with which ``offload build`` and ``offload-hook`` read Nix's lines.

Nix's words, the same in 2.8 and 2.18 but where said otherwise (its source, by version):
- ``unable to download '<cache>/nix-cache-info': <why>``: the cache could not be reached
  (filetransfer.cc). ``<why>`` is curl's ``<error> (<code>)``, to which 2.25 on add curl's
  error buffer, or ``HTTP error <code>`` (2.8: then ``('<status>')``). The lines
  before it are retries that may still succeed, not a fault: ``warning: error: unable to
  download ...; retrying in <n> ms`` up to 2.34.0, and from 2.34.1 without the ``error:``
  (``exc.message()``), ``warning: unable to download ...; retrying in <n> ms (attempt
  <i>/<n>)``, told apart by its ``; retrying``.
- ``'<cache>' does not appear to be a binary cache``: it answered, but has no
  ``nix-cache-info`` (http-binary-cache-store.cc).
- ``binary cache '<cache>' is for Nix stores with prefix '<dir>', not '<ours>'``
  (binary-cache-store.cc).
- ``disabling binary cache '<cache>' for <n> seconds``: it failed after it opened.
- An ``ssh://`` cache (legacy-ssh-store.cc) connects only when first asked for a path, and one
  that cannot be reached fails that query: ``cannot connect to '<host>'`` (after ssh's own
  line), or ``'nix-store --serve' protocol mismatch from '<host>'[, got '<what>']`` when
  something else answered. Nix names it by what follows ``ssh://`` up to 2.30 (``user@host``),
  by its host alone from 2.31 (``authority.host``): the cache is the substituter set with that
  host, else ``ssh://<host>``. Without ``--fallback`` that ends Nix (``error:``, exit 1, as
  nix-build): the run fails with it, and it is no cache left out (``build.nix_said`` does not
  pass it here). With it, Nix says it as an ``error:`` line per path asked and goes on.
- An ``s3://`` cache that cannot be reached fails to open (up to 2.32, the AWS SDK's):
  ``warning: AWS error fetching 'nix-cache-info': <why>``, 2.31 and 2.32 adding `` (request
  id: <id>)``. It names no bucket: the cache is the one ``s3://`` substituter set, else
  ``s3://``. From 2.33 S3 goes through Nix's own downloads, as ``https://`` (the first words).
Nix may colour its ``warning:`` prefix and its arguments: a line is read as a terminal would
show it (``sanitize``: no escape or control characters, which a builder's line could carry).

An HTTP error may quote the cache's response body (a short one, or HTML: filetransfer.cc's
``FileTransferError``): ``<words>\n\nresponse body:\n\n<body>``. Left out (``logWarning``,
error.cc's ``showErrorInfo``), every line after the first is indented as far as ``warning: ``
(a blank one not). A retry (2.34.1 on, ``warn("%s; retrying in %d ms (attempt %d/%d)")``)
prints the same words unindented, so its first line is the one a cache left out says, and its
``; retrying ...`` ends its last body line. So ``CacheLines`` reads lines as a block: an HTTP
error's first line is held until the block shows which it is, its end for a retry (dropped).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from offload.ui.term import sanitize

__all__ = ["CacheLines", "cache_fault"]

_UNREACHABLE = re.compile(
    r"warning: unable to download '(?P<cache>[^']+)/nix-cache-info': (?P<why>.+)"
)
_NOT_A_CACHE = re.compile(r"warning: '(?P<cache>[^']+)' does not appear to be a binary cache")
_OTHER_STORE = re.compile(
    r"warning: binary cache '(?P<cache>[^']+)' is for Nix stores with prefix '(?P<dir>[^']*)'"
)
_SSH_UNREACHABLE = re.compile(r"error: cannot connect to '(?P<host>[^']+)'")
_SSH_NOT_SERVE = re.compile(
    r"error: 'nix-store --serve' protocol mismatch from '(?P<host>[^']+)'(?:, got '(?P<got>.*)')?"
)
_S3_UNREACHABLE = re.compile(
    r"warning: AWS error fetching 'nix-cache-info': (?P<why>.+?)(?: \(request id: [^)]*\))?"
)
_DISABLED = re.compile(r"disabling binary cache '(?P<cache>[^']+)' for (?P<seconds>\d+) seconds")
# A retry's line (Nix 2.34.1 on: the same words, then ``; retrying in <n> ms (attempt ...)``).
_RETRY = re.compile(r"; retrying (?:from offset \d+ )?in \d+ ms")
# The words that start an HTTP error's quoted response body (filetransfer.cc).
_BODY = "response body:"
_HTTP = "it cannot be reached (HTTP error"
# Nix 2.25 on add curl's error buffer after ``<error> (<code>)``: it says the same again.
_CURL_CODE = re.compile(r"^(.*? \(\d+\)) .*$")


def cache_fault(line: str, substituters: Sequence[str] = ()) -> tuple[str, str] | None:
    """(the cache, why Nix left it out) when ``line`` is Nix saying it left a cache out;
    ``substituters`` are the caches that Nix was given, for the words that do not name one
    whole (``ssh://``, ``s3://``)."""
    line = sanitize(line).rstrip()  # a builder's bytes: its URL and why are shown, in --json too
    if found := _SSH_UNREACHABLE.fullmatch(line):
        return _ssh_cache(found["host"], substituters), "it cannot be reached over ssh"
    if found := _SSH_NOT_SERVE.fullmatch(line):
        got = f": it answered '{found['got']}'" if found["got"] else ""
        return _ssh_cache(
            found["host"], substituters
        ), f"it does not speak Nix's serve protocol{got}"
    if found := _S3_UNREACHABLE.fullmatch(line):
        s3 = [cache for cache in substituters if cache.startswith("s3://")]
        return (s3[0] if len(s3) == 1 else "s3://"), f"it cannot be reached ({found['why']})"
    if (found := _UNREACHABLE.fullmatch(line)) and not _RETRY.search(found["why"]):
        why = _CURL_CODE.sub(r"\1", found["why"])
        return found["cache"], f"it cannot be reached ({why})"
    if found := _NOT_A_CACHE.fullmatch(line):
        return found["cache"], "it does not appear to be a binary cache (it has no nix-cache-info)"
    if found := _OTHER_STORE.match(line):
        return found["cache"], f"it is for another store directory ({found['dir']})"
    if found := _DISABLED.fullmatch(line):
        return found["cache"], f"it failed, and Nix stopped using it for {found['seconds']} seconds"
    return None


def _ssh_cache(host: str, substituters: Sequence[str]) -> str:
    """The ``ssh://`` substituter Nix calls ``host``: ``user@host`` up to 2.30, the host alone
    (no user, no port) from 2.31."""
    for cache in substituters:
        if not cache.startswith("ssh://"):
            continue
        authority = cache.removeprefix("ssh://").split("?")[0].split("/")[0]
        bare = authority.rpartition("@")[2]
        if host in (authority, bare, bare.rpartition(":")[0]):
            return cache
    return f"ssh://{host}"


class CacheLines:
    """Nix's lines read one by one (``read``), each cache fault they say returned once its
    block shows it is one: an HTTP error on ``nix-cache-info`` (which may quote a response
    body) is held, then returned at the next line that is not its body's, dropped when the
    block ends with ``; retrying`` (a retry that may still succeed), returned by ``end`` when
    no line came after it."""

    def __init__(self, substituters: Sequence[str] = ()) -> None:
        self._substituters = substituters
        self._held: tuple[str, str] | None = None  # the fault its first line says
        self._lines = 0  # the held block's lines after its first
        self._retry = False  # the held block is a retry's (unindented body): dropped at its end

    def read(self, line: str) -> list[tuple[str, str]]:
        """The faults told as ``line`` comes (one held before it, and its own)."""
        if self._held is None:
            return self._read_first(line)
        went = self._go_on(sanitize(line).rstrip())
        if went == "on":
            return []
        if went == "told":  # a cache left out, the rest of whose block is no fault
            held, self._held, self._lines = self._held, None, 0
            return [held]
        return self._read_first(line)  # the held block ended before ``line``: told then

    def end(self) -> tuple[str, str] | None:
        """No line came after the last: a held cache left out is told (a retry's is not)."""
        held, retry, self._held, self._lines, self._retry = self._held, self._retry, None, 0, False
        return None if held is None or retry else held

    def _read_first(self, line: str) -> list[tuple[str, str]]:
        told = [held] if (held := self.end()) is not None else []
        fault = cache_fault(line, self._substituters)
        if fault is None:
            return told
        if fault[1].startswith(_HTTP) and _UNREACHABLE.fullmatch(sanitize(line).rstrip()):
            self._held = fault  # it may quote a body: its block tells what it is
            return told
        return [*told, fault]

    def _go_on(self, line: str) -> str:
        """Where ``line`` leaves the held block: "on" (it goes on), "told" (it is a cache left
        out: ``logWarning``'s indented block), "ended" (it ended before ``line``)."""
        self._lines += 1
        if self._retry:
            if _RETRY.search(line):  # the retry's last line: dropped with its block
                self._held, self._lines, self._retry = None, 0, False
            return "on"
        if self._lines == 1 and not line.strip():
            return "on"  # the blank line before "response body:"
        if self._lines == 2 and line == _BODY:  # unindented: ``warn``'s, a retry's
            self._retry = True
            return "on"
        if self._lines == 2 and line.strip() == _BODY:  # indented: ``logWarning``'s
            return "told"
        return "ended"
