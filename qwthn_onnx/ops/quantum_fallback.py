"""``QuantumLayer`` as a function of standard ONNX ops, generated from a circuit.

Why the body looks like this: a runtime without our op library inlines one copy of this body
per ``QuantumLayer`` node, and onnxruntime's function inliner and optimiser (mostly constant
folding of the weight-only subgraphs) take time superlinear in the inlined graph, so the body's
node count sets every plain-onnxruntime deployment's load time. A body with a few nodes per
gate (5,933 for the paper's 10-qubit, 10-layer circuit) made a 60-adapter SmolLM2 export take
~7 minutes to load; this one is vectorised over gates, so it grows with the number of gate
*runs* (592 nodes for that circuit), and each run's weight-only work folds to constants.

Representation: onnxruntime has no complex tensors, so a complex tensor is a real one with a
leading "stack" axis: ``[1, ...]`` when it is known to be real, ``[re; im]`` = ``[2, ...]``
otherwise. The state is ``[S, 2^n, B or 1]`` (qubit q is bit q of the basis index; the batch
last, so that basis permutations gather whole rows). A real operator (RY, H, CX) acts on both
parts with one op; a complex ``K`` acts as ``sum_s E[:, s] * T[s]`` with the real embedding
``E = [[K_re, -K_im], [K_im, K_re]]`` (weight-only, so constant-folded): one op and a
ReduceSum. Gate matrices are not written by hand: every gate's matrix is
``C + A cos(f t) + B sin(f t)`` with ``f`` in {1/2, 1}, found from the gate table's own matrix
function. Then:

- the leading one-qubit gates of every qubit give a product state: all their matrices are
  built at once (one ``Gather`` of the angles, one ``Cos``/``Sin``, ``C + A cos + B sin`` over a
  ``[S, B, G, 2, 2]`` stack) and multiplied per qubit by depth; the amplitudes of each block of
  up to ``KRON_BLOCK`` qubits are one ``Gather`` of per-qubit entries and a ``ReduceProd``, and
  the blocks' outer product is the state;
- a run of other one-qubit, non-diagonal gates is the same stack, then one Kronecker matrix per
  block of up to ``KRON_BLOCK`` consecutive qubits (``Gather`` + ``ReduceProd`` again), applied
  with one broadcast ``MatMul`` (per-sample matrices, from gates that read an input, qubit by
  qubit with a ``Mul`` and a ``ReduceSum``);
- a run of diagonal gates (rz, crz, cz, p, ...) is one phase ``const + S @ theta`` per basis
  state (one ``Gather``, one ``MatMul`` with a constant slope matrix), one ``Cos``/``Sin`` and
  one complex multiply: a whole CRZ ring is a handful of nodes;
- a run of permutation gates (x, cx, swap) is one ``Gather`` with a composed index;
- any other (two-qubit) gate is its 4x4 matrix applied like a block, between two ``Gather``s
  that move its wires to the lowest bits and back.

Expectations: observables are grouped by their X/Y flip mask ``m``;
``<P> = Re sum_k conj(psi_k) c_k psi_{k^m}`` with a constant phase ``c_k`` per observable, i.e.
one ``MatMul`` (two with imaginary phases) per group.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qwthn_onnx.circuit import GATES, Circuit, Gate, Param
from qwthn_onnx.ops.schemas import DOMAIN

__all__ = ["MIN_OPSET", "quantum_layer_function"]

ENCODING_ATTRIBUTES = (
    "encoding_version", "n_qubits", "n_inputs", "n_weights",
    "gates", "params", "constants", "observables",
)  # fmt: skip

MIN_OPSET = 15  # CastLike
KRON_BLOCK = 5  # qubits per fused one-qubit block: one 32x32 matrix per block
FREQUENCIES = (0.5, 1.0)  # f in M(t) = C + A cos(f t) + B sin(f t)


@dataclass(frozen=True)
class _Trig:
    """``M(t) = C + A cos(f t) + B sin(f t)`` for one gate type (complex numpy matrices)."""

    f: float
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray


def _matrix(name: str, angle: float) -> np.ndarray:
    return GATES[name].matrix(angle)


def _frozen(*arrays: np.ndarray) -> None:
    for array in arrays:
        array.setflags(write=False)


def _snapped(m: np.ndarray) -> np.ndarray:
    """Rounding noise (e.g. the 1e-16 imaginary part of exp(i*pi)) set to 0, so a factor that
    is exactly real stays a real one in the graph."""
    return np.where(np.abs(m.real) < 1e-12, 0, m.real) + 1j * np.where(
        np.abs(m.imag) < 1e-12, 0, m.imag
    )


def _trig(name: str) -> _Trig:
    """The gate table's ``C + A cos(f t) + B sin(f t)`` form of one gate type."""
    spec = GATES[name]
    if spec.n_params and spec.frequency not in FREQUENCIES:
        raise NotImplementedError(f"gate {name!r} has frequency {spec.frequency}")
    return _Trig(spec.frequency or 1.0, spec.cos_part, spec.sin_part, spec.constant)


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


def _bits(values: np.ndarray, bit: int) -> np.ndarray:
    return (values >> bit) & 1


@dataclass(frozen=True)
class _Complex:
    """A complex tensor as a real one with a leading stack axis: ``[1, ...]`` if real, else
    ``[re; im]``. ``batched``: axis 1 is the batch (else it has size 1 and broadcasts)."""

    name: str
    complex: bool
    batched: bool


@dataclass
class _Builder:
    """Emits nodes with unique names into one function body, and the shared angle sources."""

    circuit: Circuit
    opset: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    counter: itertools.count = field(default_factory=itertools.count)
    constants: dict[tuple, str] = field(default_factory=dict)
    shared: dict[str, str] = field(default_factory=dict)
    const_angles: list[float] = field(init=False)

    def __post_init__(self) -> None:
        # theta = [weights..., 0, const angles...]: every weight or constant angle is one index.
        values = [0.0] + [
            p.value for g in self.circuit.gates for p in g.params if p.kind == "const"
        ]
        self.const_angles = list(dict.fromkeys(values))

    def name(self, hint: str) -> str:
        return f"{hint}_{next(self.counter)}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def multi(self, op_type: str, inputs: list[str], n: int, hint: str, **attrs) -> list[str]:
        outs = [self.name(hint) for _ in range(n)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs

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
            self.constants[key] = self.op("CastLike", [out, "x"], hint) if float_like else out
        return self.constants[key]

    def ints(self, values: np.ndarray | list, hint: str = "i") -> str:
        return self.const(values, hint, float_like=False)

    def reduce(self, op_type: str, x: str, axis: int, hint: str) -> str:
        """``op_type`` over one axis, dropped (axes became an input in opset 18)."""
        if self.opset >= 18 or op_type == "ReduceSum":
            return self.op(op_type, [x, self.ints([axis], "axes")], hint, keepdims=0)
        return self.op(op_type, [x], hint, axes=[axis], keepdims=0)

    def split(self, x: str, n: int, axis: int, hint: str) -> list[str]:
        """``n`` equal parts along ``axis`` (``num_outputs`` is required from opset 18)."""
        attrs = {"num_outputs": n} if self.opset >= 18 else {}
        return self.multi("Split", [x], n, hint, axis=axis, **attrs)

    def cached(self, key: str, build: Callable[[], str]) -> str:
        if key not in self.shared:
            self.shared[key] = build()
        return self.shared[key]

    # Angle sources ---------------------------------------------------------------------------

    def theta_index(self, p: Param | None) -> int:
        """Index into ``theta``; ``None`` (a parameterless gate) points at the constant 0."""
        if p is not None and p.kind == "weight":
            return int(p.value)
        value = 0.0 if p is None else p.value
        return self.circuit.n_weights + self.const_angles.index(value)

    def theta(self) -> str:
        """``[n_weights + n_const]``: the weights, then the circuit's constant angles."""
        return self.cached(
            "theta",
            lambda: self.op(
                "Concat", ["weights_cast", self.const(self.const_angles, "angles")], axis=0
            ),
        )

    def x2(self) -> str:
        """``[B, n_inputs]``: x with its leading dims flattened (only built when a gate reads an
        input: with ``n_inputs = 0`` the batch size cannot be inferred from it)."""
        shape = self.ints([-1, self.circuit.n_inputs], "x2_shape")
        return self.cached("x2", lambda: self.op("Reshape", ["x", shape], "x2"))

    def batch(self) -> str:
        """``[1]``: the flattened batch size."""
        return self.cached("batch", lambda: self.op("Shape", [self.x2()], "batch", start=0, end=1))

    def inputs(self) -> str:
        """``[n_inputs, B]``: x2 transposed, for gathers of rows."""
        return self.cached("inputs", lambda: self.op("Transpose", [self.x2()], "xt", perm=[1, 0]))

    def trig_source(self, batched: bool) -> str:
        """Angles ``f t`` for every f in :data:`FREQUENCIES`: ``[len]``, or ``[B, len]`` with
        the inputs' first."""

        def scaled(x: str) -> list[str]:
            return [
                x if f == 1.0 else self.op("Mul", [x, self.const(f)], "ft") for f in FREQUENCIES
            ]

        def unbatched() -> str:
            return self.op("Concat", scaled(self.theta()), "trig_src", axis=0)

        def batched_source() -> str:
            theta = self.op("Unsqueeze", [self.trig_source(False), self.ints([0], "axes")])
            size = self.ints([2 * (self.circuit.n_weights + len(self.const_angles))], "size")
            shape = self.op("Concat", [self.batch(), size], "shape", axis=0)
            expanded = self.op("Expand", [theta, shape], "trig_src")
            return self.op("Concat", [*scaled(self.x2()), expanded], "trig_src", axis=1)

        return self.cached(f"trig_{batched}", batched_source if batched else unbatched)

    def trig_index(self, p: Param | None, f: float, batched: bool) -> int:
        """Index of ``f * p`` in :meth:`trig_source`."""
        n_theta = self.circuit.n_weights + len(self.const_angles)
        offset = 2 * self.circuit.n_inputs if batched else 0
        if p is not None and p.kind == "input":
            return FREQUENCIES.index(f) * self.circuit.n_inputs + int(p.value)
        return offset + FREQUENCIES.index(f) * n_theta + self.theta_index(p)

    # Complex arithmetic ----------------------------------------------------------------------

    def conj_swap(self, k: str) -> str:
        """``J(K) = [-K_im; K_re]`` of a complex stacked tensor."""
        re, im = self.split(k, 2, 0, "k")
        return self.op("Concat", [self.op("Neg", [im]), re], "jk", axis=0)

    def embed(self, k: str) -> str:
        """``E = [[K_re, -K_im], [K_im, K_re]]``, ``[2, 2, ...]`` (out part, in part), so that
        ``K * T = sum_s E[:, s] * T[s]`` is one op and a ReduceSum."""
        column = self.op("Unsqueeze", [k, self.ints([1], "axes")], "k")  # [2, 1, ...]
        return self.op("Concat", [column, self.conj_swap(column)], "e", axis=1)

    def cmul(self, op: Callable[[str, str], str], k: _Complex, t: _Complex) -> _Complex:
        """The complex bilinear ``op(K, T)`` (Mul, MatMul, ...: stack axes broadcast)."""
        if k.complex and t.complex:
            return self.cmul_embedded(op, self.embed(k.name), t, k.batched)
        return _Complex(op(k.name, t.name), k.complex or t.complex, k.batched or t.batched)

    def cmul_embedded(
        self, op: Callable[[str, str], str], embedded: str, t: _Complex, batched: bool
    ) -> _Complex:
        """``op(K, T)`` for a complex T, given ``E = embed(K)``; ``batched``: K's."""
        product = self.reduce("ReduceSum", op(embedded, t.name), 1, "z")
        return _Complex(product, True, batched or t.batched)


def _gate_stack(b: _Builder, gates: list[Gate | None]) -> _Complex:
    """The matrices of same-size gates as ``[S, 1 or B, G, d, d]``; ``None`` is the identity.

    One Gather of all angles, one Cos and one Sin, then ``C + A cos + B sin`` with per-gate
    constant stacks (terms that are zero for every gate are left out).
    """
    real_gate = next(g for g in gates if g is not None)
    d = 2 ** len(real_gate.wires)
    identity = _Trig(1.0, np.zeros((d, d)), np.zeros((d, d)), np.eye(d))
    trigs = [identity if g is None else _trig(g.name) for g in gates]
    params = [None if g is None or not g.params else g.params[0] for g in gates]
    batched = any(p is not None and p.kind == "input" for p in params)
    parts = {key: np.stack([getattr(t, key) for t in trigs]) for key in "abc"}
    stack = 2 if any(np.any(part.imag) for part in parts.values()) else 1

    def stacked(part: np.ndarray) -> str:  # [S, 1, G, d, d]
        return b.const(np.stack([part.real, part.imag][:stack])[:, None], "m")

    terms = [stacked(parts["c"])] if np.any(parts["c"]) else []
    if np.any(parts["a"]) or np.any(parts["b"]):
        index = [b.trig_index(p, t.f, batched) for p, t in zip(params, trigs, strict=True)]
        angles = b.op(
            "Gather",
            [b.trig_source(batched), b.ints(np.reshape(index, (-1, 1, 1)), "idx")],
            "angle",
            axis=int(batched),
        )  # [G, 1, 1] or [B, G, 1, 1]
        for key, trig_op in (("a", "Cos"), ("b", "Sin")):
            if np.any(parts[key]):
                terms.append(b.op("Mul", [stacked(parts[key]), b.op(trig_op, [angles])], "m"))
    total = terms[0]
    for term in terms[1:]:
        total = b.op("Add", [total, term], "m")
    return _Complex(total, stack == 2, batched)


def _per_qubit(b: _Builder, gates: list[Gate], qubits: list[int]) -> _Complex:
    """Per qubit of ``qubits``, the product of its one-qubit gates: ``[S, 1 or B, Q, 2, 2]``.

    The gates' matrices are stacked depth-major; depth d's matrices are gathered (identity for
    qubits with fewer gates) and multiplied onto the product of the earlier depths.
    """
    by_qubit: dict[int, list[Gate]] = {q: [] for q in qubits}
    for gate in gates:
        by_qubit[gate.wires[0]].append(gate)
    depth = max(len(run) for run in by_qubit.values())
    order = [run[d] for d in range(depth) for run in by_qubit.values() if d < len(run)]
    ragged = any(len(run) < depth for run in by_qubit.values())
    stack = _gate_stack(b, [*order, None] if ragged else order)
    if depth == 1 and not ragged:
        return stack
    position = {id(gate): i for i, gate in enumerate(order)}
    product = None
    for d in range(depth):
        index = [position[id(run[d])] if d < len(run) else len(order) for run in by_qubit.values()]
        name = b.op("Gather", [stack.name, b.ints(index, "idx")], "m", axis=2)
        layer = _Complex(name, stack.complex, stack.batched)
        product = layer if product is None else b.cmul(_matmul(b), layer, product)
    return product


def _matmul(b: _Builder) -> Callable[[str, str], str]:
    return lambda k, t: b.op("MatMul", [k, t], "mm")


def _mul(b: _Builder) -> Callable[[str, str], str]:
    return lambda k, t: b.op("Mul", [k, t], "mul")


def _batch_last(b: _Builder, matrices: _Complex) -> _Complex:
    """``[S, 1 or B, G, d, d]`` -> ``[S, G, d, d, 1, 1 or B]``, the state's batch axis last."""
    moved = b.op("Transpose", [matrices.name], "m", perm=[0, 2, 3, 4, 1])
    expanded = b.op("Unsqueeze", [moved, b.ints([4], "axes")], "m")
    return _Complex(expanded, matrices.complex, matrices.batched)


def _kron(b: _Builder, flat: _Complex, index: np.ndarray) -> _Complex:
    """``prod_t flat[:, index[t, ...]]``: axis 1 of ``flat`` is replaced by ``index.shape[1:]``.

    ``flat`` holds per-qubit 2x2 matrices, row-major, on axis 1: an entry of a Kronecker
    product of them (or of their first columns, a product state) is one Gather of its factors
    and their product (ReduceProd, or a chain of complex multiplies).
    """
    factors = b.op("Gather", [flat.name, b.ints(index, "kron_idx")], "factors", axis=1)
    if not flat.complex:
        return _Complex(b.reduce("ReduceProd", factors, 1, "kron"), False, flat.batched)
    n = index.shape[0]
    product = _Complex(b.split(factors, n, 1, "factor")[0], True, flat.batched)
    for embedded in b.split(b.embed(factors), n, 2, "factor")[1:]:
        product = b.cmul_embedded(_mul(b), embedded, product, flat.batched)
    squeezed = b.op("Squeeze", [product.name, b.ints([1], "axes")], "kron")
    return _Complex(squeezed, True, flat.batched)


def _blocks(qubits: list[int]) -> list[list[int]]:
    """Runs of up to :data:`KRON_BLOCK` consecutive qubits, each descending, most significant
    run first. Chunks are cut from the bottom of each run of consecutive qubits, so that a
    short remainder sits above: a block applied at the low bits costs one small GEMM per
    ``2^(n - g)`` higher index, and short blocks there would multiply those calls."""
    runs: list[list[int]] = []
    for q in sorted(qubits, reverse=True):
        if runs and runs[-1][-1] == q + 1:
            runs[-1].append(q)
        else:
            runs.append([q])
    blocks = []
    for run in runs:
        cut = len(run) % KRON_BLOCK or KRON_BLOCK
        blocks += [run[:cut]] + [run[i : i + KRON_BLOCK] for i in range(cut, len(run), KRON_BLOCK)]
    return blocks


def _block_bits(block: list[int], qubits: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per qubit of the block, its position in ``qubits`` ``[g, 1]`` and its bit of every block
    index ``[g, 2^g]`` (``block[0]`` most significant)."""
    g = len(block)
    values = np.arange(2**g)
    bits = np.stack([_bits(values, g - 1 - t) for t in range(g)])
    return np.array([qubits.index(q) for q in block])[:, None], bits


def _split_prefix(circuit: Circuit) -> tuple[list[Gate], list[Gate]]:
    """Leading one-qubit gates per qubit (before any multi-qubit gate on it), and the rest.

    Moving them first is exact: a one-qubit gate commutes with gates on other wires. Each
    qubit's trailing diagonal gates go to the front of the rest instead, where they join the
    next phase run: that keeps an RY-then-RZ prefix a real product state.
    """
    prefix: list[list[Gate]] = [[] for _ in range(circuit.n_qubits)]
    rest, blocked = [], set()
    for gate in circuit.gates:
        if len(gate.wires) == 1 and gate.wires[0] not in blocked:
            prefix[gate.wires[0]].append(gate)
        else:
            blocked.update(gate.wires)
            rest.append(gate)
    trailing = []
    for gates in prefix:
        while gates and GATES[gates[-1].name].diagonal:
            trailing.insert(0, gates.pop())
    return [g for gates in prefix for g in gates], trailing + rest


def _product_state(b: _Builder, prefix: list[Gate]) -> _Complex:
    """``kron_q M_q |0>`` for the per-qubit products ``M_q`` of the prefix: ``[S, 2^n, 1 or B]``.

    Amplitude k is ``prod_q M_q[bit_q(k), 0]``: per block of up to :data:`KRON_BLOCK` qubits
    one Gather + product, then the blocks' outer product.
    """
    n = b.circuit.n_qubits
    if not prefix:
        zero = (np.arange(2**n) == 0).astype(float)
        return _Complex(b.const(zero[None, :, None], "zero_state"), False, False)
    qubits = list(range(n))
    matrices = _batch_last(b, _per_qubit(b, prefix, qubits))  # [S, n, 2, 2, 1, 1 or B]
    flat = _Complex(
        b.op("Reshape", [matrices.name, b.ints([0, 4 * n, -1], "shape")], "flat"),
        matrices.complex,
        matrices.batched,
    )
    blocks = _blocks(qubits[::-1])
    state = None
    for j, block in enumerate(blocks):
        position, bits = _block_bits(block, qubits)
        shape = [len(block)] + [1] * len(blocks)
        shape[1 + j] = 2 ** len(block)
        amplitudes = _kron(b, flat, (4 * position + 2 * bits).reshape(shape))
        state = amplitudes if state is None else b.cmul(_mul(b), amplitudes, state)
    flat_state = b.op("Reshape", [state.name, b.ints([0, 2**n, -1], "shape")], "psi")
    return _Complex(flat_state, state.complex, state.batched)


def _apply_matrix(b: _Builder, matrix: _Complex, state: _Complex, hi: int, g: int) -> _Complex:
    """A matrix on qubits ``hi .. hi-g+1``: ``[S, 1, d, d]`` with a broadcast MatMul, or per
    sample ``[S, 1, d, d, 1, B]`` with a Mul and a ReduceSum. The result is a view of the state
    (``[S, 2^(n-1-hi), d, ...]``); callers flatten it once at the end."""
    a, d = 2 ** (b.circuit.n_qubits - 1 - hi), 2**g
    if not matrix.batched:
        view = b.op("Reshape", [state.name, b.ints([0, a, d, -1], "shape")], "psi")
        return b.cmul(_matmul(b), matrix, _Complex(view, state.complex, state.batched))
    c = 2 ** (hi + 1 - g)
    view = b.op("Reshape", [state.name, b.ints([0, a, 1, d, c, -1], "shape")], "psi")

    def contract(k: str, t: str) -> str:
        return b.reduce("ReduceSum", b.op("Mul", [k, t], "mul"), -3, "psi")  # over j

    return b.cmul(contract, matrix, _Complex(view, state.complex, state.batched))


def _flat_state(b: _Builder, state: _Complex) -> _Complex:
    flat = b.op("Reshape", [state.name, b.ints([0, 2**b.circuit.n_qubits, -1], "shape")], "psi")
    return _Complex(flat, state.complex, state.batched)


def _apply_single_qubit_layer(b: _Builder, gates: list[Gate], state: _Complex) -> _Complex:
    """One-qubit non-diagonal gates: per qubit, the run's 2x2 matrices are multiplied in order.

    Batch-independent: each block of up to ``KRON_BLOCK`` consecutive qubits is one
    ``[2^g, 2^g]`` Kronecker product applied with one MatMul. Per-sample matrices (a gate reads
    an input) are applied qubit by qubit.
    """
    qubits = sorted({g.wires[0] for g in gates}, reverse=True)  # most significant first
    matrices = _per_qubit(b, gates, qubits)
    if matrices.batched:
        per_sample = _batch_last(b, matrices)  # [S, Q, 2, 2, 1, B]
        for t, q in enumerate(qubits):
            m = b.op("Gather", [per_sample.name, b.ints([t], "idx")], "m", axis=1)
            state = _apply_matrix(b, _Complex(m, matrices.complex, True), state, q, 1)
        return _flat_state(b, state)
    flat = b.op("Reshape", [matrices.name, b.ints([0, -1], "shape")], "flat")  # [S, 4Q]
    for block in _blocks(qubits):
        position, bits = _block_bits(block, qubits)
        # entry (i, j) = prod_t M_t[bit_t(i), bit_t(j)]
        index = 4 * position[:, :, None] + 2 * bits[:, :, None] + bits[:, None, :]
        matrix = _kron(b, _Complex(flat, matrices.complex, False), index[:, None])
        state = _apply_matrix(b, matrix, state, block[0], len(block))
    return _flat_state(b, state)


def _apply_diagonal_run(b: _Builder, gates: list[Gate], state: _Complex) -> _Complex:
    """Diagonal gates as one phase per basis state: ``const + S @ theta (+ S_x @ x)``."""
    n = b.circuit.n_qubits
    constant = np.zeros(2**n)
    slopes: dict[str, list[tuple[int, np.ndarray]]] = {"theta": [], "input": []}
    for gate in gates:
        a, offset = _diagonal_phase(gate.name)
        local = _local_index(n, gate.wires)
        constant += offset[local]
        if not gate.params:
            continue
        p = gate.params[0]
        if p.kind == "const":
            constant += a[local] * p.value
        else:
            key = "input" if p.kind == "input" else "theta"
            slopes[key].append((int(p.value), a[local]))
    if not (slopes["theta"] or slopes["input"]):  # a constant phase (z, s, t, cz, ...)
        factor = _snapped(np.exp(1j * constant))  # cz, z: exactly real
        parts = [factor.real, factor.imag] if np.any(factor.imag) else [factor.real]
        phase = _Complex(b.const(np.stack(parts)[:, :, None], "phase"), len(parts) == 2, False)
        return b.cmul(_mul(b), phase, state)
    terms = [b.const(constant[None, :, None], "phase")] if np.any(constant) else []
    # theta [L] gathered as a column [G, 1]; the inputs [n_inputs, B] as rows [G, B]
    for key, source, shape in (("theta", b.theta, (-1, 1)), ("input", b.inputs, (-1,))):
        if slopes[key]:
            index, slope = zip(*slopes[key], strict=True)
            index = b.ints(np.reshape(index, shape), "idx")
            angles = b.op("Gather", [source(), index], key, axis=0)
            slope_matrix = b.const(np.stack(slope, axis=1)[None], "slope")  # [1, 2^n, G]
            terms.append(b.op("MatMul", [slope_matrix, angles], "phase"))
    angle = terms[0]
    for term in terms[1:]:
        angle = b.op("Add", [angle, term], "phase")
    cos, sin = b.op("Cos", [angle]), b.op("Sin", [angle])
    batched = bool(slopes["input"])
    if not state.complex:
        phase = _Complex(b.op("Concat", [cos, sin], "phase", axis=0), True, batched)
        return b.cmul(_mul(b), phase, state)
    entries = b.op("Concat", [cos, b.op("Neg", [sin]), sin, cos], "phase", axis=0)
    embedded = b.op("Reshape", [entries, b.ints([2, 2, 2**n, -1], "shape")], "phase")
    return b.cmul_embedded(_mul(b), embedded, state, batched)


def _permutation_source(n: int, gates: list[Gate]) -> np.ndarray:
    """``source`` with ``new[k] = old[source[k]]`` for a run of permutation gates."""
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
    return source


def _gather_basis(b: _Builder, state: _Complex, source: np.ndarray) -> _Complex:
    permuted = b.op("Gather", [state.name, b.ints(source, "perm")], "perm", axis=1)
    return _Complex(permuted, state.complex, state.batched)


def _apply_dense(b: _Builder, gate: Gate, state: _Complex) -> _Complex:
    """A two-qubit gate: its wires are gathered to the lowest bits, its 4x4 matrix applied
    there, and the bits gathered back."""
    n = b.circuit.n_qubits
    k = np.arange(2**n)
    others = [q for q in range(n) if q not in gate.wires]
    # bit j of the moved index is bit order[j] of the original one (wires[0] most significant)
    order = [gate.wires[1], gate.wires[0], *others]
    source = sum(_bits(k, j) << q for j, q in enumerate(order))
    stack = _gate_stack(b, [gate])  # [S, 1 or B, 1, 4, 4]
    if stack.batched:
        matrix = _batch_last(b, stack)
    else:
        shape = b.ints([0, 1, 4, 4], "shape")
        matrix = _Complex(b.op("Reshape", [stack.name, shape], "m"), stack.complex, False)
    state = _apply_matrix(b, matrix, _gather_basis(b, state, source), 1, 2)
    return _gather_basis(b, _flat_state(b, state), np.argsort(source))


def _run_kind(gate: Gate) -> str:
    spec = GATES[gate.name]
    if spec.diagonal:
        return "diag"
    if spec.permutation:
        return "perm"
    if spec.n_qubits == 1:
        return "layer"  # fused into Kronecker blocks (per sample if a gate reads an input)
    return "dense"


def _expectations(b: _Builder, state: _Complex) -> str:
    """``[1 or B, n_observables]`` (1: no gate reads an input)."""
    circuit = b.circuit
    n = circuit.n_qubits
    k = np.arange(2**n)
    groups: dict[int, list[int]] = {}
    for o, obs in enumerate(circuit.observables):
        mask = sum(1 << q for q, c in enumerate(obs) if c in "XY")
        groups.setdefault(mask, []).append(o)
    outputs, order = [], []
    for mask, members in groups.items():
        phases = np.ones((len(members), 2**n), dtype=complex)
        for row, o in enumerate(members):
            for q, c in enumerate(circuit.observables[o]):
                bit = _bits(k, q)
                if c == "Z":
                    phases[row] *= 1 - 2 * bit
                elif c == "Y":
                    phases[row] *= np.where(bit == 0, -1j, 1j)
        order += members
        if not mask:  # Z/I only: real phases on |psi_k|^2
            prob = b.reduce("ReduceSumSquare", state.name, 0, "prob")
            outputs.append(b.op("MatMul", [b.const(phases.real, "pr"), prob], "y"))
            continue
        flipped = _gather_basis(b, state, k ^ mask).name
        # u = conj(psi_k) psi_{k^m}: Re u = sum of the stacked product, Im u = re f_im - im f_re
        ur = b.reduce("ReduceSum", b.op("Mul", [state.name, flipped]), 0, "ur")
        value = b.op("MatMul", [b.const(phases.real, "pr"), ur], "y")
        if state.complex and np.any(phases.imag):
            crossed = b.op("Mul", [state.name, b.conj_swap(flipped)])  # [-re f_im; im f_re]
            minus_ui = b.reduce("ReduceSum", crossed, 0, "ui")
            value = b.op("Add", [value, b.op("MatMul", [b.const(phases.imag, "pi"), minus_ui])])
        outputs.append(value)
    y = outputs[0] if len(outputs) == 1 else b.op("Concat", outputs, "y", axis=0)
    if order != sorted(order):
        y = b.op("Gather", [y, b.ints(np.argsort(order), "order")], "y", axis=0)
    return b.op("Transpose", [y], "y", perm=[1, 0])


def quantum_layer_function(circuit: Circuit, opset: int) -> onnx.FunctionProto:
    """The ``ai.qwthn::QuantumLayer`` function body for ``circuit`` (standard opset ``opset``).

    Inputs ``x[..., n_inputs]`` (float or double) and ``weights[n_weights]``; output
    ``y[..., n_observables]`` with x's leading dims and dtype. Needs opset >= 15.
    """
    if opset < MIN_OPSET:
        raise ValueError(
            f"the QuantumLayer fallback needs default-domain opset >= {MIN_OPSET} (CastLike), "
            f"the model imports opset {opset}; export or convert the model to opset "
            f"{MIN_OPSET} or later"
        )
    b = _Builder(circuit, opset)
    b.nodes.append(helper.make_node("CastLike", ["weights", "x"], ["weights_cast"]))
    prefix, rest = _split_prefix(circuit)
    state = _product_state(b, prefix)
    for kind, run in itertools.groupby(rest, key=_run_kind):
        run = list(run)
        if kind == "diag":
            state = _apply_diagonal_run(b, run, state)
        elif kind == "perm":
            state = _gather_basis(b, state, _permutation_source(b.circuit.n_qubits, run))
        elif kind == "layer":
            state = _apply_single_qubit_layer(b, run, state)
        else:
            for gate in run:
                state = _apply_dense(b, gate, state)
    y = _expectations(b, state)
    lead = b.op("Shape", ["x"], "lead", end=-1)
    nobs = b.ints([circuit.n_observables], "nobs")
    out_shape = b.op("Concat", [lead, nobs], "y_shape", axis=0)
    if state.batched:
        b.nodes.append(helper.make_node("Reshape", [y, out_shape], ["y"]))
    else:  # nothing read an input: one row of results for the whole batch
        row = b.op("Reshape", [y, nobs], "y")
        b.nodes.append(helper.make_node("Expand", [row, out_shape], ["y"]))
    return helper.make_function(
        DOMAIN,
        "QuantumLayer",
        ["x", "weights"],
        ["y"],
        b.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=list(ENCODING_ATTRIBUTES),
    )
