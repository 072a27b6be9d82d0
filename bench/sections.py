"""Sections of docs/BENCHMARKS.md that other scripts own, kept when ``bench/report.py`` rewrites it.

A section is the text between ``<!-- section:NAME -->`` and ``<!-- /section:NAME -->``; its
script replaces it in place (``put_section``), or appends it the first time, and the report
carries every section of the old doc over to the new one (``keep_sections``).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["keep_sections", "put_section"]

_SECTION = re.compile(
    r"<!-- section:(?P<name>[\w-]+) -->\n.*?<!-- /section:(?P=name) -->\n", re.DOTALL
)


def _block(name: str, body: str) -> str:
    return f"<!-- section:{name} -->\n{body.rstrip()}\n<!-- /section:{name} -->\n"


def put_section(text: str, name: str, body: str) -> str:
    """``text`` with section ``name`` holding ``body`` (appended when it has none yet)."""
    block = _block(name, body)
    for match in _SECTION.finditer(text):
        if match["name"] == name:
            return text[: match.start()] + block + text[match.end() :]
    return text.rstrip() + "\n\n" + block


def keep_sections(old: Path, new: str) -> str:
    """``new`` with the sections of the doc at ``old`` (if it exists) appended."""
    if not old.exists():
        return new
    for match in _SECTION.finditer(old.read_text(encoding="utf-8")):
        name = match["name"]
        body = match.group(0).split("\n", 1)[1].rsplit("<!-- /section:", 1)[0]
        new = put_section(new, name, body)
    return new
