"""Running exported models in onnxruntime: the custom-op library and session options."""

from qwthn_onnx.runtime.library import LibraryNotFoundError, get_library_path, session_options

__all__ = ["LibraryNotFoundError", "get_library_path", "session_options"]
