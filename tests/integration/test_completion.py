"""Shell completions and the man page, made from the parser, loaded by the real programs.

bash, zsh and fish each load the script ``offload completion SHELL`` prints and complete
subcommands (nested ones too), options and an option's choices with it; ``man -l`` renders
``offload manpage`` and groff finds nothing to warn about. The zsh test calls the completion
function with zsh's completion builtins replaced by functions that print what they are given
(completing for real needs a terminal's line editor); bash and fish complete for real, and bash
once more in a terminal (tmux), where readline splits the line its own way.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from offload.cli import root_parser
from offload.cli.completion import walk
from tests.helpers.tmux import tmux_pane

SUBCOMMANDS = {"build", "use", "hook", "setup", "machines", "doctor", "status", "simulate"}


def offload(*args: str) -> str:
    argv = [sys.executable, "-m", "offload", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def shell(argv: list[str], cwd: Path) -> list[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=cwd)
    assert done.stderr == ""
    return done.stdout.split("\n")[:-1]


def test_the_model_has_every_command_and_option():
    root = walk(root_parser())
    paths = {" ".join(c.path) for c in root.all()}
    assert SUBCOMMANDS | {"setup key", "setup client", "fleet up", "completion", "manpage"} <= paths
    build = next(c for c in root.all() if c.path == ("build",))
    flags = {flag for option in build.options for flag in option.flags}
    assert {"-A", "--attr", "--keep-going", "--builders", "--json"} <= flags
    simulate = next(c for c in root.all() if c.path == ("simulate",))
    (policy,) = [o for o in simulate.options if "--policy" in o.flags]
    assert policy.value == "choices:offload nix"


def bash_complete(script: Path, cwd: Path, *words: str) -> set[str]:
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
        '_offload; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    return set(shell(["bash", "--norc", "-c", program], cwd)) - {""}


def test_bash_completes_subcommands_options_and_choices(tmp_path):
    script = tmp_path / "offload.bash"
    script.write_text(offload("completion", "bash"))
    empty = tmp_path / "empty"  # no files for the file completions to add
    empty.mkdir()
    assert bash_complete(script, empty, "offload", "") >= SUBCOMMANDS
    assert bash_complete(script, empty, "offload", "bu") == {"build"}
    assert bash_complete(script, empty, "offload", "setup", "") == {
        "key", "builder", "client", "-h", "--help"
    }  # fmt: skip
    assert bash_complete(script, empty, "offload", "build", "--keep-g") == {"--keep-going"}
    assert bash_complete(script, empty, "offload", "simulate", "--policy", "") == {"nix", "offload"}
    assert bash_complete(script, empty, "offload", "build", "-A", "") == set()  # a name: none
    (empty / "default.nix").touch()
    assert bash_complete(script, empty, "offload", "build", "--config", "") == {"default.nix"}
    # Positional choices, files only where an argument is one, a machines spec's @FILE
    # (tester: `completion <TAB>` and `machines <TAB>` listed files, `--graph` none).
    assert bash_complete(script, empty, "offload", "completion", "") >= {"bash", "fish", "zsh"}
    assert {"list", "convert"} <= bash_complete(script, empty, "offload", "machines", "")
    assert "default.nix" not in bash_complete(script, empty, "offload", "")
    assert "default.nix" not in bash_complete(script, empty, "offload", "use", "")
    assert "default.nix" in bash_complete(script, empty, "offload", "build", "")
    assert bash_complete(script, empty, "offload", "demo", "--graph", "") == {"default.nix"}
    assert bash_complete(script, empty, "offload", "simulate", "--machines", "") == set()
    assert bash_complete(script, empty, "offload", "build", "--builders", "@de") == {"@default.nix"}
    # bash 5.2 breaks COMP_WORDS at "@": `--builders @de` is "@", "de" (a review: nothing),
    # while readline replaces the whole "@de" with the reply (seen in a terminal).
    assert bash_complete(script, empty, "offload", "build", "--builders", "@", "de") == {
        "@default.nix"
    }
    assert bash_complete(script, empty, "offload", "setup", "builder", "--key", "@", "") == {
        "@default.nix"
    }
    assert bash_complete(script, empty, "offload", "build", "--builders", "@") == {"@default.nix"}
    registered = shell(["bash", "--norc", "-c", f"source {script}; complete -p offload"], empty)
    assert registered == ["complete -o filenames -F _offload offload"]


def test_bash_in_a_terminal_completes_a_machines_specs_at_file(tmp_path):
    # bash 5.2 breaks COMP_WORDS at "@" and readline then replaces "@de" whole: a reply
    # without the "@" dropped it from the line (a review; the test above types no line).
    script = tmp_path / "offload.bash"
    script.write_text(offload("completion", "bash"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "default.nix").touch()
    completed = re.compile(r"--builders \\?@default\.nix$")
    with tmux_pane() as pane:
        command = f"cd {shlex.quote(str(work))} && exec bash --norc --noprofile"
        pane.start(command, {**os.environ, "PS1": "$ "})
        pane.tmux("send-keys", "-t", "view", f"source {shlex.quote(str(script))}", "Enter")
        pane.tmux("send-keys", "-t", "view", "offload build --builders @de", "Tab")
        pane.wait(lambda ls: any(completed.search(line) for line in ls), "@default.nix")


def test_zsh_loads_and_completes(tmp_path):
    script = tmp_path / "_offload"
    script.write_text(offload("completion", "zsh"))
    mocks = (
        "_describe() { local a=${@[-1]}; print -rl -- ${(P)a} }; "
        "_files() { print -r -- FILES }; "
        'compadd() { [[ $1 == -- ]] && shift; print -rl -- "$@" }; '
        "compdef() { print -r -- compdef $@ }; "
    )

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        program = f"{mocks} source {script}; words=({line}); CURRENT={len(words)}; _offload"
        return shell(["zsh", "-f", "-c", program], tmp_path)

    first = complete("offload", "")
    assert first[0] == "compdef _offload offload"  # sourced: it registers itself
    names = {line.split(":")[0] for line in first[1:]}
    assert names >= SUBCOMMANDS
    assert "build:build derivations like nix-build, over the whole pool" in first
    assert "FILES" not in first  # only subcommands go there
    assert "FILES" in complete("offload", "build", "")
    assert {"bash", "fish", "zsh"} <= {
        x.split(":")[0] for x in complete("offload", "completion", "")
    }
    assert {"key", "builder", "client"} <= {
        x.split(":")[0] for x in complete("offload", "setup", "")
    }
    keep = [x for x in complete("offload", "build", "--k") if x.startswith("--keep-going:")]
    assert keep == ["--keep-going:go on with what does not depend on a failure"]
    assert complete("offload", "simulate", "--policy", "")[1:] == ["offload", "nix"]


def test_fish_loads_and_completes(tmp_path):
    script = tmp_path / "offload.fish"
    script.write_text(offload("completion", "fish"))

    def complete(line: str) -> set[str]:
        program = f"source {script}; complete -C '{line}'"
        return {entry.split("\t")[0] for entry in shell(["fish", "-N", "-c", program], tmp_path)}

    assert complete("offload ") >= SUBCOMMANDS
    assert complete("offload bu") == {"build"}
    assert complete("offload setup ") == {"key", "builder", "client"}
    assert "--keep-going" in complete("offload build --ke")
    assert complete("offload simulate --policy ") == {"nix", "offload"}
    # Another command's options were offered wherever its name was typed: `fleet machines`
    # got the top-level machines' (tester), `build -A status` status's; and every command got
    # the top level's --traceback.
    assert complete("offload fleet machines --") == {"--dir", "--help"}
    assert complete("offload build -A status --wat") == set()
    assert complete("offload fleet up --tra") == set()
    assert complete("offload completion ") == {"bash", "fish", "zsh"}
    assert complete("offload machines ") == {"list", "convert"}
    (tmp_path / "default.nix").touch()
    assert "default.nix" not in complete("offload use ")
    assert "default.nix" in complete("offload build ")
    # A machines spec's @FILE: files after the "@" (review: none, or bare files without it).
    assert complete("offload build --builders @de") == {"@default.nix"}
    assert complete("offload build --builders ") == set()


def test_man_page_renders_with_every_command(tmp_path):
    page = tmp_path / "offload.1"
    page.write_text(offload("manpage"))
    checked = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (checked.returncode, checked.stderr) == (0, "")
    env = {"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    shown = subprocess.run(
        ["man", "-l", str(page)], capture_output=True, text=True, check=True, env=env
    ).stdout
    lines = shown.splitlines()
    assert lines[0].split() == ["OFFLOAD(1)", "User", "Commands", "OFFLOAD(1)"]
    headings = {
        line.strip() for line in lines if line.startswith("   ") and not line.startswith("    ")
    }
    assert {"build", "setup key", "fleet up", "completion", "manpage"} <= headings
    assert "--keep-going" in shown  # hyphens as ASCII, searchable
    assert "EXIT STATUS" in lines
