"""Store URIs (column 1 of a machines entry), split the way Nix and OpenSSH read them.

A schemeless word that is not a path or a special store means ``ssh://word``. Beyond Nix 2.8,
offload accepts ``host:port`` (as Nix >= 2.31 does) and ``[v6addr]:port``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import quote, unquote

from offload.config.machines.model import SSH_SCHEMES, shown

__all__ = ["TOML_PARAMS", "StoreUri", "default_name", "parse_store_uri", "with_settings"]

# The URI parameters offload.toml may set over a URI's own (``config.pool``).
TOML_PARAMS = ("compress", "builders-use-substitutes")

_SPECIAL_STORES = ("auto", "daemon", "local")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_PORT_RE = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class StoreUri:
    """A store URI's parts; ``user`` and ``port`` are set for ssh stores only."""

    uri: str
    scheme: str
    host: str | None
    user: str | None
    port: int | None
    params: Mapping[str, str]


def _normalise_uri(raw: str) -> str:
    # machines.cc: a schemeless word that is not a path or special store means ssh://word.
    if "://" in raw or "/" in raw or raw.startswith("?"):
        return raw
    if raw in _SPECIAL_STORES or any(raw.startswith(f"{s}?") for s in _SPECIAL_STORES):
        return raw
    return f"ssh://{raw}"


def _parse_query(query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if eq:  # Nix's decodeQuery drops parameters without '=', and keeps a name's first.
            params.setdefault(unquote(key), unquote(value))
    return params


def with_settings(uri: str, params: Mapping[str, str], names: Sequence[str]) -> str:
    """``uri`` with the ``names`` of ``params`` its query does not say as they are (offload.toml
    sets ``compress`` over the URI's): written in, or over its own first, so that a machines
    line made from it reads back the same (``offload machines convert``)."""
    base, mark, query = uri.partition("?")
    parts = query.split("&") if mark else []
    for name in names:
        if name not in params:
            continue
        said = f"{quote(name)}={quote(params[name])}"
        index = next(
            (i for i, part in enumerate(parts) if unquote(part.partition("=")[0]) == name
             and "=" in part),
            None,
        )  # fmt: skip
        if index is None:
            parts.append(said)
        elif unquote(parts[index].partition("=")[2]) != params[name]:
            parts[index] = said
    return f"{base}?{'&'.join(parts)}" if parts else base


def parse_store_uri(raw: str) -> StoreUri:
    """Split a (column 1) store URI; raises ``ValueError`` with a reason when it is unusable."""
    uri = _normalise_uri(raw)
    base, _, query = uri.partition("?")
    params = _parse_query(query) if query else {}
    match = _SCHEME_RE.match(base)
    if match is None:
        if base in _SPECIAL_STORES:
            return StoreUri(uri, base, None, None, None, MappingProxyType(params))
        if base == "":
            return StoreUri(uri, "auto", None, None, None, MappingProxyType(params))
        return StoreUri(uri, "path", None, None, None, MappingProxyType(params))
    scheme = match.group(1)  # as Nix takes it: "SSH://h" is no store type it knows
    authority = base[match.end() :]
    if scheme not in SSH_SCHEMES:
        return StoreUri(uri, scheme, authority or None, None, None, MappingProxyType(params))
    # OpenSSH splits user@host at the last '@'.
    user, at, hostport = authority.rpartition("@")
    if at and not user:
        raise ValueError(f"empty user name in '{shown(raw)}'")
    host, port = _split_port(hostport, raw)
    if not host:
        raise ValueError(f"no host name in '{shown(raw)}'")
    if "/" in host:
        raise ValueError(f"'{shown(host)}' is not a host name (it contains '/')")
    return StoreUri(uri, scheme, host, user or None, port, MappingProxyType(params))


def _split_port(hostport: str, raw: str) -> tuple[str, int | None]:
    if hostport.startswith("["):  # [v6addr]:port
        end = hostport.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in '{shown(raw)}'")
        host, rest = hostport[1:end], hostport[end + 1 :]
        if rest in ("", ":"):
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"unexpected text after ']' in '{shown(raw)}'")
        return host, _port(rest[1:], raw)
    if hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
        return host, _port(port, raw) if port else None  # "h:" is no port, as to Nix
    return hostport, None


def _port(text: str, raw: str) -> int:
    if not _PORT_RE.fullmatch(text) or not 0 < int(text) < 65536:
        raise ValueError(f"'{shown(text)}' is not a port number (1-65535) in '{shown(raw)}'")
    return int(text)


def default_name(uri: str, *, port: int | None = None) -> str:
    """A machine's name unless offload.toml gives one: its ssh host, with ``:port`` when it is
    reached on a port other than 22 (``port``: offload.toml's, which wins over the URI's), so
    two builders on one host (containers, VMs) are two names; else its whole URI. A plain
    ``ssh://a`` is ``a``; ``ssh://a:2222`` is ``a:2222``; ``ssh://[::1]:2222`` is ``[::1]:2222``.
    """
    try:
        parsed = parse_store_uri(uri)
    except ValueError:
        return shown(uri, limit=len(uri) * 4)
    if parsed.host is None or parsed.scheme not in SSH_SCHEMES:
        name = parsed.uri
    else:
        name = parsed.host
        port = parsed.port if port is None else port
        if port is not None and port != 22:
            name = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
    # A name is printed everywhere (tables, logs, the live view): never raw control bytes.
    return shown(name, limit=len(name) * 4)
