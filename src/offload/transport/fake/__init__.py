"""A scripted in-memory Nix store that speaks ``nix-store --serve --write`` (nix-protocols.md 2).

This is the test seam below the scheduler, shipped with the library like httpx's
``MockTransport`` (style.md guideline 2): executor tests run the real ``ServeClient`` against it,
with no processes, no ssh and no sleeps. It is also the server side of the protocol written out.

The model, one module each:

* ``paths``: a valid path (``FakePath``) is its references and its real NAR bytes.
* ``store``: ``FakeStore`` is one machine's store, shared by every session to that machine; it
  records what happened to it (builds run, paths received, builds interrupted).
* ``server``: a session is three one-way in-memory pipes, stdin, stdout and stderr as with a
  real ``nix-store`` child, and one server task answering as Nix 2.8 does. Its commands are in
  ``session_io`` (reading requests), ``transfer`` (moving paths) and ``builds`` (scripted
  builds: ``FakeBuild`` in, ``BuildOutcome`` out). With ``late_stderr`` a session's stderr
  comes out only right after its next reply, as ssh may pass a build's last log lines on after
  its result ("a round trip": only right before the reply after). ``cache`` and
  ``cache_says`` are a store's binary caches, for a substituting query.
* ``faults``: connections that drop at chosen points (``break_next``).
* ``link``: ``FakeLink`` is the executor's ``MemberLink`` (``offload.scheduler.run``) over one
  store: it opens sessions (at most ``max_sessions`` at once; more wait), cancels them, and
  simulates an unreachable host (``go_down``).
"""

from offload.transport.fake.builds import Builder, BuildOutcome, FakeBuild, default_outputs
from offload.transport.fake.faults import BreakPoint
from offload.transport.fake.link import FakeLink
from offload.transport.fake.paths import FakePath, nar_of_text, store_path
from offload.transport.fake.server import SERVER_VERSION, Server
from offload.transport.fake.store import FakeStore

__all__ = [
    "SERVER_VERSION",
    "BreakPoint",
    "BuildOutcome",
    "Builder",
    "FakeBuild",
    "FakeLink",
    "FakePath",
    "FakeStore",
    "default_outputs",
    "nar_of_text",
    "store_path",
]

# The server class under its name from when this was one module (tests patch its methods).
_Server = Server
