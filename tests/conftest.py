"""Fixtures every test module sees: the plugins in tests/helpers that define them.

The suite may be started where SIGINT is ignored (a background job of a non-interactive shell,
as `make test &` is): every process it starts would inherit that, and the tests that press
Ctrl-C on offload would press it on a process that cannot hear it. Ctrl-C is put back to
Python's own handler here, so the processes the tests start get the default, as from a
terminal.

Hypothesis's per-example deadline (200 ms) is off for every property test: it times examples,
and on a loaded 2-core CI machine a slow example is the machine, not the code (the time
targets are `make bench`'s to check).
"""

import signal

from hypothesis import settings

pytest_plugins = ["tests.helpers.fleets"]

settings.register_profile("offload", deadline=None)
settings.load_profile("offload")

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
