"""Quantum backends by name: ``exact``, ``aer``, ``aer:<device>``, ``ibm:<device>``, ``braket:…``.

A spec is ``kind[:device]``. The kinds and what they run:

* ``exact`` — the C++ kernel, exactly what the ONNX node computes (the reference);
* ``aer`` — qiskit-aer's EstimatorV2 on the logical circuit (noiseless; shots or exact);
* ``aer:<device>`` — the circuit compiled for ``<device>`` (an offline fake IBM backend such as
  ``fake_torino``, or a ``custom:…`` basis and coupling map) and run under its noise model;
* ``ibm:<device>`` — IBM Runtime's EstimatorV2: a real backend with a saved IBM Quantum
  account, or a fake device in qiskit-ibm-runtime's local testing mode (the same code path);
* ``braket:local`` (``braket:dm``) — Amazon Braket's local simulator, through program sets.

``mitigation="readout"`` wraps a device backend that samples (``aer:<device>``, ``ibm:<device>``
with shots) in :class:`~qwthn_onnx.qpu.mitigation.ReadoutMitigated`.

The quantum SDKs are imported only when their kind is asked for.
"""

from __future__ import annotations

import importlib.util

from qwthn_onnx.qpu.backend import ExactBackend, QPUError, QuantumBackend, check_shots

__all__ = ["KINDS", "make_backend"]

KINDS = {
    "exact": "the C++ kernel: exact, what the ONNX node computes",
    "aer": "qiskit-aer EstimatorV2; aer:<device> compiles for a device and adds its noise",
    "ibm": "IBM Runtime EstimatorV2; ibm:<fake device> runs locally, ibm:<backend> needs an "
    "account",
    "braket": "Amazon Braket's local simulator through program sets (braket:local, braket:dm)",
}


def _unknown(spec: str) -> QPUError:
    kinds = "; ".join(f"{kind}: {text}" for kind, text in KINDS.items())
    try:
        from qwthn_onnx.qpu.devices import available_devices

        devices = ", ".join(available_devices())
    except ImportError as e:  # qiskit-ibm-runtime missing: say so instead of listing devices
        devices = f"(none listed: {e}; pip install 'qwthn-onnx[qpu]')"
    return QPUError(
        f"unknown quantum backend {spec!r}. Kinds: {kinds}. Devices for aer:/ibm:: {devices}."
    )


def make_backend(
    spec: str,
    *,
    shots: int | None = None,
    seed: int | None = None,
    noise: bool = True,
    mitigation: str | None = None,
) -> QuantumBackend:
    """The backend ``spec`` names (see the module docstring), with ``mitigation`` (None or
    ``"readout"``) applied; refuses bad specs, shots and mitigations."""
    if mitigation is not None:
        from qwthn_onnx.qpu.mitigation import mitigate

        return mitigate(make_backend(spec, shots=shots, seed=seed, noise=noise), mitigation)
    shots = check_shots(shots)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise QPUError(f"the seed must be an integer >= 0, got {seed!r}.")
    kind, _, device = spec.partition(":")
    if not noise and not (kind == "aer" and device):
        raise QPUError(
            f"noise=False (--no-noise) applies to aer:<device> only; {spec!r} has no noise "
            "model to turn off."
        )
    _check_installed(spec, _PACKAGES.get(kind, ()))
    if kind == "exact" and not device:
        if shots is not None:
            raise QPUError("the exact backend takes no shots; use aer for shot noise.")
        return ExactBackend()
    if kind == "aer":
        from qwthn_onnx.qpu.qiskit_backends import AerBackend

        return AerBackend(device or None, shots=shots, seed=seed, noise=noise)
    if kind == "ibm" and device:
        from qwthn_onnx.qpu.qiskit_backends import IBMRuntimeBackend

        if shots is None:
            raise QPUError(f"{spec}: IBM Runtime's estimator samples; give the shots (--shots N).")
        return IBMRuntimeBackend(device, shots=shots, seed=seed)
    if kind == "braket":
        from qwthn_onnx.qpu.braket_backend import BraketLocalBackend

        return BraketLocalBackend(device or None, shots=shots, seed=seed)
    raise _unknown(spec)


# What each kind imports (checked before anything is built, so a missing package is named
# instead of failing in the middle of a generation).
_PACKAGES = {
    "aer": ("qiskit", "qiskit_aer", "qiskit_ibm_runtime"),
    "ibm": ("qiskit", "qiskit_aer", "qiskit_ibm_runtime"),
    "braket": ("braket.devices", "braket.default_simulator"),
}


def _check_installed(spec: str, modules: tuple[str, ...]) -> None:
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package of a dotted name is missing
            found = False
        if not found:
            missing.append(module.split(".")[0])
    if missing:
        raise QPUError(
            f"quantum backend {spec!r} needs {', '.join(dict.fromkeys(missing))}, which is not "
            "installed; pip install 'qwthn-onnx[qpu]'"
        )
