"""``override`` (PEP 698, ``typing`` from Python 3.12) for Python 3.11 without importing
``typing_extensions`` when offload runs: that import costs every command about 4 ms at its
start, for a decorator only type checkers read. Type checkers see ``typing_extensions``'s."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

__all__ = ["override"]

if TYPE_CHECKING:
    from typing_extensions import override
else:
    _F = TypeVar("_F", bound=Callable[..., Any])

    def override(method: _F) -> _F:
        """Mark ``method`` as overriding its base's, as ``typing_extensions.override`` does."""
        with contextlib.suppress(AttributeError, TypeError):  # one that takes no attributes
            method.__override__ = True
        return method
