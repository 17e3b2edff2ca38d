import random

import numpy as np
import pytest
import torch
from qiskit import QuantumCircuit
from qiskit.quantum_info import Operator, SparsePauliOp, Statevector

from qwthn_onnx.circuit import (
    GATES,
    Circuit,
    CircuitError,
    Gate,
    Param,
    expectation_values,
    hardware_efficient_circuit,
    paper_circuit,
    statevector,
)
from qwthn_onnx.circuit.qiskit_bridge import observables_to_qiskit, to_qiskit
from tests.circuit.helpers import random_circuit


@pytest.mark.parametrize("name", sorted(GATES))
def test_gate_matrix_matches_qiskit(name):
    """Our matrices use wires[0] as the most significant bit; qiskit's the least."""
    spec = GATES[name]
    theta = [0.83] * spec.n_params
    qc = QuantumCircuit(spec.n_qubits)
    getattr(qc, name)(*theta, *range(spec.n_qubits))
    expected = Operator(qc).reverse_qargs().data
    ours = spec.matrix(*theta)
    np.testing.assert_allclose(ours, expected, atol=1e-14)


def test_observables_are_reversed_into_qiskit_labels():
    c = Circuit(3, (), ("XIZ", "IYI", "ZZX"), 0, 0)
    ops = observables_to_qiskit(c)
    assert [op.paulis[0].to_label() for op in ops] == ["ZIX", "IYI", "XZZ"]
    assert all(isinstance(op, SparsePauliOp) for op in ops)


def test_parameterised_export_binds_to_the_same_state():
    rng = random.Random(11)
    c = random_circuit(rng, 3, 25)
    qc = to_qiskit(c)
    names = sorted(p.name for p in qc.parameters)
    assert all(n.startswith(("x[", "theta[")) for n in names)
    inputs, weights = [0.3, -1.2, 2.0], [0.5, 1.5, -0.7, 0.1]
    values = {f"x[{i}]": v for i, v in enumerate(inputs)}
    values |= {f"theta[{i}]": v for i, v in enumerate(weights)}
    binding = {p: values[p.name] for p in qc.parameters}
    bound = qc.assign_parameters(binding)
    ours = statevector(
        c, torch.tensor(inputs, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64)
    )
    np.testing.assert_allclose(ours.numpy(), Statevector(bound).data, atol=1e-12)


def test_partially_bound_export_keeps_the_other_parameters():
    c = Circuit(
        1, (Gate("rx", (0,), (Param.input(0),)), Gate("rz", (0,), (Param.weight(0),))), ("Z",), 1, 1
    )
    qc = to_qiskit(c, inputs=[0.4])
    assert [p.name for p in qc.parameters] == ["theta[0]"]
    qc = to_qiskit(c, weights=[0.4])
    assert [p.name for p in qc.parameters] == ["x[0]"]


def test_wrong_number_of_values_is_an_error():
    with pytest.raises(CircuitError, match="got 2 x values, the circuit has 3"):
        to_qiskit(paper_circuit(3, 1), inputs=[0.1, 0.2])
    with pytest.raises(CircuitError, match="theta values"):
        to_qiskit(paper_circuit(3, 1), inputs=[0.1, 0.2, 0.3], weights=[0.0])


@pytest.mark.parametrize(
    "circuit",
    [
        paper_circuit(3, 2),
        paper_circuit(5, 2),
        hardware_efficient_circuit(3, 2),
        hardware_efficient_circuit(5, 3),
    ],
    ids=["paper-3-2", "paper-5-2", "he-3-2", "he-5-3"],
)
def test_presets_match_qiskit(circuit):
    gen = torch.Generator().manual_seed(0)
    inputs = torch.rand(4, circuit.n_inputs, generator=gen, dtype=torch.float64) * 6 - 3
    weights = torch.rand(circuit.n_weights, generator=gen, dtype=torch.float64) * 6 - 3
    states = statevector(circuit, inputs, weights)
    values = expectation_values(circuit, inputs, weights)
    for row in range(len(inputs)):
        ref = Statevector(to_qiskit(circuit, inputs[row].tolist(), weights.tolist()))
        np.testing.assert_allclose(states[row].numpy(), ref.data, atol=1e-10)
        expected = [ref.expectation_value(op).real for op in observables_to_qiskit(circuit)]
        np.testing.assert_allclose(values[row].numpy(), expected, atol=1e-10)
