"""Where the onnxruntime custom-op library is, and sessions that have it registered.

``libqwthn_ops`` (built from custom_ops/ with the package) implements the ``ai.qwthn`` ops for
onnxruntime's CPU execution provider. It is installed next to the ``qwthn_onnx._native``
extension; ``$QWTHN_OPS_LIBRARY`` overrides the location (e.g. a debug or sanitizer build).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from qwthn_onnx.runtime.export_dir import library_file_name

__all__ = ["LibraryNotFoundError", "get_library_path", "session_options"]

_ENV = "QWTHN_OPS_LIBRARY"


class LibraryNotFoundError(FileNotFoundError):
    """The custom-op library is not built or not where it should be."""


def _candidates() -> list[Path]:
    """The extension's directory first (an editable install keeps built files apart from the
    sources), then the package directory."""
    from qwthn_onnx import native  # honours $QWTHN_NATIVE_MODULE

    dirs = []
    extension = native.module_path()
    if extension is not None:
        dirs.append(extension.parent)
    dirs.append(Path(__file__).resolve().parent.parent)
    return [d / library_file_name() for d in dict.fromkeys(dirs)]


def get_library_path() -> str:
    """Absolute path of the ``ai.qwthn`` custom-op library for onnxruntime.

    Raises :class:`LibraryNotFoundError` naming the places searched and how to build it.
    """
    override = os.environ.get(_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise LibraryNotFoundError(f"${_ENV}={override} is not a file; unset it or fix it.")
        return str(path.resolve())
    candidates = _candidates()
    for path in candidates:
        if path.is_file():
            return str(path)
    searched = ", ".join(str(p) for p in candidates)
    raise LibraryNotFoundError(
        f"the qwthn custom-op library ({library_file_name()}) was not found (searched {searched}). "
        "Reinstall with a C++17 compiler and CMake (pip install -e .), or point "
        f"${_ENV} at a built copy. Models exported with fallbacks still run without it."
    )


def session_options(
    threads: int | None = None, options: ort.SessionOptions | None = None
) -> ort.SessionOptions:
    """``SessionOptions`` with the ``ai.qwthn`` kernels registered.

    ``threads`` sets ``intra_op_num_threads`` (the kernels run their batch on that pool);
    ``options`` is updated in place when given, else a new object is returned.
    """
    if threads is not None and (not isinstance(threads, int) or threads < 0):
        raise ValueError(
            f"threads must be a non-negative int (0 = onnxruntime's default), got {threads!r}"
        )
    options = options if options is not None else ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    if threads is not None:
        options.intra_op_num_threads = threads
    return options
