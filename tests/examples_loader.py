"""Import the scripts of examples/ as modules, so tests run the documented examples themselves."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# The smallest adapter that exercises every part (MPO, circuit, fusion): fast tests.
TINY_ADAPTER = ["--rank", "4", "--n-qubits", "2", "--n-layers", "1"]


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py`` as a module (its directory on sys.path, as when run as a script)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)
