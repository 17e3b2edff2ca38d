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
    kind, _, device = spec.partition(":")
    try:
        if kind == "exact" and not device:
            if shots is not None:
                raise QPUError("the exact backend takes no shots; use aer for shot noise.")
            return ExactBackend()
        if kind == "aer":
            from qwthn_onnx.qpu.qiskit_backends import AerBackend

            return AerBackend(device or None, shots=shots, seed=seed, noise=noise)
        if kind == "ibm" and device:
            from qwthn_onnx.qpu.qiskit_backends import IBMRuntimeBackend

            return IBMRuntimeBackend(device, shots=shots, seed=seed)
        if kind == "braket":
            from qwthn_onnx.qpu.braket_backend import BraketLocalBackend

            return BraketLocalBackend(device or None, shots=shots, seed=seed)
    except ImportError as e:
        raise QPUError(
            f"quantum backend {spec!r} needs a package that is not installed ({e}); "
            "pip install 'qwthn-onnx[qpu]'"
        ) from e
    raise _unknown(spec)
