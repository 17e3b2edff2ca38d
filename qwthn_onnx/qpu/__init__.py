"""The quantum layers on quantum hardware's terms: backends, device compilation, batched jobs.

:func:`~qwthn_onnx.qpu.registry.make_backend` builds a backend from a spec (``exact``, ``aer``,
``aer:fake_torino``, ``ibm:<device>``, ``braket:local``); pass it to
``QWTHNSession(export, quantum=backend)`` and every generation step runs the model's quantum
layers on it as batched jobs (:mod:`.offload`), recorded for :func:`.report.generation_report`.
The quantum SDKs are imported only by the backends that need them.
"""

from qwthn_onnx._lazy import lazy_exports

_EXPORTS = {
    "ExactBackend": ".backend",
    "JobRecord": ".backend",
    "LayerCall": ".backend",
    "LayerReport": ".backend",
    "QPUError": ".backend",
    "QuantumBackend": ".backend",
    "OffloadSession": ".offload",
    "make_backend": ".registry",
    "generation_report": ".report",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
