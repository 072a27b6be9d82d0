"""What mypyc must be told about the classes it compiles, when offload is built compiled.

``setup.py`` compiles the scheduler's policy, its graph and its simulator with mypyc when
``OFFLOAD_USE_MYPYC=1`` (the Nix package does): the same source, run as C, and the same
decisions (``tests/integration/test_compiled.py``). A compiled class takes no interpreted
subclass unless it says so with ``mypyc_attr(allow_interpreted_subclasses=True)``. mypy_extensions,
which defines it, is there whenever mypyc is; an interpreted install need not have it, and there
the decorator leaves the class as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

__all__ = ["mypyc_attr"]

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr
else:
    try:
        from mypy_extensions import mypyc_attr
    except ImportError:  # not compiled, and nothing to tell
        _C = TypeVar("_C")

        def mypyc_attr(*_attrs: str, **_flags: Any) -> Callable[[_C], _C]:  # noqa: ANN401
            return lambda cls: cls
