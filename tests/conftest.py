"""Fixtures every test module sees: the plugins in tests/helpers that define them.

The suite may be started where SIGINT is ignored (a background job of a non-interactive shell,
as `make test &` is): every process it starts would inherit that, and the tests that press
Ctrl-C on offload would press it on a process that cannot hear it. Ctrl-C is put back to
Python's own handler here, so the processes the tests start get the default, as from a
terminal.
"""

import signal

pytest_plugins = ["tests.helpers.fleets"]

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
