"""Nix's machines format (the `builders` setting and ``/etc/nix/machines``), parsed and printed.

A spec is a text of entries separated by newlines and ``;``; each entry is up to eight
whitespace-separated columns describing one builder. The format's parts each have a module:

- ``model``: the ``Machine`` record and the column names;
- ``uri``: store URIs (column 1), with ``host:port``;
- ``host_key``: base64 host keys (column 8);
- ``entry``: one entry's columns read into a ``Machine``;
- ``compat``: what older Nix (2.8) makes of what the newest Nix reads;
- ``files``: ``@`` files read with bounds on size and time;
- ``spec``: a whole spec with comments, ``;`` and ``@`` includes, every problem in one pass;
- ``check``: what makes a parsed machine unusable though Nix takes its line;
- ``printing``: machines written back as a file Nix 2.8 (or newer Nix) reads the same way.

Their public names are re-exported here.
"""

from offload.config.machines.check import duplicate_names, machine_problems
from offload.config.machines.compat import NixCompat
from offload.config.machines.entry import machine_from_columns
from offload.config.machines.files import read_text_file
from offload.config.machines.host_key import decode_host_key, encode_host_key
from offload.config.machines.model import COLUMNS, Machine, shown
from offload.config.machines.printing import format_machine_line, format_machines
from offload.config.machines.spec import MachinesReading, parse_machines, read_machines
from offload.config.machines.uri import default_name, parse_store_uri

__all__ = [
    "COLUMNS",
    "Machine",
    "MachinesReading",
    "NixCompat",
    "decode_host_key",
    "default_name",
    "duplicate_names",
    "encode_host_key",
    "format_machine_line",
    "format_machines",
    "machine_from_columns",
    "machine_problems",
    "parse_machines",
    "parse_store_uri",
    "read_machines",
    "read_text_file",
    "shown",
]
