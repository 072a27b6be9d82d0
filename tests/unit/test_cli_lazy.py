"""The parser imports the named subcommand's module alone: its imports are a run's first cost."""

from __future__ import annotations

import subprocess
import sys

import pytest

from offload.cli import _parser


def _commands(argv: list[str]) -> set[str]:
    sub = next(a for a in _parser(argv)._actions if a.dest == "command")
    assert sub.choices is not None
    return set(sub.choices)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["build", "-A", "x"], {"build"}),
        (["--debug", "status"], {"status"}),
        (["manpage"], {"completion", "manpage"}),
    ],
)
def test_a_named_subcommand_gets_its_parser_alone(argv, expected):
    assert _commands(argv) == expected


@pytest.mark.parametrize("argv", [[], ["--help"], ["--version"], ["buil"], ["-h", "build"]])
def test_help_version_or_no_known_subcommand_get_every_parser(argv):
    commands = _commands(argv)
    assert {"build", "doctor", "fleet", "demo", "completion", "manpage"} <= commands
    assert len(commands) == 15


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    code += "\nimport sys\nprint('\\n'.join(sys.modules))\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def test_offload_build_does_not_import_the_other_subcommands():
    loaded = _modules_after("from offload.cli import _parser\n_parser(['build', 'x.nix'])")
    assert "offload.cli.build" in loaded
    assert not {"offload.cli.demo", "offload.cli.doctor", "offload.cli.fleet"} & loaded


def test_offload_build_imports_neither_rich_nor_the_html_report_until_it_needs_them():
    # A run with --json or with stderr not a terminal never draws a table or writes a report.
    loaded = _modules_after("import offload.cli.build")
    assert "offload.cli.build" in loaded
    assert not {m for m in loaded if m.split(".")[0] == "rich" or m.startswith("offload.report")}


def test_offload_build_does_without_modules_it_has_no_use_for_in_a_run():
    # Each costs every run's start a few ms: typing_extensions (offload.typing_compat), tomllib
    # and datetime (only with an offload.toml), platform (os.uname) and uuid (which imports it),
    # the daemon's protocol (only for ssh-ng:// builders).
    loaded = _modules_after(
        "from offload.cli import _parser\n_parser(['build', 'x.nix'])\n"
        "import offload.cli.build_exec, offload.build.run"
    )
    assert "offload.scheduler.run.executor" in loaded
    assert not {"typing_extensions", "tomllib", "platform", "uuid", "offload.protocol.worker"} & (
        loaded
    )


def test_offload_hook_starts_without_typing_or_re():
    # Nix starts offload-hook once per derivation it sends away, and waits for it: typing (and
    # the re, enum, functools it imports) cost each one about 3 ms, for an annotation.
    loaded = _modules_after("import offload.hook")
    assert "offload.hook.client" in loaded
    assert not {"typing", "re", "subprocess", "offload.hook.stopped"} & loaded
