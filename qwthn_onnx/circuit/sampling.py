"""Run a :class:`~qwthn_onnx.circuit.ir.Circuit` the way a QPU would: finite shots.

The exact simulator (:mod:`.simulator`) gives noiseless expectation values and autograd
gradients, which no quantum computer provides. This module is the hardware-shaped counterpart,
so that a whole adapted model can be trained or evaluated with sampled expectations:

* :class:`ShotEstimator` estimates every observable ``<P_j>`` from measurement counts (with
  standard errors), running all circuits of one call in a single backend job;
* :func:`shift_gradients` computes vector-Jacobian products by the parameter-shift rule, i.e.
  from more sampled circuits, never from the state vector;
* :func:`sampled_expectations` wraps both in a torch autograd function.

Observables containing X or Y are measured by rotating each qubit into the Z basis (``h`` for X,
``sdg`` then ``h`` for Y) before measuring; observables that agree on every qubit's basis
(qubit-wise commuting) are grouped so that one circuit serves them all. ``shots=None`` replaces
sampling by exact probabilities from ``qiskit.quantum_info.Statevector`` (exact, for
verification of the shift rules and the measurement logic without shot noise).

Parameter-shift rules (each checked against autograd of the exact simulator in the tests):

* ``rx ry rz rzz rxx ryy`` (generator eigenvalues +-1/2) and ``p cp`` (eigenvalues 0, 1: one
  frequency, ``p`` is ``rz`` up to a global phase): ``f' = [f(+pi/2) - f(-pi/2)] / 2``;
* ``crx cry crz`` (eigenvalues 0, +-1/2: frequencies 1/2 and 1), four-term rule
  ``f' = c1 [f(+pi/2) - f(-pi/2)] - c2 [f(+3pi/2) - f(-3pi/2)]`` with
  ``c1, c2 = (sqrt(2) +- 1) / (4 sqrt(2))``.

A parameter used by several gates gets one shifted pair (or quadruple) of circuits per gate
occurrence and the contributions are summed (product rule).

Qiskit bit order: a count key is a bit string with classical bit 0 as its *last* character;
the keys are parsed with ``int(key, 2)`` so that bit ``q`` of the integer is qubit ``q``
(qubit ``q`` is measured into clbit ``q``), the same little-endian order as the simulator.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from qiskit import ClassicalRegister, QuantumCircuit
from qiskit.quantum_info import Statevector
from torch import Tensor
from torch.autograd.function import once_differentiable

from .ir import GATES, Circuit, CircuitError, Gate, Param
from .qiskit_bridge import to_qiskit

__all__ = [
    "BACKENDS",
    "SHIFT_RULES",
    "ShotEstimator",
    "deviation_in_standard_errors",
    "sampled_expectations",
    "shift_gradients",
]

BACKENDS = ("basic", "aer")

_HALF_PI = math.pi / 2
_C1 = (math.sqrt(2) + 1) / (4 * math.sqrt(2))
_C2 = (math.sqrt(2) - 1) / (4 * math.sqrt(2))
_TWO_TERM = ((_HALF_PI, 0.5), (-_HALF_PI, -0.5))
_FOUR_TERM = ((_HALF_PI, _C1), (-_HALF_PI, -_C1), (3 * _HALF_PI, -_C2), (-3 * _HALF_PI, _C2))

# gate name -> ((shift, coefficient), ...): d<O>/dθ = sum_t coefficient_t * <O>(θ + shift_t)
SHIFT_RULES: dict[str, tuple[tuple[float, float], ...]] = {
    **{name: _TWO_TERM for name in ("rx", "ry", "rz", "p", "cp", "rzz", "rxx", "ryy")},
    **{name: _FOUR_TERM for name in ("crx", "cry", "crz")},
}


# --------------------------------------------------------------------------------------------
# Compiled program: occurrence-parameterised templates, one per measurement basis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """Observables measured in one basis (qubit-wise commuting): one circuit per evaluation."""

    columns: np.ndarray  # positions in circuit.observables
    masks: list[int]  # per observable: bit q set when the Pauli on qubit q is not I
    template: QuantumCircuit  # parameterised, basis rotations appended, no measurements
    measured: QuantumCircuit  # the same with every qubit q measured into clbit q


@dataclass(frozen=True)
class _Program:
    """A circuit whose every input/weight *occurrence* is its own qiskit Parameter.

    Row ``k`` of an occurrence-value matrix is the angle of the ``k``-th non-constant gate
    parameter, so shifting one occurrence (and not every gate sharing its weight) is a matter of
    changing one entry.
    """

    kinds: np.ndarray  # [n_occ] bool: True for an input occurrence, False for a weight
    indices: np.ndarray  # [n_occ] input or weight index
    rules: list[tuple[tuple[float, float], ...]]  # [n_occ] shift rule of its gate
    order: np.ndarray  # occurrence index of each template parameter, in template order
    groups: list[_Group]
    n_qubits: int
    n_observables: int


def _measurement_groups(observables: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Greedy qubit-wise-commuting grouping: (basis per qubit, observable positions)."""
    groups: list[tuple[list[str], list[int]]] = []
    for column, obs in enumerate(observables):
        for basis, columns in groups:
            if all(p == "I" or b in ("I", p) for p, b in zip(obs, basis, strict=True)):
                for q, p in enumerate(obs):
                    if p != "I":
                        basis[q] = p
                columns.append(column)
                break
        else:
            groups.append((list(obs), [column]))
    return [("".join(basis), columns) for basis, columns in groups]


@functools.lru_cache(maxsize=64)
def _compile(circuit: Circuit) -> _Program:
    kinds, indices, rules, gates = [], [], [], []
    for gate in circuit.gates:
        params = []
        for param in gate.params:
            if param.kind == "const":
                params.append(param)
                continue
            rule = SHIFT_RULES.get(gate.name)
            if rule is None or GATES[gate.name].n_params != 1:
                raise CircuitError(
                    f"no parameter-shift rule for gate {gate.name!r} with a {param.kind} "
                    f"parameter; rules exist for {sorted(SHIFT_RULES)}. Use a constant angle "
                    "or one of those gates."
                )
            params.append(Param.weight(len(kinds)))
            kinds.append(param.kind == "input")
            indices.append(int(param.value))
            rules.append(rule)
        gates.append(Gate(gate.name, gate.wires, tuple(params)))
    occurrences = Circuit(
        circuit.n_qubits,
        tuple(gates),
        circuit.observables,
        n_inputs=0,
        n_weights=len(kinds),
        max_qubits=circuit.n_qubits,
    )
    base = to_qiskit(occurrences)  # occurrence k is the qiskit Parameter theta[k]
    order = np.array([p.index for p in base.parameters], dtype=np.int64)
    groups = []
    for basis, columns in _measurement_groups(circuit.observables):
        template = base.copy()
        for q, pauli in enumerate(basis):
            if pauli == "Y":
                template.sdg(q)
            if pauli in "XY":
                template.h(q)
        measured = template.copy()
        measured.add_register(ClassicalRegister(circuit.n_qubits, "c"))
        measured.measure(range(circuit.n_qubits), range(circuit.n_qubits))
        masks = [
            sum(1 << q for q, p in enumerate(circuit.observables[c]) if p != "I") for c in columns
        ]
        groups.append(_Group(np.array(columns), masks, template, measured))
    return _Program(
        kinds=np.array(kinds, dtype=bool),
        indices=np.array(indices, dtype=np.int64),
        rules=rules,
        order=order,
        groups=groups,
        n_qubits=circuit.n_qubits,
        n_observables=circuit.n_observables,
    )


def _signs(outcomes: np.ndarray, masks: list[int]) -> np.ndarray:
    """[len(outcomes), len(masks)]: the ±1 eigenvalue prod_q (1 - 2 b_q) over each mask."""
    parity = np.zeros((outcomes.size, len(masks)), dtype=np.int64)
    for j, mask in enumerate(masks):
        bits = outcomes & mask
        while np.any(bits):  # clear the lowest set bit until none is left: popcount parity
            parity[:, j] ^= (bits != 0).astype(np.int64)
            bits = bits & (bits - 1)
    return 1.0 - 2.0 * parity


def _bind(template: QuantumCircuit, row: np.ndarray, order: np.ndarray) -> QuantumCircuit:
    if order.size == 0:
        return template
    return template.assign_parameters(row[order].tolist(), inplace=False)


# --------------------------------------------------------------------------------------------
# Estimator
# --------------------------------------------------------------------------------------------


def _make_backend(name: str) -> Any:
    if name == "basic":
        from qiskit.providers.basic_provider import BasicSimulator

        return BasicSimulator()
    if name == "aer":
        try:
            from qiskit_aer import AerSimulator
        except ImportError as err:
            raise CircuitError(
                "backend='aer' needs the qiskit-aer package, which is not installed: run "
                "`pip install qiskit-aer`, or use backend='basic' (qiskit's BasicSimulator, "
                f"slower but always available). Import error: {err}"
            ) from None
        return AerSimulator()
    raise CircuitError(f"unknown backend {name!r}; choose one of {list(BACKENDS)}.")


def _check_array(name: str, value: Any, shape: tuple[int | None, ...], hint: str) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().double().numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != len(shape) or any(
        s is not None and s != a for s, a in zip(shape, array.shape, strict=True)
    ):
        want = ", ".join("B" if s is None else str(s) for s in shape)
        raise CircuitError(f"{name} must have shape [{want}] ({hint}), got {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise CircuitError(f"{name} contains non-finite values (nan or inf).")
    return array


class ShotEstimator:
    """Expectation values of a circuit's observables from ``shots`` measurements per circuit.

    ``backend``: ``"basic"`` is qiskit's ``BasicSimulator`` (pure Python, always available);
    ``"aer"`` is ``qiskit_aer.AerSimulator`` (much faster, ``pip install qiskit-aer``).
    ``shots=None`` computes exact probabilities with ``Statevector`` instead of sampling
    (exact, for verification; standard errors are then 0 and no backend is used).

    ``seed`` seeds a generator that draws a fresh ``seed_simulator`` for every backend job, so
    shot noise is independent between calls (as on hardware) while two estimators built with
    the same seed return identical results for the same sequence of calls.
    """

    def __init__(self, shots: int | None = 1024, backend: str = "basic", seed: int | None = None):
        if shots is not None and (
            not isinstance(shots, int | np.integer) or isinstance(shots, bool) or shots < 1
        ):
            raise CircuitError(
                f"shots must be an integer >= 1 (or None for exact expectations), got {shots!r}."
            )
        if backend not in BACKENDS:
            raise CircuitError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}.")
        self.shots = None if shots is None else int(shots)
        self.backend_name = backend
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        # Built eagerly so that a missing qiskit-aer fails here, not in the middle of training.
        self.backend = None if self.shots is None else _make_backend(backend)

    def __repr__(self) -> str:
        return f"ShotEstimator(shots={self.shots}, backend={self.backend_name!r}, seed={self.seed})"

    @property
    def exact(self) -> bool:
        return self.shots is None

    def estimate(
        self, circuit: Circuit, inputs: np.ndarray | Sequence, weights: np.ndarray | Sequence
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sampled ``<P_j>`` for each sample: inputs [B, n_inputs] -> (means, stderr) [B, n_obs].

        ``stderr`` is ``s / sqrt(shots)`` with ``s`` the unbiased (ddof=1) sample standard
        deviation of the observable's ±1 single-shot outcomes, i.e.
        ``sqrt((1 - mean^2) / (shots - 1))``; with one shot it is the bound 1.0, exact mode 0.
        """
        inputs, weights = self._check(circuit, inputs, weights)
        program = _compile(circuit)
        return self._evaluate(program, _occurrence_values(program, inputs, weights))

    def _check(self, circuit: Circuit, inputs: Any, weights: Any) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(circuit, Circuit):
            raise CircuitError(f"expected a Circuit, got {type(circuit).__name__}.")
        inputs = _check_array(
            "inputs", inputs, (None, circuit.n_inputs), "one row of input angles per sample"
        )
        weights = _check_array("weights", weights, (circuit.n_weights,), "the circuit weights")
        return inputs, weights

    def _evaluate(self, program: _Program, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means and stderr [M, n_obs] for occurrence-value rows [M, n_occ], one backend job."""
        n_rows, groups = rows.shape[0], program.groups
        means = np.zeros((n_rows, program.n_observables))
        stderr = np.zeros_like(means)
        if n_rows == 0:
            return means, stderr
        if self.shots is None:
            outcomes = np.arange(2**program.n_qubits, dtype=np.int64)
            signs = [_signs(outcomes, group.masks) for group in groups]
            for m, row in enumerate(rows):
                for group, sign in zip(groups, signs, strict=True):
                    probs = Statevector(_bind(group.template, row, program.order)).probabilities()
                    means[m, group.columns] = probs @ sign
            return means, stderr
        circuits = [_bind(g.measured, row, program.order) for row in rows for g in groups]
        counts = self._run(circuits)
        shots = self.shots
        for i, (m, group) in enumerate((m, g) for m in range(n_rows) for g in groups):
            outcomes = np.array([int(k.replace(" ", ""), 2) for k in counts[i]], dtype=np.int64)
            freq = np.array(list(counts[i].values()), dtype=np.float64)
            mean = freq @ _signs(outcomes, group.masks) / shots
            means[m, group.columns] = mean
            if shots > 1:
                stderr[m, group.columns] = np.sqrt(np.maximum(1 - mean**2, 0) / (shots - 1))
            else:
                stderr[m, group.columns] = 1.0
        return means, stderr

    def _run(self, circuits: list[QuantumCircuit]) -> list[dict[str, int]]:
        """Counts per circuit: one backend job (split only if the backend caps circuits/job)."""
        limit = getattr(self.backend, "max_circuits", None) or len(circuits)
        counts: list[dict[str, int]] = []
        for start in range(0, len(circuits), limit):
            chunk = circuits[start : start + limit]
            options: dict[str, Any] = {
                "shots": self.shots,
                "seed_simulator": int(self._rng.integers(2**31 - 1)),
            }
            if self.backend_name == "basic":
                options["memory"] = False  # per-shot bit strings are not needed
            result = self.backend.run(chunk, **options).result()
            counts.extend(result.get_counts(i) for i in range(len(chunk)))
        return counts


def _occurrence_values(program: _Program, inputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[B, n_occ]: each occurrence's angle for each sample (inputs per sample, weights shared)."""
    rows = np.empty((inputs.shape[0], program.kinds.size))
    kinds, indices = program.kinds, program.indices
    rows[:, kinds] = inputs[:, indices[kinds]]
    rows[:, ~kinds] = weights[indices[~kinds]]
    return rows


# --------------------------------------------------------------------------------------------
# Parameter-shift gradients
# --------------------------------------------------------------------------------------------


def shift_gradients(
    estimator: ShotEstimator,
    circuit: Circuit,
    inputs: np.ndarray | Sequence,
    weights: np.ndarray | Sequence,
    grad_out: np.ndarray | Sequence,
    *,
    wrt_inputs: bool = True,
    wrt_weights: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Vector-Jacobian products by the parameter shift rule, from sampled shifted circuits.

    ``grad_out [B, n_obs]`` is dL/d<P_j> per sample; returns ``grad_inputs [B, n_inputs]`` and
    ``grad_weights [n_weights]`` (float64), evaluated with ``estimator`` as hardware would:
    every shifted circuit of the call runs in one backend job. A gradient not asked for
    (``wrt_inputs`` / ``wrt_weights`` False) is returned as ``None`` and costs no circuits.
    """
    inputs, weights = estimator._check(circuit, inputs, weights)
    grad_out = _check_array(
        "grad_out",
        grad_out,
        (inputs.shape[0], circuit.n_observables),
        "one gradient row per sample and observable",
    )
    program = _compile(circuit)
    base = _occurrence_values(program, inputs, weights)
    wanted = [
        k for k in range(program.kinds.size) if (wrt_inputs if program.kinds[k] else wrt_weights)
    ]
    # one row per (sample, occurrence, shift term), in that order
    terms = [(k, shift, coeff) for k in wanted for shift, coeff in program.rules[k]]
    n_samples, n_terms = inputs.shape[0], len(terms)
    n_occ, n_obs = base.shape[1], circuit.n_observables
    rows = np.repeat(base, n_terms, axis=0).reshape(n_samples, n_terms, n_occ)
    coeffs = np.array([coeff for _, _, coeff in terms])
    for t, (k, shift, _) in enumerate(terms):
        rows[:, t, k] += shift
    means, _ = estimator._evaluate(program, rows.reshape(n_samples * n_terms, n_occ))
    # d<g, E>/d(occurrence k) for each sample: sum over k's terms of coeff * <g, E(shifted)>
    projected = np.einsum("bto,bo->bt", means.reshape(n_samples, n_terms, n_obs), grad_out)
    per_term = projected * coeffs
    grad_inputs = np.zeros_like(inputs) if wrt_inputs else None
    grad_weights = np.zeros_like(weights) if wrt_weights else None
    for t, (k, _, _) in enumerate(terms):
        index = program.indices[k]
        if program.kinds[k]:
            grad_inputs[:, index] += per_term[:, t]
        else:
            grad_weights[index] += per_term[:, t].sum()
    return grad_inputs, grad_weights


# --------------------------------------------------------------------------------------------
# torch integration
# --------------------------------------------------------------------------------------------


class _SampledExpectations(torch.autograd.Function):
    """Forward: sampled expectations; backward: parameter-shift VJPs with the same estimator."""

    @staticmethod
    def forward(
        ctx: Any, inputs: Tensor, weights: Tensor, circuit: Circuit, estimator: ShotEstimator
    ) -> Tensor:
        x = inputs.detach().cpu().double().numpy()
        w = weights.detach().cpu().double().numpy()
        means, _ = estimator.estimate(circuit, x, w)
        ctx.circuit, ctx.estimator = circuit, estimator
        ctx.save_for_backward(inputs, weights)
        return torch.from_numpy(means).to(dtype=inputs.dtype, device=inputs.device)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        inputs, weights = ctx.saved_tensors
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (want_x or want_w):
            return None, None, None, None
        grad_x, grad_w = shift_gradients(
            ctx.estimator,
            ctx.circuit,
            inputs.detach().cpu().double().numpy(),
            weights.detach().cpu().double().numpy(),
            grad.detach().cpu().double().numpy(),
            wrt_inputs=want_x,
            wrt_weights=want_w,
        )
        out_x = None if grad_x is None else torch.from_numpy(grad_x).to(inputs)
        out_w = None if grad_w is None else torch.from_numpy(grad_w).to(weights)
        return out_x, out_w, None, None


def sampled_expectations(
    circuit: Circuit, inputs: Tensor, weights: Tensor, estimator: ShotEstimator
) -> Tensor:
    """Shot-based drop-in for ``expectation_values``: inputs [..., n_inputs] -> [..., n_obs].

    Forward estimates with ``estimator``; backward runs parameter-shift circuits with it, so
    training sees exactly the noise a QPU would give. The output has the dtype and device of
    ``inputs`` (float32 in, float32 out).
    """
    if not isinstance(estimator, ShotEstimator):
        raise CircuitError(f"estimator must be a ShotEstimator, got {type(estimator).__name__}.")
    for name, value in (("inputs", inputs), ("weights", weights)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise CircuitError(f"{name} must be a real floating torch.Tensor, got {value!r}.")
    if inputs.ndim == 0 or inputs.shape[-1] != circuit.n_inputs:
        raise CircuitError(
            f"inputs must have shape [..., n_inputs={circuit.n_inputs}], got {tuple(inputs.shape)}."
        )
    lead = inputs.shape[:-1]
    flat = inputs.reshape(lead.numel(), circuit.n_inputs)
    out = _SampledExpectations.apply(flat, weights, circuit, estimator)
    return out.reshape(*lead, circuit.n_observables)


def deviation_in_standard_errors(
    estimates: np.ndarray, exact: np.ndarray, shots: int
) -> np.ndarray:
    """``|estimate - exact|`` in units of the estimator's true standard error.

    A Pauli observable's shots are +-1, so the mean of ``shots`` of them has standard error
    ``sqrt((1 - exact^2) / shots)``. The sample standard error cannot stand in for it: near
    ``exact = +-1`` every shot often agrees and it is 0. The floor ``1 / shots`` (one shot's
    worth) keeps values at exactly +-1 comparable.
    """
    exact = np.asarray(exact, dtype=np.float64)
    sigma = np.sqrt(np.maximum(1.0 - exact**2, 0.0) / shots)
    return np.abs(np.asarray(estimates, dtype=np.float64) - exact) / np.maximum(sigma, 1.0 / shots)
