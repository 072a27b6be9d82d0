"""A build's last log lines over ssh://, where its log is the serve session's stderr and its
result comes on stdout: each failed build's last line (printed right before it exits) is a
line of its own log, never lost and never given to the next build on the same session.

Before, ssh passing the result on before the last lines (it may: sshd sends a channel's stdout
before its stderr when it read both at once) lost them or gave them to the session's next
build: 10 and 11 of 320 such builds over 8 runs of 40 on the fleet's ``fast`` member. The
deterministic case is the executor's unit test (``late_stderr``); this is the real thing.
Real Nix, the real local fleet."""

from __future__ import annotations

from pathlib import Path

from offload.fleet import Fleet
from tests.helpers.nix_files import nix_file
from tests.helpers.offload_run import events, offload

BUILDS = 40


def test_every_failed_builds_last_line_is_in_its_own_log(fleet: Fleet, tmp_path: Path) -> None:
    body = " ".join(
        f'd{i} = mk "d{i}" "echo first; echo last-d{i}; exit 1" {{}};' for i in range(BUILDS)
    )
    file = nix_file(tmp_path, f"rec {{ {body} }}")
    for _ in range(2):
        done = offload(
            fleet, tmp_path, file, "--builders", f"@{fleet.machines_file}",
            "--on", "fast", "-j", "0", "--json", "-k", "--no-out-link", timeout=300,
        )  # fmt: skip
        assert done.returncode == 100, done.stderr
        said = sorted(
            (e["name"], e["line"]) for e in events(done.stdout) if e["event"] == "job_log"
        )
        wanted = [(f"d{i}", line) for i in range(BUILDS) for line in ("first", f"last-d{i}")]
        assert said == sorted(wanted)
