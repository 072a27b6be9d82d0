"""What offload-hook's coordinator keeps of its builder sessions (``offload.hook.links``)."""

from __future__ import annotations

import gc
from pathlib import Path

from offload.hook.links import BuilderLinks
from offload.protocol.client import ServeClient


def test_a_closed_sessions_answer_time_goes_with_it(tmp_path: Path) -> None:
    # Kept by a plain dict until the same session was lent again, which a session closed after
    # its linger or its turn never is: 12 KB each, one more every turn of every busy slot, for
    # a long-lived coordinator's life.
    links = BuilderLinks(tmp_path)
    session = ServeClient(None, None, name="b1")  # type: ignore[arg-type] # never used
    links._answered[session] = 1.0
    assert len(links._answered) == 1
    del session
    gc.collect()
    assert len(links._answered) == 0
