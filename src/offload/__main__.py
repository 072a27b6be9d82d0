"""``python -m offload``: Ctrl-C, SIGTERM and SIGHUP are held while the CLI is imported, and
taken by its own handlers as it starts, as for the ``offload`` script (``bin/offload``)."""

import signal

before = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))

from offload.cli import interrupts, main  # noqa: E402 - after the signals are held

interrupts.held_before(before)  # those blocked by whoever started it stay blocked
raise SystemExit(main())
