"""`offload completion bash|zsh|fish` and `offload manpage`: both generated from the parser.

The argument parser is the one description of the command line, so the shell completions and
the man page are made from it at the moment they are asked for, by walking it into
a small model: each command (the top level, every subcommand, nested ones such as ``setup
key``) with its subcommands, options (flags, whether they take a value, their choices) and
help. Nothing is kept in the repository that could fall behind the parser, and no package is
needed beyond argparse. Install a completion once::

    offload completion bash > ~/.local/share/bash-completion/completions/offload
    offload completion zsh > ~/.zfunc/_offload     # a directory on $fpath
    offload completion fish > ~/.config/fish/completions/offload.fish
    offload manpage > ~/.local/share/man/man1/offload.1

Subcommands complete after their parents (each shell walks the words typed so far along the
known command paths, as argparse does), options after ``-``, an option's choices after it, a
positional argument's choices in its place, files after options that take one and in place of
positional arguments that are files, and a file after the ``@`` of a machines spec.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from offload.cli.arguments import doc_help

__all__ = ["Command", "Option", "bash", "fish", "register", "walk", "zsh"]


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    help: str
    takes_value: bool
    choices: tuple[str, ...]
    metavar: str

    @property
    def value(self) -> str:
        """What completes its value: "choices:A B", "files", "atfiles" (a file after an "@":
        a machines spec, ``--key @FILE``) or "none" (a name, a number, a spec of its own)."""
        if self.choices:
            return "choices:" + " ".join(self.choices)
        metavar = self.metavar.upper()
        if "@FILE" in metavar or (metavar == "SPEC" and "machines spec" in self.help):
            return "atfiles"
        files = ("FILE", "PATH", "DIR", "DRV", "LINK", "OUTPUT", "GRAPH", ".JSON")
        return "files" if any(word in metavar for word in files) else "none"


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]  # () for `offload` itself
    help: str  # one line, as in the parent's list
    description: str
    usage: str
    options: tuple[Option, ...]
    positionals: tuple[Option, ...]
    subcommands: tuple[Command, ...]

    def all(self) -> list[Command]:
        """This command and every command under it, parents first."""
        return [self, *(c for sub in self.subcommands for c in sub.all())]

    @property
    def words(self) -> list[str]:
        """What completes in place of an argument: its subcommands and its positional
        arguments' choices (``machines list|convert``, ``completion bash|zsh|fish``)."""
        subs = [s.path[-1] for s in self.subcommands]
        return subs + [choice for p in self.positionals for choice in p.choices]

    @property
    def takes_files(self) -> bool:
        """Whether files complete in place of an argument (``build FILE``, ``log DRV|PATH``):
        not where only subcommands, choices or names go."""
        return any(p.value in ("files", "atfiles") for p in self.positionals)


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    try:
        return " ".join((text % {**vars(action), "prog": prog}).split())
    except (KeyError, TypeError, ValueError):
        return " ".join(text.split())


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help: str = "") -> Command:  # noqa: A002
    options: list[Option] = []
    positionals: list[Option] = []
    subcommands: list[Command] = []
    for action in parser._actions:  # noqa: SLF001 - argparse has no public way to list them
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            helps = {a.dest: a.help or "" for a in action._choices_actions}  # noqa: SLF001
            for name, child in action.choices.items():
                subcommands.append(walk(child, (*path, name), helps.get(name, "")))
            continue
        choices = tuple(str(c) for c in action.choices or ())
        if isinstance(action.metavar, tuple):
            metavar = " ".join(action.metavar)
        else:
            metavar = action.metavar or action.dest.upper()
        option = Option(
            tuple(action.option_strings), _help(action, parser.prog), action.nargs != 0,
            choices, metavar,
        )  # fmt: skip
        (options if action.option_strings else positionals).append(option)
    return Command(
        path, help, parser.description or "", parser.format_usage().removeprefix("usage: "),
        tuple(options), tuple(positionals), tuple(subcommands),
    )  # fmt: skip


def _quote(text: str) -> str:
    """Single-quoted for sh, zsh and fish alike."""
    return "'" + text.replace("'", "'\\''") + "'"


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _key(command: Command) -> str:
    return "/" + "/".join(command.path) if command.path else ""


def bash(root: Command, name: str = "offload") -> str:
    """A bash completion: ``complete -F`` with a function walking the words typed so far."""
    commands = root.all()
    paths = "|".join(_key(c) for c in commands if c.path)
    lines = [
        f"# bash completion for {name}, generated by `{name} completion bash`",
        f"_{name}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local path="" word i words="" values="" files=no split=no',
        "    # bash's COMP_WORDBREAKS holds @ (5.1+): an @FILE is then two words, @ and FILE.",
        "    if [[ $prev == @ && $COMP_CWORD -ge 2 ]]; then",
        '        split=yes prev="${COMP_WORDS[COMP_CWORD-2]}"',
        "    fi",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        word="${COMP_WORDS[i]}"',
        f'        case "$path/$word" in {paths}) path="$path/$word" ;; esac',
        "    done",
        '    case "$path" in',
    ]
    for command in commands:
        words = command.words + [flag for o in command.options for flag in o.flags]
        lines.append(f'        "{_key(command)}")')
        lines.append(f"            words={_quote(' '.join(words))}")
        if command.takes_files:
            lines.append("            files=yes")
        for option in command.options:
            if option.takes_value:
                flags = "|".join(option.flags)
                lines.append(
                    f'            case "$prev" in {flags}) values={_quote(option.value)} ;; esac'
                )
        lines.append("            ;;")
    lines += [
        "    esac",
        "    if [[ $values == files ]]; then",
        '        COMPREPLY=($(compgen -f -- "$cur"))',
        "    elif [[ $values == atfiles ]]; then",
        "        COMPREPLY=()",
        '        if [[ $split == yes ]]; then COMPREPLY=($(compgen -P @ -f -- "$cur"))',
        '        elif [[ $cur == @* ]]; then COMPREPLY=($(compgen -P @ -f -- "${cur#@}")); fi',
        "    elif [[ $values == choices:* ]]; then",
        '        COMPREPLY=($(compgen -W "${values#choices:}" -- "$cur"))',
        "    elif [[ $values == none ]]; then",
        "        COMPREPLY=()",
        "    else",
        '        COMPREPLY=($(compgen -W "$words" -- "$cur"))',
        '        [[ $cur == -* || $files != yes ]] || COMPREPLY+=($(compgen -f -- "$cur"))',
        "    fi",
        "}",
        f"complete -o filenames -F _{name} {name}",
    ]
    return "\n".join(lines) + "\n"


def zsh(root: Command, name: str = "offload") -> str:
    """A zsh completion function (``#compdef``), with each word's help beside it."""
    commands = root.all()
    paths = "|".join(_key(c) for c in commands if c.path)
    lines = [
        f"#compdef {name}",
        f"# zsh completion for {name}, generated by `{name} completion zsh`",
        f"_{name}() {{",
        '    local cmdpath="" i values="" files=no',
        "    local -a subs opts",
        "    for ((i = 2; i < CURRENT; i++)); do",
        '        local word="${words[i]}"',
        f'        case "$cmdpath/$word" in ({paths}) cmdpath="$cmdpath/$word" ;; esac',
        "    done",
        '    case "$cmdpath" in',
    ]
    for command in commands:
        subs = [f"{s.path[-1]}:{s.help}" for s in command.subcommands]
        subs += [f"{choice}:{p.help}" for p in command.positionals for choice in p.choices]
        opts = [f"{flag}:{o.help}" for o in command.options for flag in o.flags]
        lines.append(f'        ("{_key(command)}")')
        lines.append(f"            subs=({' '.join(_quote(s) for s in subs)})")
        lines.append(f"            opts=({' '.join(_quote(o) for o in opts)})")
        if command.takes_files:
            lines.append("            files=yes")
        for option in command.options:
            if option.takes_value:
                flags = "|".join(option.flags)
                value = _quote(option.value)
                lines.append(
                    f'            case "${{words[CURRENT-1]}}" in ({flags}) values={value} ;; esac'
                )
        lines.append("            ;;")
    lines += [
        "    esac",
        "    if [[ $values == files ]]; then",
        "        _files",
        "    elif [[ $values == atfiles ]]; then",
        "        compset -P @ && _files",
        "    elif [[ $values == choices:* ]]; then",
        "        compadd -- ${=values#choices:}",
        "    elif [[ $values == none ]]; then",
        "        return 1",
        "    elif [[ ${words[CURRENT]} == -* ]]; then",
        "        _describe -t options option opts",
        "    else",
        "        if (( ${#subs} )); then _describe -t commands command subs; fi",
        "        if [[ $files == yes ]]; then _files; fi",
        "    fi",
        "}",
        # Autoloaded from $fpath it completes at once; sourced, it registers itself.
        "if [[ $zsh_eval_context[-1] == loadautofunc ]]; then",
        f'    _{name} "$@"',
        "else",
        f"    compdef _{name} {name}",
        "fi",
    ]
    return "\n".join(lines) + "\n"


def fish(root: Command, name: str = "offload") -> str:
    """fish ``complete`` lines, each guarded by the command path typed so far: a function
    walks the words as bash's does (``__fish_seen_subcommand_from`` matched a subcommand's
    name anywhere, an attribute named ``status`` too, and offered another command's options)."""
    commands = root.all()
    paths = " ".join(_key(c) for c in commands if c.path)
    lines = [
        f"# fish completion for {name}, generated by `{name} completion fish`",
        f"function __{name}_path",
        '    set -l path ""',
        "    for word in (commandline -opc)[2..-1]",
        f'        contains -- "$path/$word" {paths}; and set path "$path/$word"',
        "    end",
        '    echo "$path"',
        "end",
        # A machines spec's (or --key's) @FILE: files after the "@", the "@" kept.
        f"function __{name}_atfiles",
        "    set -l token (commandline -ct)",
        "    string match -q -- '@*' $token; or return",
        "    __fish_complete_path (string sub -s 2 -- $token) | string replace -r '^' @",
        "end",
    ]
    for command in commands:
        guard = _fish_quote(f'test (__{name}_path) = "{_key(command)}"')
        # Files only where an argument is one; choices and subcommands otherwise.
        lines.append(f"complete -c {name} -n {guard}" + ("" if command.takes_files else " -f"))
        lines.extend(
            f"complete -c {name} -f -n {guard} -a {sub.path[-1]} -d {_fish_quote(sub.help)}"
            for sub in command.subcommands
        )
        lines.extend(
            f"complete -c {name} -f -n {guard} -a {_fish_quote(choice)} -d {_fish_quote(p.help)}"
            for p in command.positionals
            for choice in p.choices
        )
        for option in command.options:
            words = [f"complete -c {name} -n {guard}"]
            words.extend(
                f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}"
                for flag in option.flags
            )
            if option.takes_value and option.choices:
                words.append(f"-x -a {_fish_quote(' '.join(option.choices))}")
            elif option.value == "atfiles":
                words.append(f"-x -a {_fish_quote(f'(__{name}_atfiles)')}")
            elif option.takes_value:
                words.append("-r -F" if option.value == "files" else "-x")
            words.append(f"-d {_fish_quote(option.help)}")
            lines.append(" ".join(words))
    return "\n".join(lines) + "\n"


SHELLS = {"bash": bash, "zsh": zsh, "fish": fish}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        description=doc_help(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("shell", choices=sorted(SHELLS), help="the shell to complete for")
    parser.set_defaults(func=run_completion)
    manpage = sub.add_parser(
        "manpage",
        help="print offload's man page (roff: `offload manpage | man -l -`)",
        description="Print the man page of offload and all its subcommands, made from the parser.",
    )
    manpage.set_defaults(func=run_manpage)


def run_completion(args: argparse.Namespace) -> int:
    from offload.cli import root_parser

    sys.stdout.write(SHELLS[args.shell](walk(root_parser())))
    return 0


def run_manpage(_args: argparse.Namespace) -> int:
    from offload import __version__
    from offload.cli import root_parser
    from offload.cli.manpage import manpage

    sys.stdout.write(manpage(walk(root_parser()), __version__))
    return 0
