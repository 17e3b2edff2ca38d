"""Running exported models in onnxruntime: the custom-op library, session options, and a
session wrapper with KV-cache text generation.

Names are imported on first use (PEP 562): reading an export directory's format
(``qwthn_onnx.runtime.export_dir``) does not load onnxruntime or numpy.
"""

from qwthn_onnx._lazy import lazy_exports

_EXPORTS = {
    "ExportIntegrityError": ".export_dir",
    "check_export_integrity": ".export_dir:check_integrity",
    "GenerationConfig": ".generation",
    "GenerationError": ".generation",
    "LibraryNotFoundError": ".library",
    "get_library_path": ".library",
    "session_options": ".library",
    "ExportMetadata": ".metadata",
    "MetadataError": ".metadata",
    "FallbackWarning": ".session",
    "Generation": ".session",
    "QWTHNSession": ".session",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
