"""bench.bytecode: the bench times offload with its bytecode compiled, as an install has it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bench.bytecode import compiled_env

import offload.cli.build


def test_the_tools_environment_lets_python_read_the_compiled_offload_modules():
    env = compiled_env({"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin", "KEEP": "x"})
    assert "PYTHONDONTWRITEBYTECODE" not in env
    assert env["KEEP"] == "x"
    source = offload.cli.build.__file__
    assert source is not None
    compiled = Path(importlib.util.cache_from_source(source))
    assert compiled.is_file()
    assert compiled.stat().st_mtime >= Path(source).stat().st_mtime
