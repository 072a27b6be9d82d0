"""One name per builder of the pool: each line of the machines spec is a builder of its own.

A machine's name is offload.toml's ``name``, else ``default_name``: its ssh host, with
``:port`` when it is reached on a port other than 22 (``ssh://a`` is ``a``, ``ssh://a:2222`` is
``a:2222``). Everything offload keeps per builder is keyed by that name (backoff, history and
its estimates, the hook's loads, ``--on``/``--exclude``, tables and the live view), so here:

- lines to one host and port that differ in their user (a gateway that routes each user to
  a container of its own) are named ``user@host[:port]``, each one that gives a user; one
  without keeps the bare name. Only when two lines would share a name: a user in every name
  would rename every ``ssh://builder@host``, and what was kept under its name would be lost.
- lines that still share a name are one builder listed twice: the same URI again, or
  ``ssh://`` and ``ssh-ng://`` to one user, host and port (one sshd, one store, one set of
  cores, whose slots would count twice), or offload.toml gave two machines one name. The first
  is kept, and each later one left out with a line naming its file and line.

The port is in the name whatever the other lines say, so a builder has the same name in every
pool it is part of (``--builders``, Nix's ``builders`` setting the hook gets): otherwise a
run over ``ssh://a:2222`` alone would take ``ssh://a``'s backoff and history for its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from offload.config.machines import Machine, default_name, shown

__all__ = ["one_name_each"]


def _given(machine: Machine) -> bool:
    """offload.toml named it (a name that is not the default)."""
    return machine.name != default_name(machine.uri, port=machine.port)


def _with_user(machine: Machine) -> Machine:
    user = machine.user or ""
    return dataclasses.replace(machine, name=f"{shown(user, limit=len(user) * 4)}@{machine.name}")


def _users_apart(machines: Sequence[Machine]) -> list[Machine]:
    """Default-named lines that share a name but not a user: ``user@`` before each name."""
    users: dict[str, set[str | None]] = {}
    for machine in machines:
        if not _given(machine):
            users.setdefault(machine.name, set()).add(machine.user)
    apart = {name for name, found in users.items() if len(found) > 1}
    return [
        _with_user(m) if m.user is not None and m.name in apart and not _given(m) else m
        for m in machines
    ]


def one_name_each(machines: Sequence[Machine]) -> tuple[list[Machine], list[str]]:
    """The machines with a name each, in order, and a warning per line left out as another's
    repeat (``file:line: name: ...``)."""
    first: dict[str, Machine] = {}
    kept, warnings = [], []
    for machine in _users_apart(machines):
        other = first.setdefault(machine.name, machine)
        if other is machine:
            kept.append(machine)
            continue
        warnings.append(
            f"{machine.source}: {machine.name}: {shown(machine.uri)} has the name of "
            f"{other.source}'s {shown(other.uri)}: left out, as one builder listed twice "
            f"({_hint(machine, other)})"
        )
    return kept, warnings


def _hint(machine: Machine, other: Machine) -> str:
    """What to do: an offload.toml ``uri`` meant for a line with settings in its query
    (``ssh://a`` for ``ssh://a?ssh-key=...``) matches no line, so it defined a builder of its
    own, whose settings (tags, a name) would otherwise be lost without a word of why."""
    two = "if they are two, give one a name of its own: offload.toml [[machine]] uri, name"
    from_toml = machine.origin == "toml" and other.origin != "toml"
    if from_toml and machine.uri.split("?")[0] == other.uri.split("?")[0] != other.uri:
        return (
            f"an offload.toml uri matches a line only as a whole: to add to that builder, key "
            f'the table by uri = "{shown(other.uri)}" or by its host; {two}'
        )
    return two
