"""Public names imported on first use (PEP 562), for packages whose users must not pay for
what they do not touch: the deploy layer never imports torch, qiskit or the web stack by
reading a package's namespace."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``.

    ``exports`` maps a public name to the module defining it (absolute, or relative to
    ``package`` with a leading dot), optionally ``"module:attribute"`` when the module calls it
    otherwise. A name is imported once, then kept in the package's namespace.
    """

    def __getattr__(name: str) -> Any:
        where = exports.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = where.partition(":")
        value = getattr(importlib.import_module(module, package), attribute or name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted([*vars(sys.modules[package]), *exports])

    return __getattr__, __dir__
