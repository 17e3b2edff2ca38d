"""Running exported models in onnxruntime: the custom-op library, session options, and a
session wrapper with KV-cache text generation.

Names are imported on first use (PEP 562): reading an export directory's format
(``qwthn_onnx.runtime.export_dir``) does not load onnxruntime or numpy.
"""

import importlib
from typing import Any

_LAZY = {
    "ExportIntegrityError": ("export_dir", "ExportIntegrityError"),
    "check_export_integrity": ("export_dir", "check_integrity"),
    "GenerationConfig": ("generation", "GenerationConfig"),
    "GenerationError": ("generation", "GenerationError"),
    "LibraryNotFoundError": ("library", "LibraryNotFoundError"),
    "get_library_path": ("library", "get_library_path"),
    "session_options": ("library", "session_options"),
    "ExportMetadata": ("metadata", "ExportMetadata"),
    "MetadataError": ("metadata", "MetadataError"),
    "FallbackWarning": ("session", "FallbackWarning"),
    "Generation": ("session", "Generation"),
    "QWTHNSession": ("session", "QWTHNSession"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
