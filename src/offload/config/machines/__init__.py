"""Nix's machines format (the `builders` setting and ``/etc/nix/machines``), parsed and printed.

A spec is a text of entries separated by newlines and ``;``; each entry is up to eight
whitespace-separated columns describing one builder. The format's parts each have a module:

- ``model``: the ``Machine`` record and the column names;
- ``uri``: store URIs (column 1), with ``host:port``;
- ``host_key``: base64 host keys (column 8);
- ``entry``: one entry's columns read into a ``Machine``;
- ``spec``: a whole spec with comments, ``;`` and ``@`` includes;
- ``printing``: machines written back as a file Nix 2.8 (or newer Nix) reads the same way.

Their public names are re-exported here.
"""

from offload.config.machines.entry import machine_from_columns
from offload.config.machines.host_key import decode_host_key, encode_host_key
from offload.config.machines.model import COLUMNS, Machine
from offload.config.machines.printing import format_machine_line, format_machines
from offload.config.machines.spec import parse_machines, read_text_file
from offload.config.machines.uri import default_name, parse_store_uri

__all__ = [
    "COLUMNS",
    "Machine",
    "decode_host_key",
    "default_name",
    "encode_host_key",
    "format_machine_line",
    "format_machines",
    "machine_from_columns",
    "parse_machines",
    "parse_store_uri",
    "read_text_file",
]
