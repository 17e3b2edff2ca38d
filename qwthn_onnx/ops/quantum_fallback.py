"""``QuantumLayer`` as a function of standard ONNX ops, generated from a circuit.

onnxruntime has no complex tensors, so the state is two float tensors ``[B, 2^n]`` (real and
imaginary parts). Gate formulas are not written by hand: every gate's matrix has the form
``M(t) = C + A cos(f t) + B sin(f t)`` with ``f`` in {1/2, 1}, so three evaluations of the gate
table's own matrix function give ``A, B, C`` (and a fourth, at a random angle, checks it). Then:

- runs of diagonal gates (rz, crz, rzz, cz, p, ...) are one phase: each contributes an angle
  ``a(k) t + b(k)`` per basis state, the run's angles are summed, and one cos/sin and one
  complex multiply apply it (a whole CRZ ring is one multiply);
- runs of permutation gates (x, cx, swap) are one ``Gather`` with a composed index;
- any other gate is an ``Einsum`` of its 2x2 / 4x4 matrix with the state, real and imaginary
  parts apart (per-sample matrices when the gate reads an input).

Expectations: observables are grouped by their X/Y flip mask ``m``;
``<P> = Re sum_k conj(psi_k) c_k psi_{k^m}`` with a constant phase ``c_k`` per observable, i.e.
two MatMuls per group.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from qwthn_onnx.circuit import GATES, Circuit, Gate, Param
from qwthn_onnx.ops.schemas import DOMAIN

__all__ = ["quantum_layer_function"]

ENCODING_ATTRIBUTES = (
    "encoding_version", "n_qubits", "n_inputs", "n_weights",
    "gates", "params", "constants", "observables",
)  # fmt: skip


@dataclass(frozen=True)
class _Trig:
    """``M(t) = C + A cos(f t) + B sin(f t)`` for one gate type (complex numpy matrices)."""

    f: float
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray


def _matrix(name: str, angle: float) -> np.ndarray:
    params = torch.tensor([angle] * GATES[name].n_params, dtype=torch.float64)
    return GATES[name].matrix(params).numpy()


def _frozen(*arrays: np.ndarray) -> None:
    for array in arrays:
        array.setflags(write=False)


@functools.cache
def _trig(name: str) -> _Trig:
    """Per gate type, computed once (a circuit repeats a handful of gate types many times)."""
    spec = GATES[name]
    if spec.n_params == 0:
        m = _matrix(name, 0.0)
        zeros = np.zeros_like(m)
        _frozen(m, zeros)
        return _Trig(1.0, zeros, zeros, m)
    probe = 0.7312
    for f in (0.5, 1.0):
        m0, m_pi, m_half = (_matrix(name, x / f) for x in (0.0, math.pi, math.pi / 2))
        a, c = (m0 - m_pi) / 2, (m0 + m_pi) / 2
        b = m_half - c
        if np.allclose(c + a * math.cos(f * probe) + b * math.sin(f * probe), _matrix(name, probe)):
            _frozen(a, b, c)
            return _Trig(f, a, b, c)
    raise NotImplementedError(f"gate {name!r} is not of the form C + A cos(ft) + B sin(ft)")


@functools.cache
def _diagonal_phase(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` with ``M(t)_kk = exp(i (a_k t + b_k))`` for a diagonal gate."""
    spec = GATES[name]
    d0 = np.diag(_matrix(name, 0.0))
    b = np.angle(d0)
    if spec.n_params == 0:
        a = np.zeros_like(b)
        _frozen(a, b)
        return a, b
    step = 0.1
    a = np.angle(np.diag(_matrix(name, step)) / d0) / step
    probe = 0.913
    if not np.allclose(np.exp(1j * (a * probe + b)), np.diag(_matrix(name, probe))):
        raise NotImplementedError(f"diagonal gate {name!r} has a phase non-linear in its angle")
    _frozen(a, b)
    return a, b


def _local_index(n_qubits: int, wires: tuple[int, ...]) -> np.ndarray:
    """Per basis state k, the index into the gate's sub-state (``wires[0]`` most significant)."""
    k = np.arange(2**n_qubits)
    local = np.zeros_like(k)
    for w in wires:
        local = (local << 1) | ((k >> w) & 1)
    return local


@dataclass
class _Builder:
    """Emits nodes with unique names into one function body."""

    n_qubits: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    counter: itertools.count = field(default_factory=itertools.count)
    constants: dict[tuple, str] = field(default_factory=dict)

    def name(self, hint: str) -> str:
        return f"{hint}_{next(self.counter)}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def const(
        self, value: np.ndarray | float | list, hint: str = "c", float_like: bool = True
    ) -> str:
        """A constant (emitted once per value); floats are cast to the input dtype (CastLike)."""
        array = np.asarray(value, dtype=np.float64 if float_like else np.int64)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.constants:
            out = self.name(hint)
            self.nodes.append(
                helper.make_node("Constant", [], [out], value=numpy_helper.from_array(array))
            )
            self.constants[key] = self.op("CastLike", [out, "x2"], hint) if float_like else out
        return self.constants[key]


def _angle(b: _Builder, p: Param, cache: dict[Param, str]) -> str:
    """The parameter's value: ``[B, 1]`` for inputs, ``[1]`` for weights and constants."""
    if p not in cache:
        if p.kind == "input":
            index = b.const([int(p.value)], "idx", float_like=False)
            cache[p] = b.op("Gather", ["x2", index], "theta", axis=1)
        elif p.kind == "weight":
            index = b.const([int(p.value)], "idx", float_like=False)
            cache[p] = b.op("Gather", ["weights_cast", index], "theta", axis=0)
        else:
            cache[p] = b.const([float(p.value)], "theta")
    return cache[p]


def _complex_mul(b: _Builder, xr: str, xi: str, yr: str, yi: str) -> tuple[str, str]:
    re = b.op("Sub", [b.op("Mul", [xr, yr]), b.op("Mul", [xi, yi])], "re")
    im = b.op("Add", [b.op("Mul", [xr, yi]), b.op("Mul", [xi, yr])], "im")
    return re, im


def _apply_diagonal_run(b: _Builder, gates: list[Gate], state, cache) -> tuple[str, str]:
    n = b.n_qubits
    constant_angle = np.zeros(2**n)
    terms = []
    for gate in gates:
        a, offset = _diagonal_phase(gate.name)
        local = _local_index(n, gate.wires)
        constant_angle += offset[local]
        if gate.params:
            slope = b.const(a[local][None, :], "slope")  # [1, 2^n]
            terms.append(b.op("Mul", [_angle(b, gate.params[0], cache), slope], "phase"))
    angle = b.const(constant_angle[None, :], "phase")
    for term in terms:
        angle = b.op("Add", [angle, term], "phase")
    return _complex_mul(b, *state, b.op("Cos", [angle]), b.op("Sin", [angle]))


def _apply_permutation_run(b: _Builder, gates: list[Gate], state) -> tuple[str, str]:
    n = b.n_qubits
    source = np.arange(2**n)
    for gate in gates:
        matrix = _matrix(gate.name, 0.0).real.round().astype(int)
        local = _local_index(n, gate.wires)
        # new[k] = old[k with the gate's bits replaced by the preimage of local(k)]
        preimage = np.argmax(matrix, axis=1)[local]
        k = np.arange(2**n)
        mask = sum(1 << w for w in gate.wires)
        src = k & ~mask
        for i, w in enumerate(reversed(gate.wires)):
            src |= ((preimage >> i) & 1) << w
        source = source[src]
    index = b.const(source, "perm", float_like=False)
    return tuple(b.op("Gather", [s, index], "perm", axis=1) for s in state)


def _gate_matrix(b: _Builder, gate: Gate, cache) -> tuple[str, str]:
    """Real and imaginary parts of the gate's matrix, ``[1 or B, out wires..., in wires...]``."""
    trig, k = _trig(gate.name), len(gate.wires)
    tensor_shape = (1,) + (2,) * (2 * k)  # [1 or B, out wires..., in wires...]
    trig_values = []
    if gate.params:
        angle = b.op("Mul", [_angle(b, gate.params[0], cache), b.const([trig.f])], "angle")
        as_matrix = b.const([-1] + [1] * (2 * k), "s", float_like=False)
        trig_values = [
            (trig.a, b.op("Reshape", [b.op("Cos", [angle]), as_matrix])),
            (trig.b, b.op("Reshape", [b.op("Sin", [angle]), as_matrix])),
        ]

    def matrix_part(take) -> str:
        term = b.const(take(trig.c).reshape(tensor_shape), "m")
        for coeff, value in trig_values:
            if np.any(take(coeff)):
                scaled = b.op("Mul", [value, b.const(take(coeff).reshape(tensor_shape))])
                term = b.op("Add", [term, scaled], "m")
        return term

    return matrix_part(np.real), matrix_part(np.imag)


def _apply_dense(b: _Builder, gate: Gate, state, cache) -> tuple[str, str]:
    n, k = b.n_qubits, len(gate.wires)
    dynamic = any(p.kind == "input" for p in gate.params)
    mr, mi = _gate_matrix(b, gate, cache)
    # State axes: [B, (blocks of 2^... separated by the gate's wires, most significant first)].
    wires_desc = sorted(gate.wires, reverse=True)
    shape, prev = [-1], n
    for w in wires_desc:
        shape += [2 ** (prev - 1 - w), 2]
        prev = w
    shape.append(2**prev)
    letters = "acegi"[: len(wires_desc) + 1]
    state_in = "Z" + "".join(f"{letters[i]}{'uv'[i]}" for i in range(k)) + letters[k]
    out_of = {w: o for w, o in zip(wires_desc, "xy", strict=False)}
    in_of = {w: i for w, i in zip(wires_desc, "uv", strict=False)}
    matrix = ("Z" if dynamic else "") + "".join(out_of[w] for w in gate.wires)
    matrix += "".join(in_of[w] for w in gate.wires)
    state_out = "Z" + "".join(f"{letters[i]}{'xy'[i]}" for i in range(k)) + letters[k]
    equation = f"{matrix},{state_in}->{state_out}"
    if not dynamic:  # one matrix for the whole batch: drop its unit batch axis
        squeeze = b.const([0], "axes", float_like=False)
        mr, mi = (b.op("Squeeze", [m, squeeze]) for m in (mr, mi))
    reshape = b.const(shape, "shape", False)
    sr, si = (b.op("Reshape", [s, reshape]) for s in state)

    def es(m: str, s: str) -> str:
        return b.op("Einsum", [m, s], "es", equation=equation)

    re = b.op("Sub", [es(mr, sr), es(mi, si)])
    im = b.op("Add", [es(mr, si), es(mi, sr)])
    flat = b.const([-1, 2**n], "flat", False)
    return b.op("Reshape", [re, flat], "re"), b.op("Reshape", [im, flat], "im")


KRON_BLOCK = 5  # qubits per fused single-qubit block: one 32x32 complex GEMM per block


def _run_kind(gate: Gate) -> str:
    spec = GATES[gate.name]
    if spec.diagonal:
        return "diag"
    if spec.permutation:
        return "perm"
    if spec.n_qubits == 1 and all(p.kind != "input" for p in gate.params):
        return "layer"  # batch-independent one-qubit gates: fused into Kronecker blocks
    return "dense"


def _apply_single_qubit_layer(b: _Builder, gates: list[Gate], state, cache) -> tuple[str, str]:
    """Batch-independent one-qubit gates as Kronecker blocks of contiguous qubits.

    Per qubit, the run's 2x2 matrices are multiplied in order; then each block of up to
    ``KRON_BLOCK`` consecutive qubits is one ``[2^g, 2^g]`` matrix applied with one Einsum.
    """
    n = b.n_qubits
    squeeze = b.const([0], "axes", float_like=False)
    per_qubit: dict[int, tuple[str, str]] = {}
    for gate in gates:  # in time order: M = M_new @ M_old
        m = tuple(b.op("Squeeze", [t, squeeze]) for t in _gate_matrix(b, gate, cache))
        q = gate.wires[0]
        if q in per_qubit:
            old = per_qubit[q]
            m = (
                b.op("Sub", [b.op("MatMul", [m[0], old[0]]), b.op("MatMul", [m[1], old[1]])]),
                b.op("Add", [b.op("MatMul", [m[0], old[1]]), b.op("MatMul", [m[1], old[0]])]),
            )
        per_qubit[q] = m
    qubits = sorted(per_qubit, reverse=True)  # most significant first
    blocks: list[list[int]] = []
    for q in qubits:
        if blocks and blocks[-1][-1] == q + 1 and len(blocks[-1]) < KRON_BLOCK:
            blocks[-1].append(q)
        else:
            blocks.append([q])
    for block in blocks:
        kr, ki = per_qubit[block[0]]
        for q in block[1:]:  # kron(K, M)[(a b), (c d)] = K[a, c] M[b, d]
            mr, mi = per_qubit[q]
            size = b.const([2 ** (block.index(q) + 1)] * 2, "kshape", float_like=False)

            def kron(x: str, y: str, size: str = size) -> str:
                return b.op("Reshape", [b.op("Einsum", [x, y], equation="ac,bd->abcd"), size])

            kr, ki = (
                b.op("Sub", [kron(kr, mr), kron(ki, mi)], "kr"),
                b.op("Add", [kron(kr, mi), kron(ki, mr)], "ki"),
            )
        hi, lo = block[0], block[-1]
        shape = b.const([-1, 2 ** (n - 1 - hi), 2 ** len(block), 2**lo], "shape", False)
        sr, si = (b.op("Reshape", [t, shape]) for t in state)

        def es(m: str, s: str) -> str:
            return b.op("Einsum", [m, s], "es", equation="ij,zajc->zaic")

        flat = b.const([-1, 2**n], "flat", float_like=False)
        state = (
            b.op("Reshape", [b.op("Sub", [es(kr, sr), es(ki, si)]), flat], "re"),
            b.op("Reshape", [b.op("Add", [es(kr, si), es(ki, sr)]), flat], "im"),
        )
    return state


def _split_prefix(circuit: Circuit) -> tuple[list[list[Gate]], list[Gate]]:
    """Leading one-qubit gates per qubit (before any multi-qubit gate on it), and the rest.

    Moving them first is exact: a one-qubit gate commutes with gates on other wires.
    """
    prefix: list[list[Gate]] = [[] for _ in range(circuit.n_qubits)]
    rest, blocked = [], set()
    for gate in circuit.gates:
        if len(gate.wires) == 1 and gate.wires[0] not in blocked:
            prefix[gate.wires[0]].append(gate)
        else:
            blocked.update(gate.wires)
            rest.append(gate)
    return prefix, rest


def _product_state(b: _Builder, prefix: list[list[Gate]], cache) -> tuple[str, str]:
    """``kron`` of the per-qubit states ``M_last ... M_first |0>``: ``[1 or B, 2^n]``."""
    state = None
    for gates in prefix:
        vr, vi = b.const([[1.0, 0.0]], "v"), b.const([[0.0, 0.0]], "v")  # [1, 2]
        for gate in gates:
            mr, mi = _gate_matrix(b, gate, cache)  # [1 or B, 2, 2]
            axis = b.const([1], "axes", float_like=False)
            ur, ui = (b.op("Unsqueeze", [v, axis]) for v in (vr, vi))  # [., 1, 2]
            pr, pi = _complex_mul(b, mr, mi, ur, ui)
            last = b.const([2], "axes", float_like=False)
            vr, vi = (b.op("ReduceSum", [t, last], "v", keepdims=0) for t in (pr, pi))
        if state is None:
            state = (vr, vi)
            continue
        # new[bit_q * 2^q + rest] = v_q[bit_q] * state[rest]: qubit q is the new top bit.
        col, row = b.const([2], "axes", float_like=False), b.const([1], "axes", float_like=False)
        v = tuple(b.op("Unsqueeze", [t, col]) for t in (vr, vi))  # [., 2, 1]
        old = tuple(b.op("Unsqueeze", [t, row]) for t in state)  # [., 1, S]
        flat = b.const([0, -1], "flat", float_like=False)
        state = tuple(b.op("Reshape", [t, flat], "psi") for t in _complex_mul(b, *v, *old))
    return state


def _expectations(b: _Builder, circuit: Circuit, state) -> str:
    n, sr, si = circuit.n_qubits, *state
    k = np.arange(2**n)
    groups: dict[int, list[int]] = {}
    for o, obs in enumerate(circuit.observables):
        mask = sum(1 << q for q, c in enumerate(obs) if c in "XY")
        groups.setdefault(mask, []).append(o)
    outputs, order = [], []
    for mask, members in groups.items():
        phases = np.ones((2**n, len(members)), dtype=complex)
        for col, o in enumerate(members):
            for q, c in enumerate(circuit.observables[o]):
                bit = (k >> q) & 1
                if c == "Z":
                    phases[:, col] *= 1 - 2 * bit
                elif c == "Y":
                    phases[:, col] *= np.where(bit == 0, -1j, 1j)
        if mask:
            index = b.const(k ^ mask, "flip", float_like=False)
            fr, fi = (b.op("Gather", [s, index], "flip", axis=1) for s in (sr, si))
        else:
            fr, fi = sr, si
        ur = b.op("Add", [b.op("Mul", [sr, fr]), b.op("Mul", [si, fi])], "ur")
        ui = b.op("Sub", [b.op("Mul", [sr, fi]), b.op("Mul", [si, fr])], "ui")
        value = b.op("MatMul", [ur, b.const(phases.real, "pr")])
        if np.any(phases.imag):
            value = b.op("Sub", [value, b.op("MatMul", [ui, b.const(phases.imag, "pi")])])
        outputs.append(value)
        order += members
    y = outputs[0] if len(outputs) == 1 else b.op("Concat", outputs, "y", axis=1)
    if order != sorted(order):
        y = b.op("Gather", [y, b.const(np.argsort(order), "order", False)], "y", axis=1)
    return y


def quantum_layer_function(circuit: Circuit, opset: int) -> onnx.FunctionProto:
    """The ``ai.qwthn::QuantumLayer`` function body for ``circuit`` (standard opset ``opset``).

    Inputs ``x[..., n_inputs]`` (float or double) and ``weights[n_weights]``; output
    ``y[..., n_observables]`` with x's leading dims and dtype.
    """
    n = circuit.n_qubits
    b = _Builder(n)
    x2_shape = b.const([-1, circuit.n_inputs], "x2_shape", float_like=False)
    b.nodes.append(helper.make_node("Reshape", ["x", x2_shape], ["x2"]))  # [B, n_inputs]
    b.nodes.append(helper.make_node("CastLike", ["weights", "x2"], ["weights_cast"]))
    cache: dict[Param, str] = {}
    prefix, rest = _split_prefix(circuit)
    batch = b.op("Shape", ["x2"], "batch", start=0, end=1)
    target = b.op("Concat", [batch, b.const([2**n], "size", False)], "state_shape", axis=0)
    state = tuple(b.op("Expand", [t, target], "psi") for t in _product_state(b, prefix, cache))
    for kind, run in itertools.groupby(rest, key=_run_kind):
        run = list(run)
        if kind == "diag":
            state = _apply_diagonal_run(b, run, state, cache)
        elif kind == "perm":
            state = _apply_permutation_run(b, run, state)
        elif kind == "layer":
            state = _apply_single_qubit_layer(b, run, state, cache)
        else:
            for gate in run:
                state = _apply_dense(b, gate, state, cache)
    y = _expectations(b, circuit, state)
    lead = b.op("Shape", ["x"], "lead", end=-1)
    out_shape = b.op("Concat", [lead, b.const([circuit.n_observables], "nobs", False)], axis=0)
    b.nodes.append(helper.make_node("Reshape", [y, out_shape], ["y"]))
    return helper.make_function(
        DOMAIN,
        "QuantumLayer",
        ["x", "weights"],
        ["y"],
        b.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=list(ENCODING_ATTRIBUTES),
    )
