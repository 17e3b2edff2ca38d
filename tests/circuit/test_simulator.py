import random

import numpy as np
import pytest
import torch
from qiskit.quantum_info import Statevector

from qwthn_onnx.circuit import (
    GATES,
    Circuit,
    CircuitError,
    Gate,
    Param,
    expectation_values,
    hardware_efficient_circuit,
    paper_circuit,
    simulator,
    statevector,
)
from qwthn_onnx.circuit.qiskit_bridge import observables_to_qiskit, to_qiskit
from tests.circuit.helpers import random_circuit, reference_expectations, reference_state

REAL_GATES = ("ry", "h", "x", "z", "cz", "crz", "cx", "cry", "swap")


def random_suite(seed: int, per_size: int = 4, n_gates: int = 30) -> list[Circuit]:
    rng = random.Random(seed)
    return [
        random_circuit(rng, n, n_gates, n_observables=5)
        for n in range(1, 7)
        for _ in range(per_size)
    ]


def values_for(circuit: Circuit, batch: tuple[int, ...], dtype=torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.rand(*batch, circuit.n_inputs, generator=gen, dtype=torch.float64) * 6 - 3
    weights = torch.rand(circuit.n_weights, generator=gen, dtype=torch.float64) * 6 - 3
    return inputs.to(dtype), weights.to(dtype)


def qiskit_reference(circuit: Circuit, inputs: torch.Tensor, weights: torch.Tensor):
    states, values = [], []
    for row in inputs.double():
        ref = Statevector(to_qiskit(circuit, row.tolist(), weights.double().tolist()))
        states.append(ref.data)
        values.append([ref.expectation_value(op).real for op in observables_to_qiskit(circuit)])
    return np.array(states), np.array(values)


# ---------------------------------------------------------------------------------------------
# Against qiskit
# ---------------------------------------------------------------------------------------------


def test_random_suite_covers_every_gate_and_parameter_kind():
    circuits = random_suite(seed=1)
    names = {g.name for c in circuits for g in c.gates}
    kinds = {p.kind for c in circuits for g in c.gates for p in g.params}
    chars = {ch for c in circuits for o in c.observables for ch in o}
    assert names == set(GATES)
    assert kinds == {"input", "weight", "const"}
    assert chars == set("IXYZ")


@pytest.mark.parametrize(
    ("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["f64", "f32"]
)
def test_random_circuits_match_qiskit(dtype, atol):
    for circuit in random_suite(seed=1):
        inputs, weights = values_for(circuit, (3,), dtype)
        states = statevector(circuit, inputs, weights)
        values = expectation_values(circuit, inputs, weights)
        assert states.dtype == (torch.complex128 if dtype == torch.float64 else torch.complex64)
        assert values.dtype == dtype
        ref_states, ref_values = qiskit_reference(circuit, inputs, weights)
        np.testing.assert_allclose(states.numpy(), ref_states, atol=atol, err_msg=str(circuit))
        np.testing.assert_allclose(values.numpy(), ref_values, atol=atol, err_msg=str(circuit))


# ---------------------------------------------------------------------------------------------
# Fused plan vs a gate-by-gate reference
# ---------------------------------------------------------------------------------------------


def special_circuits() -> list[Circuit]:
    """Circuits that reach each fused path: real groups, dynamic groups/diagonals/dense ops,
    a batch-independent head followed by late inputs, permutation blocks with x gates."""
    rng = random.Random(5)
    out = [random_circuit(rng, n, 40, names=REAL_GATES) for n in (2, 4, 6)]
    out += [random_circuit(rng, n, 40, kinds=("input",)) for n in (3, 5)]
    out += [random_circuit(rng, n, 30, kinds=("weight", "const")) for n in (3, 6)]
    late = [Gate("h", (q,)) for q in range(5)] + [Gate("cx", (q, (q + 1) % 5)) for q in range(5)]
    late += [Gate("crz", (0, 3), (Param.weight(0),)), Gate("ry", (2,), (Param.weight(1),))]
    late += [Gate("ry", (q,), (Param.input(q % 3),)) for q in range(5)]
    late += [Gate("rz", (1,), (Param.input(2),)), Gate("crz", (4, 1), (Param.input(0),))]
    late += [Gate("crx", (3, 0), (Param.input(1),)), Gate("rxx", (1, 4), (Param.weight(2),))]
    late += [
        Gate("x", (2,)),
        Gate("swap", (0, 4)),
        Gate("cx", (2, 1)),
        Gate("ry", (3,), (Param.weight(3),)),
    ]
    out.append(Circuit(5, tuple(late), ("ZIIII", "XXIII", "IIYIZ", "IZIZI"), 3, 4))
    out.append(paper_circuit(6, 2))
    out.append(hardware_efficient_circuit(5, 2))
    return out


@pytest.mark.parametrize("group_size", [1, 2, 3, 4])
@pytest.mark.parametrize("chunk_bytes", [1, simulator.CHUNK_BYTES], ids=["row-chunks", "default"])
def test_fused_plan_matches_gate_by_gate_reference(monkeypatch, group_size, chunk_bytes):
    monkeypatch.setattr(simulator, "GROUP_SIZE", group_size)
    monkeypatch.setattr(simulator, "CHUNK_BYTES", chunk_bytes)
    for circuit in special_circuits() + random_suite(seed=7, per_size=1):
        inputs, weights = values_for(circuit, (4,))
        states = statevector(circuit, inputs, weights).numpy()
        values = expectation_values(circuit, inputs, weights).numpy()
        for row in range(4):
            ref = reference_state(circuit, inputs[row].tolist(), weights.tolist())
            np.testing.assert_allclose(states[row], ref, atol=1e-12, err_msg=str(circuit))
            np.testing.assert_allclose(
                values[row], reference_expectations(circuit, ref), atol=1e-12
            )


def op_kinds(circuit: Circuit) -> list[str]:
    plan = simulator._compile(circuit, simulator.GROUP_SIZE)
    return [type(op).__name__.strip("_").removesuffix("Op") for op in plan.ops]


def test_paper_circuit_fuses_rings_and_layers(monkeypatch):
    monkeypatch.setattr(simulator, "GROUP_SIZE", 4)
    # Encoding + first RY layer are the product-state prefix; each CRZ ring is one diagonal
    # pass and each later RY layer one Kronecker pass (n=4 fits one group).
    assert op_kinds(paper_circuit(4, 2)) == ["Diag", "Kron", "Diag", "Kron", "Diag", "Kron", "Diag"]
    plan = simulator._compile(paper_circuit(4, 2), 4)
    assert [len(chain) for chain in plan.prefix] == [2, 2, 2, 2]
    # Ten qubits: each RY layer is split into balanced groups of <= 4 contiguous qubits.
    plan = simulator._compile(paper_circuit(10, 1), 4)
    kron = [(op.start, op.size, op.real) for op in plan.ops if isinstance(op, simulator._KronOp)]
    assert kron == [(0, 3, False), (3, 4, True), (7, 3, True)]


def test_cnot_ring_is_one_permutation_pass():
    kinds = op_kinds(hardware_efficient_circuit(5, 2))
    assert kinds.count("Perm") == 2
    assert kinds[0] == "Perm"  # the first RY/RZ layer joins the prefix


def test_equal_circuits_share_one_compiled_plan():
    a, b = paper_circuit(3, 2), paper_circuit(3, 2)
    assert a is not b
    assert simulator._compile(a, 4) is simulator._compile(b, 4)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


def reupload_circuit(n: int = 5) -> Circuit:
    """Data re-uploading: per-sample (dynamic) complex 1q layers between entanglers, a static
    complex layer, a CNOT chain whose composed permutation is not an involution."""
    gates = [Gate("ry", (q,), (Param.input(q),)) for q in range(n)]
    gates += [Gate("cz", (q, (q + 1) % n)) for q in range(n)]
    gates += [Gate("rx", (q,), (Param.input(q),)) for q in range(n)]
    gates += [Gate("crz", (q, (q + 1) % n), (Param.weight(q),)) for q in range(n)]
    gates += [Gate("rz", (q,), (Param.weight(n + q),)) for q in range(n)]
    gates += [Gate("cx", (q, q + 1)) for q in range(n - 1)]
    gates += [Gate("rx", (q,), (Param.weight(q),)) for q in range(n)]
    gates += [Gate("ryy", (0, 2), (Param.input(1),)), Gate("rz", (2,), (Param.input(3),))]
    observables = ("Z" * n, "XY" + "I" * (n - 2), "I" * (n - 1) + "X", "YIZIX"[:n].ljust(n, "I"))
    return Circuit(n, tuple(gates), observables, n, 2 * n)


def gradcheck_circuits() -> list[Circuit]:
    rng = random.Random(13)
    out = [random_circuit(rng, n, 12, n_observables=3) for n in (2, 3, 4)]
    out.append(random_circuit(rng, 3, 12, names=REAL_GATES, n_observables=2))
    out.append(paper_circuit(3, 1))
    out.append(hardware_efficient_circuit(4, 2))  # static complex groups, CNOT-ring gathers
    out.append(reupload_circuit())
    out.append(special_circuits()[-3])  # static head, late inputs, dense and perm ops
    return out


def gradcheck_expectations(circuit: Circuit, lead: tuple[int, ...] = (2, 3)) -> bool:
    inputs, weights = values_for(circuit, lead)
    inputs.requires_grad_()
    weights.requires_grad_()
    return torch.autograd.gradcheck(
        lambda x, w: expectation_values(circuit, x, w), (inputs, weights)
    )


@pytest.mark.parametrize("group_size", [2, 4])
def test_gradcheck_inputs_and_weights(monkeypatch, group_size):
    monkeypatch.setattr(simulator, "GROUP_SIZE", group_size)
    for circuit in gradcheck_circuits():
        assert gradcheck_expectations(circuit)


def test_gradcheck_with_one_row_per_chunk(monkeypatch):
    """Chunked backward: static gradients summed over chunks, per-sample ones stitched."""
    monkeypatch.setattr(simulator, "CHUNK_BYTES", 1)
    monkeypatch.setattr(simulator, "GROUP_SIZE", 2)
    for circuit in gradcheck_circuits()[-3:]:
        assert gradcheck_expectations(circuit, (3,))


def test_gradcheck_statevector_complex_output():
    circuit = reupload_circuit(4)
    inputs, weights = values_for(circuit, (2,))
    inputs.requires_grad_()
    weights.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: statevector(circuit, x, w), (inputs, weights))


def test_gradcheck_weights_only_circuit():
    rng = random.Random(2)
    circuit = random_circuit(rng, 3, 15, kinds=("weight", "const"))
    inputs, weights = values_for(circuit, (2,))
    weights.requires_grad_()
    assert torch.autograd.gradcheck(lambda w: expectation_values(circuit, inputs, w), (weights,))


def test_float32_adjoint_gradients_stay_accurate_on_deep_circuits():
    """Un-computing states in complex64 must not drift: compare with complex128 gradients."""
    circuit = paper_circuit(6, 8)
    inputs, weights = values_for(circuit, (16,))
    upstream = torch.randn(16, circuit.n_observables, dtype=torch.float64)
    grads = {}
    for dtype in (torch.float32, torch.float64):
        x = inputs.to(dtype).requires_grad_()
        w = weights.to(dtype).requires_grad_()
        (expectation_values(circuit, x, w) * upstream.to(dtype)).sum().backward()
        grads[dtype] = (x.grad.double(), w.grad.double())
    for low, high in zip(grads[torch.float32], grads[torch.float64], strict=True):
        assert (low - high).norm() / high.norm() < 1e-5


def test_backward_does_not_keep_one_state_per_op():
    """Adjoint gradients: saved activations stay O(batch * 2^n) however deep the circuit."""
    circuit = paper_circuit(6, 8)  # 8 layers -> 32+ fused ops
    inputs, weights = values_for(circuit, (64,), torch.float32)
    weights.requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = expectation_values(circuit, inputs, weights)
    state_bytes = 64 * 2**6 * 8
    assert sum(b for b in saved if b >= state_bytes) <= 6 * state_bytes
    out.sum().backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Shapes, dtypes, errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
def test_leading_dims_match_per_sample_evaluation(lead):
    circuit = random_circuit(random.Random(4), 4, 25)
    inputs, weights = values_for(circuit, lead)
    values = expectation_values(circuit, inputs, weights)
    states = statevector(circuit, inputs, weights)
    assert values.shape == (*lead, circuit.n_observables)
    assert states.shape == (*lead, 16)
    flat_inputs = inputs.reshape(-1, circuit.n_inputs)
    flat_values = values.reshape(-1, circuit.n_observables)
    for row in range(flat_inputs.shape[0]):
        single = expectation_values(circuit, flat_inputs[row], weights)
        assert single.shape == (circuit.n_observables,)
        torch.testing.assert_close(flat_values[row], single, rtol=0, atol=1e-12)


def test_input_independent_circuit_broadcasts_over_the_batch():
    circuit = random_circuit(random.Random(8), 3, 20, kinds=("weight", "const"))
    inputs, weights = values_for(circuit, (4, 2))
    values = expectation_values(circuit, inputs, weights)
    assert values.shape == (4, 2, circuit.n_observables)
    assert torch.equal(values, values[:1, :1].expand_as(values))
    ref = reference_state(circuit, [0.0] * circuit.n_inputs, weights.tolist())
    np.testing.assert_allclose(
        values[0, 0].numpy(), reference_expectations(circuit, ref), atol=1e-12
    )


def test_circuit_without_gates_is_the_zero_state():
    circuit = Circuit(2, (), ("ZI", "IZ", "XI", "ZZ"), 0, 0)
    values = expectation_values(circuit, torch.zeros(3, 0), torch.zeros(0))
    assert torch.equal(values, torch.tensor([[1.0, 1.0, 0.0, 1.0]] * 3))


def test_empty_batch():
    circuit = paper_circuit(3, 1)
    inputs, weights = values_for(circuit, (0,))
    weights.requires_grad_()
    values = expectation_values(circuit, inputs, weights)
    assert values.shape == (0, 3)
    values.sum().backward()
    assert torch.equal(weights.grad, torch.zeros_like(weights))


def test_half_precision_inputs_are_simulated_in_float32():
    circuit = paper_circuit(3, 1)
    inputs, weights = values_for(circuit, (4,), torch.float32)
    reference = expectation_values(circuit, inputs, weights)
    half = expectation_values(circuit, inputs.bfloat16(), weights)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), reference, atol=2e-2, rtol=0)


def test_weights_are_cast_to_the_input_dtype():
    circuit = paper_circuit(3, 1)
    inputs, weights = values_for(circuit, (2,))
    out = expectation_values(circuit, inputs, weights.float())
    assert out.dtype == torch.float64
    torch.testing.assert_close(
        out, expectation_values(circuit, inputs, weights.float().double()), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(
    ("inputs", "weights", "fragment"),
    [
        (torch.zeros(2, 4), torch.zeros(12), "inputs must have shape [..., n_inputs=3]"),
        (torch.zeros(()), torch.zeros(12), "inputs must have shape"),
        (torch.zeros(2, 3), torch.zeros(11), "weights must have shape [n_weights=12]"),
        (torch.zeros(2, 3), torch.zeros(1, 12), "weights must have shape"),
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(12), "inputs must be a real floating"),
        (torch.zeros(2, 3), torch.zeros(12, dtype=torch.int32), "weights must be a real floating"),
        (torch.zeros(2, 3, dtype=torch.complex64), torch.zeros(12), "real floating"),
        ([[0.0, 0.0, 0.0]], torch.zeros(12), "inputs must be a torch.Tensor"),
    ],
)
def test_bad_arguments_raise_circuit_error(inputs, weights, fragment):
    circuit = paper_circuit(3, 1)
    for fn in (expectation_values, statevector):
        with pytest.raises(CircuitError) as info:
            fn(circuit, inputs, weights)
        assert fragment in str(info.value)


def test_non_circuit_is_rejected():
    with pytest.raises(CircuitError, match="expected a Circuit"):
        expectation_values("paper", torch.zeros(3), torch.zeros(12))  # type: ignore[arg-type]
