"""qwthn-onnx: fine-tune, export and serve language models with QWTHN adapters.

QWTHN (arXiv 2503.12790) replaces LoRA's two low-rank matrices with a tensor-network (MPO) path
fused with a small parameterised quantum circuit. This package holds the PyTorch side: circuit
IR and simulator, MPO layer, adapters for transformers models, training and ``model.pt``, and
the onnxruntime side (custom-op library, session options).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qwthn-onnx")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from qwthn_onnx.adapter import (
    AdapterError,
    ConfigError,
    QWTHNConfig,
    QWTHNModel,
    load_adapter,
)
from qwthn_onnx.checkpoint import LoadedModel, ModelFileError, load_model_pt, save_model_pt
from qwthn_onnx.data import (
    DataError,
    Example,
    Message,
    chat_prompt_ids,
    load_examples,
    split_examples,
    tokenize_examples,
)
from qwthn_onnx.runtime import get_library_path, session_options
from qwthn_onnx.training import TrainingArguments, TrainingError, TrainingResult, evaluate, train

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
