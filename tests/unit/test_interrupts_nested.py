"""``cli.interrupts``: a signal handled inside the first signal's handler, before that one
noted its own (Python checks for signals between any two bytecodes, a handler's first too):
the status is still the first one's. In a fresh interpreter, as the rule swaps the handlers
of the process it is installed in."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

# The second signal's handler is run as Python runs it then: from the first handler's frame
# before its first line (the profile hook's "call" event), the frame passed as the one it
# interrupted. Both are real handlers installed by the rule; the first is a real signal.
_SCRIPT = """
import signal, sys
from offload.cli import interrupts
interrupts.install()
first, second = (getattr(signal, name) for name in sys.argv[1:3])
def inside(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "_first":
        sys.setprofile(None)
        signal.getsignal(second)(second, frame)
try:
    sys.setprofile(inside)
    signal.raise_signal(first)
except KeyboardInterrupt:
    print(interrupts.stopped_status(), signal.getsignal(second).__name__)
"""


@pytest.mark.parametrize(
    ("first", "second"), [("SIGINT", "SIGTERM"), ("SIGTERM", "SIGINT"), ("SIGHUP", "SIGTERM")]
)
def test_a_signal_handled_inside_the_first_ones_handler_keeps_the_first_ones_status(
    first: str, second: str
) -> None:
    """It was the second's: a Ctrl-C and a SIGTERM a moment apart exited 143 (seen in CI)."""
    shown = subprocess.run(
        [sys.executable, "-c", _SCRIPT, first, second],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    number = {"SIGINT": 2, "SIGTERM": 15, "SIGHUP": 1}[first]
    assert shown.stdout.split() == [str(128 + number), "_ignored"], shown.stderr


# The first signal lands in a weakref's callback (as in the import system's module lock, seen
# in CI: a Ctrl-C 75 ms into `offload machines`); Python cannot pass the exception on there.
_LOST = """
import signal, sys, time, weakref
from offload.cli import interrupts
interrupts.install()
class Held: pass
held = Held()
def callback(_):
    signal.raise_signal(signal.SIGTERM)  # handled here, inside the callback
ref = weakref.ref(held, callback)
try:
    del held
    time.sleep(30)  # where the command goes on: the interrupt ends it at once
    print("went on")
except KeyboardInterrupt:
    print("stopped", interrupts.stopped_status(), signal.getsignal(signal.SIGINT).__name__)
"""


def test_a_first_signal_lost_in_a_callback_still_stops_the_command_without_a_traceback() -> None:
    """Python printed "Exception ignored in ... KeyboardInterrupt" with its traceback, and
    the command went on as if no signal had come."""
    shown = subprocess.run(
        [sys.executable, "-c", _LOST], capture_output=True, text=True, check=True, timeout=60
    )
    assert shown.stdout.split() == ["stopped", "143", "_ignored"]
    assert shown.stderr == ""


def test_an_interrupt_wrapped_while_the_parser_is_imported_is_an_interruption(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A Ctrl-C as `class MachinesReading` was made (dataclass fields): Python 3.11 raised
    # "RuntimeError: Error calling __set_name__ ...", and a traceback ended the command.
    from offload import cli
    from offload.cli import interrupts

    def stopped_while_importing(_argv: object) -> int:
        interrupts._first(2, None)
        raise AssertionError("unreachable")

    def wrapped(_argv: object) -> int:
        try:
            stopped_while_importing(_argv)
        except KeyboardInterrupt as exc:
            message = "Error calling __set_name__ on 'Field' instance 'machines'"
            raise RuntimeError(message) from exc
        return 0

    monkeypatch.setattr(cli, "_dispatch", wrapped)
    try:
        assert cli.main(["machines"]) == 130
    finally:
        interrupts.reset()
        for signum in (2, 15, 1):
            signal.signal(signum, signal.default_int_handler if signum == 2 else signal.SIG_DFL)
    assert capsys.readouterr().err == "error: interrupted\n"
