"""Exporters: a QWTHN model.pt to ONNX (custom ops + fallbacks + KV cache), verified against
PyTorch, and the way back from ONNX to a trainable model.pt."""

from exporters.export import ExportOptions, ExportResult, export_model
from exporters.onnx_export import SUPPORTED_ARCHITECTURES, ExportError

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "export_model",
]
