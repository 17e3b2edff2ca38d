"""qwthn-onnx: fine-tune, export and serve language models with QWTHN adapters.

QWTHN (arXiv 2503.12790) replaces LoRA's two low-rank matrices with a tensor-network (MPO) path
fused with a small parameterised quantum circuit. This package holds the PyTorch side: circuit
IR and simulator, MPO layer, adapters for transformers models, training and ``model.pt``, and
the onnxruntime side (custom-op library, session options).
"""

from importlib.metadata import PackageNotFoundError, version

from qwthn_onnx._lazy import lazy_exports

try:
    __version__ = version("qwthn-onnx")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# Public names -> the module that defines them. Imported on first use (PEP 562), so that the
# deploy layer (qwthn_onnx.runtime, serving) never pays for torch, transformers or qiskit.
_LAZY = {
    "AdapterError": "qwthn_onnx.adapter",
    "ConfigError": "qwthn_onnx.adapter",
    "QWTHNConfig": "qwthn_onnx.adapter",
    "QWTHNModel": "qwthn_onnx.adapter",
    "load_adapter": "qwthn_onnx.adapter",
    "LoadedModel": "qwthn_onnx.checkpoint",
    "ModelFileError": "qwthn_onnx.checkpoint",
    "load_model_pt": "qwthn_onnx.checkpoint",
    "save_model_pt": "qwthn_onnx.checkpoint",
    "DataError": "qwthn_onnx.chat",
    "Example": "qwthn_onnx.data",
    "load_examples": "qwthn_onnx.data",
    "split_examples": "qwthn_onnx.data",
    "tokenize_examples": "qwthn_onnx.data",
    "Message": "qwthn_onnx.chat",
    "chat_prompt_ids": "qwthn_onnx.chat",
    "get_library_path": "qwthn_onnx.runtime",
    "session_options": "qwthn_onnx.runtime",
    "TrainingArguments": "qwthn_onnx.training",
    "TrainingError": "qwthn_onnx.training",
    "TrainingResult": "qwthn_onnx.training",
    "evaluate": "qwthn_onnx.training",
    "train": "qwthn_onnx.training",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "AdapterError",
    "ConfigError",
    "DataError",
    "Example",
    "LoadedModel",
    "Message",
    "ModelFileError",
    "QWTHNConfig",
    "QWTHNModel",
    "TrainingArguments",
    "TrainingError",
    "TrainingResult",
    "__version__",
    "chat_prompt_ids",
    "evaluate",
    "get_library_path",
    "load_adapter",
    "load_examples",
    "load_model_pt",
    "save_model_pt",
    "session_options",
    "split_examples",
    "tokenize_examples",
    "train",
]
