"""Machines printed back into Nix's machines format.

``format_machines`` writes a file that Nix 2.8 reads the same way: no blank or indented lines,
integer speed factors, and no ``:port`` (each dropped port is named in a comment; keep ports in
offload.toml or an ssh ``Host`` alias). With ``nix28=False`` it writes ports and fractional
speeds as they are, which newer Nix and offload read back exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

from offload.config.machines.host_key import decode_host_key, encode_host_key
from offload.config.machines.model import Machine, shown
from offload.config.machines.uri import TOML_PARAMS, with_settings
from offload.errors import ConfigError

__all__ = ["format_machine_line", "format_machines"]


def _check_token(value: str, what: str, machine: Machine, *, first: bool = False) -> str:
    # What the parser could never give back: blanks split columns, '#' and ';' end an entry,
    # and an entry's first word starting with '@' is an include (another column's may).
    if (
        not value
        or value == "-"
        or any(c in value for c in "#;\n\r\t ")
        or (first and value.startswith("@"))
    ):
        raise ConfigError(
            f"{machine.source}: {machine.name}: {what} '{shown(value)}' "
            "cannot go in a machines file",
            hint="values cannot be empty, '-', or hold blanks, '#' or ';' (nor a store URI "
            "start with '@')",
        )
    return value


def _list(values: Iterable[str], what: str, machine: Machine) -> str:
    items = [_check_token(v, what, machine) for v in values]
    for item in items:
        if "," in item:
            raise ConfigError(f"{machine.source}: {what} '{shown(item)}' cannot contain ','")
    return ",".join(items) if items else "-"


def _uri_without_port(machine: Machine) -> str:
    base, q, query = machine.uri.partition("?")
    scheme, _, authority = base.partition("://")
    user, at, hostport = authority.rpartition("@")
    host = machine.host or hostport
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{user}{at}{host}{q}{query}"


def _speed_text(speed: float, nix28: bool) -> str:
    if nix28:
        return str(max(1, round(speed)))
    return str(int(speed)) if speed.is_integer() else repr(speed)


def format_machine_line(machine: Machine, *, nix28: bool = True) -> tuple[str, list[str]]:
    """One entry line and the comment lines that explain what 2.8 could not be told."""
    notes: list[str] = []
    uri = machine.uri
    if nix28 and machine.port is not None:
        if machine.uri.startswith(("ssh://", "ssh-ng://")):
            uri = _uri_without_port(machine)
        notes.append(
            f"# offload: port {machine.port} of {shown(machine.host or machine.uri)} dropped: Nix "
            "2.8 cannot take host:port (use an ssh Host alias, or offload.toml [[machine]] port)"
        )
    if machine.port is not None and not nix28:
        # Written whatever the URI says: ":2222" is in "ssh://a:22222", and offload.toml's
        # port of a machine is over its URI's.
        uri = _uri_with_port(machine)
        if machine.port != 22 and (machine.public_host_key or machine.host_key_base64):
            notes.append(_port_pin_note(machine, machine.port))
    if nix28 and not float(machine.speed_factor).is_integer():
        notes.append(
            f"# offload: speed factor {machine.speed_factor:g} of {machine.name} written as "
            f"{_speed_text(machine.speed_factor, nix28=True)}: Nix 2.8 takes whole numbers only"
        )
    # offload.toml's compress and builders-use-substitutes, which its URI does not say.
    uri = with_settings(uri, machine.params, TOML_PARAMS)
    _check_token(uri, "store URI", machine, first=True)
    # "," is an empty list, which is not the same as '-' (the local system).
    systems = _list(machine.systems, "system", machine) if machine.systems else ","
    uri_key = machine.params.get("ssh-key")
    ssh_key = "-" if machine.ssh_key in (None, uri_key) else machine.ssh_key
    host_key = "-"
    if machine.public_host_key is not None:
        encoded = machine.params.get("base64-ssh-public-host-key")
        if encoded is None or _maybe_decode(encoded) != machine.public_host_key:
            host_key = encode_host_key(machine.public_host_key)
    elif machine.host_key_base64 not in (None, machine.params.get("base64-ssh-public-host-key")):
        host_key = _check_token(str(machine.host_key_base64), "host key", machine)
    columns = [
        uri,
        systems,
        _check_token(ssh_key, "ssh key", machine) if ssh_key != "-" else "-",
        str(machine.max_jobs),
        _speed_text(machine.speed_factor, nix28),
        _list(sorted(machine.supported_features), "feature", machine),
        _list(sorted(machine.mandatory_features), "feature", machine),
        host_key,
    ]
    while columns[-1] == "-":
        columns.pop()
    return " ".join(columns), notes


def _port_pin_note(machine: Machine, port: int) -> str:
    """Nix 2.31 and later write a line's pinned key under its host and pass ``-p``: ssh looks
    for ``[host]:port`` and finds no pin (offload pins it there, ``ssh.known_hosts_line``)."""
    host = shown(machine.host or machine.uri)
    return (
        f"# offload: Nix 2.31 and later pin the host key of {host} under '{host}' and connect "
        f"to port {port}, where ssh looks for '[{host}]:{port}' and refuses the host (offload "
        f"pins it there). For Nix: an ssh config entry Host {host} with Port {port} and "
        f"HostKeyAlias {host}, its own name (as offload setup client writes), and no port in "
        "the line"
    )


def _maybe_decode(text: str) -> str | None:
    try:
        return decode_host_key(text)
    except ValueError:
        return None


def _uri_with_port(machine: Machine) -> str:
    _, q, query = machine.uri.partition("?")
    host = f"[{machine.host}]" if machine.host and ":" in machine.host else machine.host
    user = f"{machine.user}@" if machine.user else ""
    return f"{machine.scheme}://{user}{host}:{machine.port}{q}{query}"


def format_machines(machines: Iterable[Machine], *, nix28: bool = True) -> str:
    """Print machines as a file Nix 2.8 reads the same way (``nix28=False``: exact, for newer Nix).

    With ``nix28`` a port is dropped from the URI and a fractional speed factor is rounded, each
    with a comment line saying so; those comments contain no ';' so 2.8 skips them whole.
    """
    lines: list[str] = []
    for machine in machines:
        line, notes = format_machine_line(machine, nix28=nix28)
        lines.extend(note.replace(";", ",") for note in notes)
        lines.append(line)
    return "".join(f"{line}\n" for line in lines)
