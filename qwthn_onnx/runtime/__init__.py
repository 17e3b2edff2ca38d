"""Running exported models in onnxruntime: the custom-op library, session options, and a
session wrapper with KV-cache text generation."""

from qwthn_onnx.runtime.export_dir import ExportIntegrityError
from qwthn_onnx.runtime.export_dir import check_integrity as check_export_integrity
from qwthn_onnx.runtime.generation import GenerationConfig, GenerationError
from qwthn_onnx.runtime.library import LibraryNotFoundError, get_library_path, session_options
from qwthn_onnx.runtime.metadata import ExportMetadata, MetadataError
from qwthn_onnx.runtime.session import FallbackWarning, Generation, QWTHNSession

__all__ = [
    "ExportIntegrityError",
    "ExportMetadata",
    "FallbackWarning",
    "Generation",
    "GenerationConfig",
    "GenerationError",
    "LibraryNotFoundError",
    "MetadataError",
    "QWTHNSession",
    "check_export_integrity",
    "get_library_path",
    "session_options",
]
