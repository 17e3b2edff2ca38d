"""QWTHN adapters for transformers models: config, layer, model-level injection."""

from qwthn_onnx.adapter.config import ConfigError, QWTHNConfig
from qwthn_onnx.adapter.layer import QuantumLayer, QWTHNAdapter, QWTHNLayer
from qwthn_onnx.adapter.model import (
    AdapterError,
    ParameterReport,
    QWTHNModel,
    check_adapter_directory,
    default_target_modules,
    find_target_modules,
    inject_adapters,
    load_adapter,
)

__all__ = [
    "AdapterError",
    "ConfigError",
    "ParameterReport",
    "QWTHNAdapter",
    "QWTHNConfig",
    "QWTHNLayer",
    "QWTHNModel",
    "QuantumLayer",
    "check_adapter_directory",
    "default_target_modules",
    "find_target_modules",
    "inject_adapters",
    "load_adapter",
]
