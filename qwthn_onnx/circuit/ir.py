"""Circuit IR: the single source of truth for the QNN inside every QWTHN adapter.

The simulator, the C++ kernel, the ONNX attributes and the OpenQASM 3 export are all generated
from a :class:`Circuit`, so this module owns the gate table (:data:`GATES`) and every check on
what a circuit may contain. Conventions are qiskit's / OpenQASM 3 ``stdgates.inc``.

Matrix convention of :data:`GATES`: a k-qubit gate's matrix is indexed by the local basis state
``|b(wires[0]) ... b(wires[k-1])>`` with ``wires[0]`` the *most* significant bit (textbook
order), so ``crz`` on wires ``(control, target)`` is ``diag(1, 1, e^{-i t/2}, e^{i t/2})``.
State vectors are little-endian instead (bit q of the basis index is qubit q, like qiskit);
the simulator translates between the two.
"""

from __future__ import annotations

import math
import numbers
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "DEFAULT_MAX_QUBITS",
    "GATES",
    "MAX_QUBITS_ENV",
    "Circuit",
    "CircuitError",
    "Gate",
    "GateSpec",
    "Param",
    "format_bytes",
    "max_qubits_limit",
]

DEFAULT_MAX_QUBITS = 20
MAX_QUBITS_ENV = "QWTHN_MAX_QUBITS"
FORMAT_VERSION = 1
_PARAM_KINDS = ("input", "weight", "const")
_PAULI_CHARS = frozenset("IXYZ")
_ALIASES = {"cnot": "cx"}


class CircuitError(ValueError):
    """Raised for any invalid circuit, circuit dict or simulator argument."""


# --------------------------------------------------------------------------------------------
# The gate table. Every gate has at most one angle t and its matrix is
# M(t) = constant + cos(f t) * cos_part + sin(f t) * sin_part, plain numpy data: the PyTorch
# simulator, the ONNX fallback and the checks build their matrices from it without a framework.
# --------------------------------------------------------------------------------------------

_SQRT_HALF = 1 / math.sqrt(2)
_T_PHASE = complex(_SQRT_HALF, _SQRT_HALF)
_I2 = np.eye(2)
_X = np.array([[0, 1], [1, 0]])
_Y = np.array([[0, -1j], [1j, 0]])
_Z = np.diag([1, -1])
_P0, _P1 = np.diag([1, 0]), np.diag([0, 1])  # |0><0|, |1><1|


@dataclass(frozen=True)
class GateSpec:
    """One row of the gate table: shape, matrix data and the structure the simulator fuses.

    ``diagonal`` gates merge into one phase vector; ``permutation`` gates (0/1 permutation
    matrices, never parameterised) merge into one index gather; ``real`` gates (real matrix for
    every angle) let the simulator use real instead of complex matmuls.
    """

    name: str
    n_qubits: int
    n_params: int
    frequency: float  # f in M(t) = constant + cos(f t) cos_part + sin(f t) sin_part
    constant: np.ndarray
    cos_part: np.ndarray
    sin_part: np.ndarray
    diagonal: bool = False
    permutation: bool = False
    real: bool = False

    def matrix(self, angle: float = 0.0) -> np.ndarray:
        """The gate's complex128 matrix at ``angle`` (ignored by fixed gates)."""
        f = self.frequency * angle
        return self.constant + math.cos(f) * self.cos_part + math.sin(f) * self.sin_part


def _frozen(m: Any) -> np.ndarray:
    array = np.array(m, dtype=np.complex128)
    array.setflags(write=False)
    return array


def _fixed(name: str, matrix: Any, **kw: bool) -> tuple[str, GateSpec]:
    m = _frozen(matrix)
    zero = _frozen(np.zeros_like(m))
    return name, GateSpec(name, int(np.log2(len(m))), 0, 0.0, m, zero, zero, **kw)


def _rotation(name: str, generator: Any, controlled: bool = False, **kw: bool):
    """``exp(-i t/2 G)`` for an involutory G (= cos(t/2) I - i sin(t/2) G), optionally
    controlled by the high local bit."""
    g = np.asarray(generator, dtype=np.complex128)
    eye = np.eye(len(g))
    if controlled:
        parts = (np.kron(_P0, eye), np.kron(_P1, eye), np.kron(_P1, -1j * g))
    else:
        parts = (np.zeros_like(g), eye, -1j * g)
    k = int(np.log2(len(parts[0])))
    return name, GateSpec(name, k, 1, 0.5, *(_frozen(p) for p in parts), **kw)


def _phase(name: str, projector: Any, **kw: bool) -> tuple[str, GateSpec]:
    """``I - Q + e^{i t} Q`` for a diagonal projector Q (p, cp)."""
    q = np.asarray(projector, dtype=np.complex128)
    parts = (np.eye(len(q)) - q, q, 1j * q)
    return name, GateSpec(name, int(np.log2(len(q))), 1, 1.0, *(_frozen(p) for p in parts), **kw)


GATES: dict[str, GateSpec] = dict(
    [
        _rotation("rx", _X),
        _rotation("ry", _Y, real=True),
        _rotation("rz", _Z, diagonal=True),
        _phase("p", _P1, diagonal=True),
        _fixed("h", [[_SQRT_HALF, _SQRT_HALF], [_SQRT_HALF, -_SQRT_HALF]], real=True),
        _fixed("x", _X, permutation=True, real=True),
        _fixed("y", _Y),
        _fixed("z", _Z, diagonal=True, real=True),
        _fixed("s", [[1, 0], [0, 1j]], diagonal=True),
        _fixed("sdg", [[1, 0], [0, -1j]], diagonal=True),
        _fixed("t", [[1, 0], [0, _T_PHASE]], diagonal=True),
        _fixed("tdg", [[1, 0], [0, _T_PHASE.conjugate()]], diagonal=True),
        _fixed("cx", np.kron(_P0, _I2) + np.kron(_P1, _X), permutation=True, real=True),
        _fixed("cy", np.kron(_P0, _I2) + np.kron(_P1, _Y)),
        _fixed("cz", np.kron(_P0, _I2) + np.kron(_P1, _Z), diagonal=True, real=True),
        _fixed(
            "swap",
            [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]],
            permutation=True,
            real=True,
        ),
        _rotation("crx", _X, controlled=True),
        _rotation("cry", _Y, controlled=True, real=True),
        _rotation("crz", _Z, controlled=True, diagonal=True),
        _phase("cp", np.kron(_P1, _P1), diagonal=True),
        _rotation("rzz", np.kron(_Z, _Z), diagonal=True),
        _rotation("rxx", np.kron(_X, _X)),
        _rotation("ryy", np.kron(_Y, _Y)),
    ]
)


# --------------------------------------------------------------------------------------------
# IR dataclasses
# --------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    """Integers, numpy ones included; bools are rejected (True is not a wire or index)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


@dataclass(frozen=True)
class Param:
    """A gate angle: an index into the circuit inputs or weights, or a constant in radians."""

    kind: Literal["input", "weight", "const"]
    value: float | int

    def __post_init__(self) -> None:
        if self.kind not in _PARAM_KINDS:
            raise CircuitError(
                f"Param kind {self.kind!r} is not one of {list(_PARAM_KINDS)}; "
                "use Param.input(i), Param.weight(i) or Param.const(angle)."
            )
        if self.kind == "const":
            if not isinstance(self.value, numbers.Real) or isinstance(self.value, bool):
                raise CircuitError(f"Param.const needs a real angle, got {self.value!r}.")
            object.__setattr__(self, "value", float(self.value))
        elif _is_int(self.value):
            object.__setattr__(self, "value", int(self.value))
        else:
            raise CircuitError(
                f"Param.{self.kind} needs an integer index, got {self.value!r} "
                f"({type(self.value).__name__})."
            )

    @classmethod
    def input(cls, index: int) -> Param:
        return cls("input", index)

    @classmethod
    def weight(cls, index: int) -> Param:
        return cls("weight", index)

    @classmethod
    def const(cls, angle: float) -> Param:
        return cls("const", angle)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}


@dataclass(frozen=True)
class Gate:
    """One gate application. Controlled gates take ``wires=(control, target)``."""

    name: str
    wires: tuple[int, ...]
    params: tuple[Param, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise CircuitError(f"Gate name must be a string, got {self.name!r}.")
        name = self.name.lower()
        object.__setattr__(self, "name", _ALIASES.get(name, name))
        for attr in ("wires", "params"):
            value = getattr(self, attr)
            if not isinstance(value, tuple | list):
                raise CircuitError(f"Gate {attr} must be a tuple, got {value!r}.")
            object.__setattr__(self, attr, tuple(value))
        # numpy integer wires become ints so that equal gates compare and hash equal
        wires = tuple(int(w) if _is_int(w) else w for w in self.wires)
        object.__setattr__(self, "wires", wires)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "wires": list(self.wires),
            "params": [p.to_dict() for p in self.params],
        }


def max_qubits_limit(max_qubits: int | None = None) -> int:
    """The qubit limit in force: the argument, else ``$QWTHN_MAX_QUBITS``, else 20."""
    if max_qubits is not None:
        return max_qubits
    raw = os.environ.get(MAX_QUBITS_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_QUBITS
    try:
        return int(raw)
    except ValueError:
        raise CircuitError(
            f"{MAX_QUBITS_ENV}={raw!r} is not an integer; set it to the largest qubit count "
            "you want to allow, e.g. 24."
        ) from None


def format_bytes(n_bytes: float) -> str:
    """Human units (KiB, MiB, ...) for memory figures in error messages."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"]
    value = float(n_bytes)
    for unit in units[:-1]:
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {units[-1]}"


@dataclass(frozen=True)
class Circuit:
    """A parameterised circuit with Pauli-string observables.

    ``observables`` are strings of length ``n_qubits`` over ``IXYZ`` where character ``i`` acts
    on qubit ``i``. Note that qiskit's Pauli labels are the reverse (rightmost char = qubit 0);
    use :func:`qwthn_onnx.circuit.qiskit_bridge.observables_to_qiskit` to convert.

    ``max_qubits`` only raises the size limit checked at construction (see :meth:`validate`); it
    is not part of equality, hashing or :meth:`to_dict`.
    """

    n_qubits: int
    gates: tuple[Gate, ...]
    observables: tuple[str, ...]
    n_inputs: int
    n_weights: int
    max_qubits: int | None = field(default=None, compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gates", tuple(self.gates))
        object.__setattr__(self, "observables", tuple(self.observables))
        self.validate(self.max_qubits)

    # Hashing a few hundred gates on every simulator call would show up in profiles, so the
    # hash is cached; it is dropped on pickling because str hashes differ between processes.
    def __hash__(self) -> int:
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(
                (self.n_qubits, self.gates, self.observables, self.n_inputs, self.n_weights)
            )
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def n_observables(self) -> int:
        return len(self.observables)

    @property
    def n_gates(self) -> int:
        return len(self.gates)

    @property
    def n_parameters(self) -> int:
        """Trainable parameter count (the weights)."""
        return self.n_weights

    def validate(self, max_qubits: int | None = None) -> None:
        """Raise :class:`CircuitError` naming the first problem found and how to fix it.

        ``max_qubits`` overrides the qubit limit (else ``$QWTHN_MAX_QUBITS``, else 20).
        """
        for name in ("n_qubits", "n_inputs", "n_weights"):
            value = getattr(self, name)
            if not _is_int(value):
                raise CircuitError(f"{name} must be an int, got {value!r}.")
        if self.n_qubits < 1:
            raise CircuitError(f"n_qubits must be >= 1, got {self.n_qubits}.")
        if self.n_inputs < 0 or self.n_weights < 0:
            raise CircuitError(
                f"n_inputs and n_weights must be >= 0, got {self.n_inputs} and {self.n_weights}."
            )
        limit = max_qubits_limit(max_qubits)
        if self.n_qubits > limit:
            n = self.n_qubits
            # 2**n itself would take forever for an absurd n (a damaged or hostile file)
            memory = (
                f"{format_bytes(8 * 2**n)} in complex64 and {format_bytes(16 * 2**n)} in complex128"
                if n <= 256
                else f"8 x 2^{n} bytes"
            )
            raise CircuitError(
                f"Circuit has {n} qubits, more than the limit of {limit}: one {n}-qubit state "
                f"vector needs {memory} (per sample). "
                f"If you really mean it, raise the limit with the environment variable "
                f"{MAX_QUBITS_ENV}={self.n_qubits} or max_qubits={self.n_qubits} "
                "(Circuit(..., max_qubits=N) / Circuit.validate(max_qubits=N))."
            )
        for index, gate in enumerate(self.gates):
            self._validate_gate(index, gate)
        self._validate_observables()

    def _validate_gate(self, index: int, gate: Gate) -> None:
        if not isinstance(gate, Gate):
            raise CircuitError(f"gate {index} is a {type(gate).__name__}, expected a Gate.")
        where = f"gate {index} ({gate.name} on wires {gate.wires})"
        spec = GATES.get(gate.name)
        if spec is None:
            raise CircuitError(
                f"{where}: unknown gate {gate.name!r}; supported gates are {sorted(GATES)} "
                f"(aliases: {_ALIASES})."
            )
        if len(gate.wires) != spec.n_qubits:
            raise CircuitError(
                f"{where}: {gate.name} acts on {spec.n_qubits} wire(s), got {len(gate.wires)}."
            )
        if len(gate.params) != spec.n_params:
            raise CircuitError(
                f"{where}: {gate.name} takes {spec.n_params} param(s), got {len(gate.params)}."
            )
        for wire in gate.wires:
            if not _is_int(wire) or not 0 <= wire < self.n_qubits:
                raise CircuitError(
                    f"{where}: wire {wire!r} is out of range for a {self.n_qubits}-qubit "
                    f"circuit (valid wires are 0..{self.n_qubits - 1})."
                )
        if len(set(gate.wires)) != len(gate.wires):
            raise CircuitError(f"{where}: repeated wire; a gate's wires must be distinct.")
        for param in gate.params:
            if not isinstance(param, Param):
                raise CircuitError(f"{where}: param {param!r} is not a Param.")
            if param.kind == "const":
                if not math.isfinite(param.value):
                    raise CircuitError(f"{where}: const angle {param.value} is not finite.")
                continue
            size = self.n_inputs if param.kind == "input" else self.n_weights
            if not 0 <= param.value < size:
                raise CircuitError(
                    f"{where}: {param.kind} index {param.value} is out of range; the circuit "
                    f"declares n_{param.kind}s={size}, so indices must be in 0..{size - 1}. "
                    f"Increase n_{param.kind}s or fix the index."
                )

    def _validate_observables(self) -> None:
        if not self.observables:
            raise CircuitError(
                "Circuit has no observables; add at least one Pauli string, e.g. "
                f"{'Z' + 'I' * (self.n_qubits - 1)!r} for <Z_0>."
            )
        for index, obs in enumerate(self.observables):
            if not isinstance(obs, str):
                raise CircuitError(f"observable {index} must be a string, got {obs!r}.")
            if len(obs) != self.n_qubits:
                raise CircuitError(
                    f"observable {index} {obs!r} has length {len(obs)}; Pauli strings need "
                    f"exactly n_qubits={self.n_qubits} characters (character i acts on qubit i)."
                )
            bad = sorted(set(obs) - _PAULI_CHARS)
            if bad:
                raise CircuitError(
                    f"observable {index} {obs!r} has invalid characters {bad}; use only "
                    "'I', 'X', 'Y', 'Z' (upper case)."
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; :meth:`from_dict` restores an equal circuit."""
        return {
            "format_version": FORMAT_VERSION,
            "n_qubits": self.n_qubits,
            "n_inputs": self.n_inputs,
            "n_weights": self.n_weights,
            "observables": list(self.observables),
            "gates": [g.to_dict() for g in self.gates],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], max_qubits: int | None = None) -> Circuit:
        """Parse and validate a dict from :meth:`to_dict` (e.g. read back from JSON/ONNX)."""
        data = _check_keys(
            "circuit",
            data,
            required=("n_qubits", "n_inputs", "n_weights", "observables", "gates"),
            optional=("format_version",),
        )
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise CircuitError(
                f"circuit['format_version'] is {version!r}; this version of qwthn_onnx reads "
                f"format_version {FORMAT_VERSION} only."
            )
        gates_data = _check_list("circuit['gates']", data["gates"])
        observables = _check_list("circuit['observables']", data["observables"])
        gates = tuple(_gate_from_dict(i, g) for i, g in enumerate(gates_data))
        return cls(
            n_qubits=data["n_qubits"],
            gates=gates,
            observables=tuple(observables),
            n_inputs=data["n_inputs"],
            n_weights=data["n_weights"],
            max_qubits=max_qubits,
        )

    def __str__(self) -> str:
        counts = ", ".join(
            f"{n}: {c}" for n, c in sorted(Counter(g.name for g in self.gates).items())
        )
        return (
            f"Circuit({self.n_qubits} qubits, {self.n_gates} gates [{counts}], "
            f"{self.n_inputs} inputs, {self.n_weights} weights, {self.n_observables} observables)"
        )


def _check_keys(
    where: str, data: object, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise CircuitError(f"{where} must be a dict, got {type(data).__name__}.")
    for key in required:
        if key not in data:
            raise CircuitError(f"{where} is missing the key {key!r}.")
    unknown = sorted(set(data) - set(required) - set(optional), key=str)
    if unknown:
        raise CircuitError(
            f"{where} has unknown key(s) {unknown}; expected {sorted(required + optional)}."
        )
    return data


def _check_list(where: str, value: object) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise CircuitError(f"{where} must be a list, got {type(value).__name__}.")
    return list(value)


def _gate_from_dict(index: int, data: object) -> Gate:
    where = f"circuit['gates'][{index}]"
    data = _check_keys(where, data, required=("name", "wires"), optional=("params",))
    wires = _check_list(f"{where}['wires']", data["wires"])
    params = []
    for j, p in enumerate(_check_list(f"{where}['params']", data.get("params", []))):
        p_where = f"{where}['params'][{j}]"
        p = _check_keys(p_where, p, required=("kind", "value"))
        try:
            params.append(Param(p["kind"], p["value"]))
        except CircuitError as err:
            raise CircuitError(f"{p_where}: {err}") from None
    try:
        return Gate(data["name"], tuple(wires), tuple(params))
    except CircuitError as err:
        raise CircuitError(f"{where}: {err}") from None
