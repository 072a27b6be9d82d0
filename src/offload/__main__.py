"""``python -m offload``: Ctrl-C, SIGTERM and SIGHUP are held while the CLI is imported, and
taken by its own handlers as it starts, as for the ``offload`` script (``bin/offload``)."""

# _signal, not signal: the interpreter loaded it as it started, so holding the three costs no
# import (signal.py's own, with enum, was the window where a Ctrl-C still printed a traceback).
from _signal import SIG_BLOCK, SIGHUP, SIGINT, SIGTERM, pthread_sigmask  # type: ignore[import-not-found]

before = pthread_sigmask(SIG_BLOCK, (SIGINT, SIGTERM, SIGHUP))

from offload.cli import interrupts, main  # noqa: E402 - after the signals are held

interrupts.held_before(before)  # those blocked by whoever started it stay blocked
raise SystemExit(main())
