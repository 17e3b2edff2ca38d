"""The compact, flat encoding of a circuit: what ONNX node attributes and the C++ kernel read.

A :class:`Circuit` becomes a handful of integer and float arrays (version 1)::

    n_qubits, n_inputs, n_weights      ints
    gates        int64 [n_gates, 3]    (opcode, wire0, wire1); wire1 = -1 for one-qubit gates
    params       int64 [n_params, 2]   (kind, index) per gate parameter, in gate order;
                                       kind 0 = input, 1 = weight, 2 = constant
    constants    float64 [n_consts]    the values constant parameters index into
    observables  int64 [n_obs, n_qubits]  Pauli codes, 0 = I, 1 = X, 2 = Y, 3 = Z; column q acts
                                       on qubit q (as in the IR's Pauli strings)

Opcodes index :data:`GATE_CODES`, which is append-only: a new gate gets the next code, existing
codes never change, so files written by older versions decode the same. Constants are float64
(an ONNX tensor attribute), not float32 ``floats``, so angles survive exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .ir import GATES, MAX_QUBITS_ENV, Circuit, CircuitError, Gate, Param, max_qubits_limit

__all__ = ["ENCODING_VERSION", "GATE_CODES", "PAULI_CODES", "EncodedCircuit", "decode", "encode"]

ENCODING_VERSION = 1
GATE_CODES: tuple[str, ...] = (
    "rx", "ry", "rz", "h", "x", "y", "z", "s", "sdg", "t", "tdg", "p",
    "cx", "cy", "cz", "swap", "crx", "cry", "crz", "cp", "rzz", "rxx", "ryy",
)  # fmt: skip
PAULI_CODES = "IXYZ"
_KINDS = ("input", "weight", "const")


@dataclass(frozen=True)
class EncodedCircuit:
    """The flat arrays of one circuit (see the module docstring for their layout)."""

    n_qubits: int
    n_inputs: int
    n_weights: int
    gates: np.ndarray
    params: np.ndarray
    constants: np.ndarray
    observables: np.ndarray
    version: int = ENCODING_VERSION

    def as_dict(self) -> dict[str, Any]:
        """Plain lists and ints, e.g. for ONNX node attributes or JSON."""
        return {
            "encoding_version": self.version,
            "n_qubits": self.n_qubits,
            "n_inputs": self.n_inputs,
            "n_weights": self.n_weights,
            "gates": self.gates.reshape(-1).tolist(),
            "params": self.params.reshape(-1).tolist(),
            "constants": self.constants.tolist(),
            "observables": self.observables.reshape(-1).tolist(),
        }


def encode(circuit: Circuit) -> EncodedCircuit:
    """Flatten ``circuit`` (already validated by construction) into its arrays."""
    gates, params, constants = [], [], []
    for gate in circuit.gates:
        wires = (*gate.wires, -1)[:2]
        gates.append((GATE_CODES.index(gate.name), *wires))
        for p in gate.params:
            if p.kind == "const":
                params.append((2, len(constants)))
                constants.append(float(p.value))
            else:
                params.append((_KINDS.index(p.kind), int(p.value)))
    observables = [[PAULI_CODES.index(c) for c in obs] for obs in circuit.observables]
    return EncodedCircuit(
        n_qubits=circuit.n_qubits,
        n_inputs=circuit.n_inputs,
        n_weights=circuit.n_weights,
        gates=np.asarray(gates, dtype=np.int64).reshape(-1, 3),
        params=np.asarray(params, dtype=np.int64).reshape(-1, 2),
        constants=np.asarray(constants, dtype=np.float64),
        observables=np.asarray(observables, dtype=np.int64).reshape(-1, circuit.n_qubits),
    )


def _ints(data: dict[str, Any], key: str, width: int) -> np.ndarray:
    if key not in data:
        raise CircuitError(f"encoded circuit: missing '{key}'")
    try:
        flat = np.asarray(data[key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError) as e:  # OverflowError: beyond int64
        raise CircuitError(
            f"encoded circuit: '{key}' must be a list of ints in the int64 range ({e})"
        ) from e
    if width < 1 or flat.size % width:
        raise CircuitError(
            f"encoded circuit: '{key}' has {flat.size} values, not a multiple of {width}"
        )
    return flat.reshape(-1, width)


def _scalar(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise CircuitError(f"encoded circuit: '{key}' must be an int, got {value!r}")
    return int(value)


def decode(data: dict[str, Any], max_qubits: int | None = None) -> Circuit:
    """Rebuild and validate a :class:`Circuit` from :meth:`EncodedCircuit.as_dict` output.

    Every count, code and index is checked before use; anything malformed raises
    :class:`CircuitError` naming the attribute (the C++ decoder applies the same rules).
    """
    version = data.get("encoding_version", ENCODING_VERSION)
    if version != ENCODING_VERSION:
        raise CircuitError(
            f"encoded circuit: encoding_version {version!r} is not supported (this version "
            f"reads {ENCODING_VERSION}); upgrade qwthn-onnx"
        )
    n_qubits, limit = _scalar(data, "n_qubits"), max_qubits_limit(max_qubits)
    if not 1 <= n_qubits <= limit:  # before anything is sized by n_qubits
        raise CircuitError(
            f"encoded circuit: n_qubits is {n_qubits}; it must be in 1..{limit} "
            f"(raise the limit with ${MAX_QUBITS_ENV} if you have the memory)"
        )
    gate_rows = _ints(data, "gates", 3)
    param_rows = _ints(data, "params", 2)
    observables = _ints(data, "observables", n_qubits)
    try:
        constants = np.asarray(data.get("constants", []), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError) as e:  # OverflowError: beyond float64
        raise CircuitError(f"encoded circuit: 'constants' must be a list of floats ({e})") from e
    gates, cursor = [], 0
    for g, (code, w0, w1) in enumerate(gate_rows.tolist()):
        if not 0 <= code < len(GATE_CODES):
            raise CircuitError(
                f"encoded circuit: gate {g} has opcode {code}; known opcodes are "
                f"0..{len(GATE_CODES) - 1}"
            )
        spec = GATES[GATE_CODES[code]]
        if cursor + spec.n_params > len(param_rows):
            raise CircuitError(
                f"encoded circuit: 'params' has {len(param_rows)} entries, but gate {g} "
                f"({spec.name}) needs parameter {cursor + spec.n_params - 1}"
            )
        params = []
        for kind, index in param_rows[cursor : cursor + spec.n_params].tolist():
            if kind == 2:
                if not 0 <= index < len(constants):
                    raise CircuitError(
                        f"encoded circuit: gate {g} uses constant {index}, but 'constants' has "
                        f"{len(constants)} values"
                    )
                params.append(Param.const(float(constants[index])))
            elif kind in (0, 1):
                params.append(Param(_KINDS[kind], index))
            else:
                raise CircuitError(
                    f"encoded circuit: gate {g} has parameter kind {kind}; kinds are 0 (input), "
                    f"1 (weight), 2 (constant)"
                )
        cursor += spec.n_params
        wires = (w0,) if spec.n_qubits == 1 else (w0, w1)
        if spec.n_qubits == 1 and w1 != -1:
            raise CircuitError(f"encoded circuit: one-qubit gate {g} ({spec.name}) has wire1 {w1}")
        gates.append(Gate(spec.name, wires, tuple(params)))
    if cursor != len(param_rows):
        raise CircuitError(
            f"encoded circuit: 'params' has {len(param_rows)} entries, the gates use {cursor}"
        )
    bad = observables[(observables < 0) | (observables > 3)]
    if bad.size:
        raise CircuitError(
            f"encoded circuit: Pauli code {int(bad[0])} in 'observables'; codes are 0..3"
        )
    return Circuit(
        n_qubits=n_qubits,
        gates=tuple(gates),
        observables=tuple("".join(PAULI_CODES[c] for c in row) for row in observables.tolist()),
        n_inputs=_scalar(data, "n_inputs"),
        n_weights=_scalar(data, "n_weights"),
        max_qubits=max_qubits,
    )
