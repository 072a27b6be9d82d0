"""What a builder says is shown, never obeyed: its escape sequences do not reach the terminal.

A builder's words reach the user in a machine event's message (ssh's and its Nix's stderr when it
cannot be used). A builder that puts terminal escape sequences there (colours, a hyperlink or a
clipboard write as OSC 8/52, a carriage return to overwrite the line before) has them shown as
text stripped of every control, on every line offload writes for it: the plain renderer's line
and the ``warning:`` on stderr alike.
"""

from __future__ import annotations

from pathlib import Path

from offload.fleet import Fleet
from tests.helpers.fleets import member_line
from tests.helpers.nix_files import nix_file, out_path, valid_locally
from tests.helpers.offload_run import offload

# Printed by the builder's "Nix" on stderr before it exits: a red word, a clipboard write (OSC
# 52), a hyperlink (OSC 8), a carriage return over a fake line, a bell.
HOSTILE = (
    r"\033[31mred\033[0m \033]52;c;cm0gLXJmIH4K\007clip "
    r"\033]8;;http://evil.invalid/\033\\link\033]8;;\033\\ fake-ok\rhidden-over \007bell"
)


def _hostile_program(tmp_path: Path) -> Path:
    program = tmp_path / "nix-store-hostile"
    program.write_text(f"#!/bin/sh\nprintf '{HOSTILE}\\n' >&2\nexit 1\n")
    program.chmod(0o755)
    return program


def _hostile_machines(fleet: Fleet, tmp_path: Path) -> Path:
    """A machines file whose one builder, ``fast``, runs the hostile program as its Nix."""
    program = _hostile_program(tmp_path)
    cols = member_line(fleet, "fast").split()
    cols[0] = f"{cols[0]}{'&' if '?' in cols[0] else '?'}remote-program={program}"
    machines = tmp_path / "machines"
    machines.write_text(" ".join(cols) + "\n")
    return machines


def _shown_clean(said: list[str]) -> None:
    """Each line of the builder's words: its text kept, no escape or control character."""
    for line in said:
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line), repr(line)
        assert "red clip link" in line, repr(line)


def test_a_builder_s_escape_sequences_never_reach_the_terminal(
    fleet: Fleet, tmp_path: Path
) -> None:
    machines = _hostile_machines(fleet, tmp_path)
    file = nix_file(tmp_path, '{ calm = mk "calm" "echo calm > $out" {}; }\n')
    # Its only builder cannot be used: the run builds here, and says why on stderr (plain lines,
    # stderr being no terminal).
    args = (file, "-A", "calm", "--builders", f"@{machines}", "--no-out-link")
    done = offload(fleet, tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert valid_locally(out_path(file, "calm"))
    said = [line for line in done.stderr.splitlines() if "bell" in line]
    assert len(said) >= 2, done.stderr  # the plain line and the warning
    _shown_clean(said)


def test_a_dry_runs_warning_shows_a_builder_s_words_without_their_escapes(
    fleet: Fleet, tmp_path: Path
) -> None:
    machines = _hostile_machines(fleet, tmp_path)
    file = nix_file(tmp_path, '{ calm = mk "calm-dry" "echo calm > $out" {}; }\n')
    args = (file, "-A", "calm", "--builders", f"@{machines}", "--dry-run")
    done = offload(fleet, tmp_path, *args)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "bell" in line]
    assert said, done.stderr  # the builder left out of the plan, with its words
    _shown_clean(said)
