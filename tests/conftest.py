"""Fixtures every test module sees: the plugins in tests/helpers that define them.

The suite may be started where SIGINT is ignored (a background job of a non-interactive shell,
as `make test &` is): every process it starts would inherit that, and the tests that press
Ctrl-C on offload would press it on a process that cannot hear it. Ctrl-C is put back to
Python's own handler here, so the processes the tests start get the default, as from a
terminal.

Each test has build logs of its own: ``NIX_LOG_DIR`` names a fresh directory, where the Nix
processes it starts write their logs and where offload reads how long a name took
(``offload.history.nix_logs``), so no test's estimates come from another test's builds, nor
from whatever this machine built before.

Hypothesis's per-example deadline (200 ms) is off for every property test: it times examples,
and on a loaded 2-core CI machine a slow example is the machine, not the code (the time
targets are `make bench`'s to check).
"""

import signal
from pathlib import Path

import pytest
from hypothesis import settings

pytest_plugins = ["tests.helpers.fleets", "tests.helpers.workers"]

settings.register_profile("offload", deadline=None)
settings.load_profile("offload")

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _nix_logs_of_the_test(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """This test's ``NIX_LOG_DIR`` (module docstring)."""
    logs = tmp_path_factory.mktemp("nix-log")
    monkeypatch.setenv("NIX_LOG_DIR", str(logs))
    return logs
