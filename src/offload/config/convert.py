"""The pool in the three forms users keep it in: Nix's machines file (``config.machines``), a
NixOS ``nix.buildMachines`` list (read from ``nix-instantiate --eval --json``'s output, written as
Nix), and offload.toml. What a form cannot say (a port for Nix 2.8, a fractional speed for
NixOS) is said in a comment where it was dropped or rounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from offload.booleans import nix_bool
from offload.config.machines import (
    Machine,
    default_name,
    encode_host_key,
    format_machines,
    machine_from_columns,
    shown,
)
from offload.config.machines.uri import TOML_PARAMS, with_settings
from offload.config.pool import Pool
from offload.errors import ConfigError
from offload.spelling import meant

__all__ = ["machines_from_nixos", "pool_to_nix", "pool_to_nixos", "pool_to_toml"]


def _toml_str(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_toml_str(i) for i in items) + "]"


def _speed(value: float) -> str:
    return repr(float(value))


def _key_column(m: Machine) -> str | None:
    """The ssh key of ``m``'s third column: its key, unless the URI's ``ssh-key`` gave it (a
    path with a blank, percent-encoded there, is no column's)."""
    return m.ssh_key if m.ssh_key != m.params.get("ssh-key") else None


def pool_to_toml(pool: Pool) -> str:
    """offload.toml that defines the whole pool (every machine by uri, with all its columns)."""
    lines = ["# offload.toml written by `offload machines convert --to toml`", ""]
    if pool.local is not None:
        local = pool.local
        lines += [
            "[local]",
            f"speed-factor = {_speed(local.speed_factor)}",
            f"max-jobs = {local.max_jobs}",
            f"systems = {_toml_list(local.systems)}",
            f"features = {_toml_list(sorted(local.supported_features))}",
            "",
        ]
    for m in pool.machines:
        lines += ["[[machine]]", f"uri = {_toml_str(m.uri)}"]
        if m.name != default_name(m.uri, port=m.port):
            lines.append(f"name = {_toml_str(m.name)}")
        if m.tags:
            lines.append(f"tags = {_toml_list(sorted(m.tags))}")
        if m.port is not None:
            lines.append(f"port = {m.port}")
        if not m.enabled:
            lines.append("enabled = false")
        for key in TOML_PARAMS:  # false too: over a URI that says true, it is what is used
            if key in m.params:
                lines.append(f"{key} = {'true' if nix_bool(m.params[key]) else 'false'}")
        lines.append(f"systems = {_toml_list(m.systems)}")
        if (column := _key_column(m)) is not None:  # the URI's ssh-key stays in it
            lines.append(f"ssh-key = {_toml_str(column)}")
        lines += [f"max-jobs = {m.max_jobs}", f"speed-factor = {_speed(m.speed_factor)}"]
        lines.append(f"supported-features = {_toml_list(sorted(m.supported_features))}")
        lines.append(f"mandatory-features = {_toml_list(sorted(m.mandatory_features))}")
        if m.public_host_key is not None:
            lines.append(f"public-host-key = {_toml_str(encode_host_key(m.public_host_key))}")
        lines.append("")
    return "\n".join(lines)


def _nix_str(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def _nix_list(items: Iterable[str]) -> str:
    inner = " ".join(_nix_str(i) for i in items)
    return f"[ {inner} ]" if inner else "[ ]"


def pool_to_nixos(pool: Pool) -> str:
    """A ``nix.buildMachines`` value. NixOS joins protocol://sshUser@hostName into column 1."""
    out = ["# nix.buildMachines, written by `offload machines convert --to nixos`", "["]
    for m in pool.machines:
        protocol = m.scheme if m.is_ssh else None
        if protocol is not None:
            # user@host, then the query kept whole (an '@' in it is no user's).
            uri = with_settings(m.uri, m.params, TOML_PARAMS)  # offload.toml's over the URI's
            authority, mark, query = uri.partition("://")[2].partition("?")
            host = authority.rpartition("@")[2]
            if m.port is not None:
                out.append(
                    f"  # offload: port {m.port} of {shown(m.host or host)} dropped: "
                    "Nix 2.8 cannot take host:port (use an ssh Host alias)"
                )
                # The URI's own port, whatever offload.toml's (which wins) is: "a:2201" was
                # left with toml's 2202 named dropped, a host:port Nix 2.8 cannot read.
                bare = m.host or host.rpartition(":")[0]
                host = f"[{bare}]" if ":" in bare else bare
            host += mark + query
        else:
            host = m.uri
        speed = max(1, round(m.speed_factor))
        if speed != m.speed_factor:
            out.append(f"  # offload: speed factor {m.speed_factor:g} of {m.name} rounded")
        out += ["  {", f"    hostName = {_nix_str(host)};"]
        out.append(f"    protocol = {_nix_str(protocol) if protocol else 'null'};")
        if m.user is not None:
            out.append(f"    sshUser = {_nix_str(m.user)};")
        if (key := _key_column(m)) is not None:  # the URI's ssh-key stays in it (hostName)
            out.append(f"    sshKey = {_nix_str(key)};")
        out += [
            f"    systems = {_nix_list(m.systems)};",
            f"    maxJobs = {m.max_jobs};",
            f"    speedFactor = {speed};",
            f"    supportedFeatures = {_nix_list(sorted(m.supported_features))};",
            f"    mandatoryFeatures = {_nix_list(sorted(m.mandatory_features))};",
        ]
        if m.public_host_key is not None:
            out.append(f"    publicHostKey = {_nix_str(encode_host_key(m.public_host_key))};")
        out.append("  }")
    out.append("]")
    return "\n".join(out) + "\n"


def _opt_str(entry: Mapping[str, object], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, not {value!r}", hint=_as(key))
    return value


def _opt_int(entry: Mapping[str, object], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be a whole number, not {value!r}", hint=_as(key))
    return value


def _str_list(entry: Mapping[str, object], key: str, where: str) -> list[str]:
    value = entry.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings", hint=_as(key))
    return value


# Each option as a nix.buildMachines entry writes it, for the hint of a value of the wrong type.
_EXAMPLES = {
    "hostName": 'hostName = "builder.example.org";',
    "protocol": 'protocol = "ssh-ng";',
    "sshUser": 'sshUser = "nixbuilder";',
    "sshKey": 'sshKey = "/root/.ssh/nixbuilder";',
    "system": 'system = "x86_64-linux";',
    "systems": 'systems = [ "x86_64-linux" "aarch64-linux" ];',
    "maxJobs": "maxJobs = 4;",
    "speedFactor": "speedFactor = 2;",
    "supportedFeatures": 'supportedFeatures = [ "big-parallel" "kvm" ];',
    "mandatoryFeatures": "mandatoryFeatures = [ ];",
    "publicHostKey": 'publicHostKey = "<base64 of the host key line>";',
}


def _as(key: str) -> str:
    return f"as NixOS's nix.buildMachines has it: {_EXAMPLES[key]}"


# The options of a nix.buildMachines entry (NixOS's nix.nix module); any other is an error
# there ("The option ... does not exist"), and so here.
NIXOS_OPTIONS = (
    "hostName",
    "protocol",
    "sshUser",
    "sshKey",
    "system",
    "systems",
    "maxJobs",
    "speedFactor",
    "supportedFeatures",
    "mandatoryFeatures",
    "publicHostKey",
)


def _known_options(entry: Mapping[str, object], where: str) -> None:
    for key in entry:
        if key not in NIXOS_OPTIONS:
            close = meant(key, NIXOS_OPTIONS)
            hint = f"did you mean {close}?" if close else "one of: " + ", ".join(NIXOS_OPTIONS)
            raise ConfigError(f"{where}: no option {key!r} in nix.buildMachines", hint=hint)


def _nix_type(value: object) -> str:
    """``value``'s type as Nix names it (it came from nix-instantiate's JSON)."""
    names = {dict: "a set", list: "a list", str: "a string", bool: "a Boolean", type(None): "null"}
    return names.get(type(value), "a number")


def machines_from_nixos(data: object, *, source: str, system: str) -> list[Machine]:
    """Machines from the JSON of a ``nix.buildMachines`` value (``nix-instantiate --eval --json``).

    Defaults are the NixOS module's: protocol ``ssh``, one job, speed 1, and an empty ``systems``
    (plus the old single ``system``) meaning the local system.
    """
    if not isinstance(data, list):
        raise ConfigError(
            f"{source}: expected a list of machines, got {_nix_type(data)}",
            hint="the file is the value of nix.buildMachines itself: [ { hostName = ...; } ]",
        )
    machines = []
    for index, entry in enumerate(data, start=1):
        where = f"{source}: machine #{index}"
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{where}: expected an attribute set, got {_nix_type(entry)}",
                hint='each machine is { hostName = "builder.example.org"; ... }',
            )
        _known_options(entry, where)
        host = _opt_str(entry, "hostName", where)
        if not host:
            raise ConfigError(f"{where}: hostName is required", hint=_as("hostName"))
        protocol = _opt_str(entry, "protocol", where) if "protocol" in entry else "ssh"
        user = _opt_str(entry, "sshUser", where)
        uri = f"{protocol}://" if protocol else ""
        uri += f"{user}@{host}" if user else host
        systems = _str_list(entry, "systems", where)
        single = _opt_str(entry, "system", where)
        systems = [single, *systems] if single else systems
        max_jobs = _opt_int(entry, "maxJobs", where)
        speed = entry.get("speedFactor")
        if speed is not None and (isinstance(speed, bool) or not isinstance(speed, int | float)):
            raise ConfigError(
                f"{where}: speedFactor must be a number, not {speed!r}", hint=_as("speedFactor")
            )
        columns: list[str | None] = [
            uri,
            ",".join(systems) or None,
            _opt_str(entry, "sshKey", where) or None,
            None if max_jobs is None else str(max_jobs),
            None if speed is None else str(speed),
            ",".join(_str_list(entry, "supportedFeatures", where)) or None,
            ",".join(_str_list(entry, "mandatoryFeatures", where)) or None,
            _opt_str(entry, "publicHostKey", where) or None,
        ]
        machines.append(machine_from_columns(columns, source=where, system=system))
    return machines


def pool_to_nix(pool: Pool, *, nix28: bool = True) -> str:
    header = "# machines file written by `offload machines convert --to nix`\n"
    return header + format_machines(pool.machines, nix28=nix28)
