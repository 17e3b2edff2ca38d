"""The quantum layers on quantum hardware's terms: backends, device compilation, batched jobs.

:func:`~qwthn_onnx.qpu.registry.make_backend` builds a backend from a spec (``exact``, ``aer``,
``aer:fake_torino``, ``ibm:<device>``, ``braket:local``); pass it to
``QWTHNSession(export, quantum=backend)`` and every generation step runs the model's quantum
layers on it as batched jobs (:mod:`.offload`), recorded for :func:`.report.generation_report`.
The quantum SDKs are imported only by the backends that need them.
"""

import importlib
from typing import Any

_LAZY = {
    "ExactBackend": ("backend", "ExactBackend"),
    "JobRecord": ("backend", "JobRecord"),
    "LayerCall": ("backend", "LayerCall"),
    "LayerReport": ("backend", "LayerReport"),
    "QPUError": ("backend", "QPUError"),
    "QuantumBackend": ("backend", "QuantumBackend"),
    "OffloadSession": ("offload", "OffloadSession"),
    "make_backend": ("registry", "make_backend"),
    "generation_report": ("report", "generation_report"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
