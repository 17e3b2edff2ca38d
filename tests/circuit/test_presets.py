import pytest

from qwthn_onnx.circuit import (
    ANSATZE,
    CircuitError,
    Param,
    build_ansatz,
    hardware_efficient_circuit,
    paper_circuit,
)


def weight_indices(circuit):
    return [p.value for g in circuit.gates for p in g.params if p.kind == "weight"]


@pytest.mark.parametrize(("n", "layers"), [(2, 1), (4, 3), (10, 10)])
def test_paper_circuit_counts_and_weight_order(n, layers):
    c = paper_circuit(n, layers)
    assert (c.n_qubits, c.n_inputs, c.n_weights) == (n, n, 4 * n * layers)
    assert c.n_gates == n + 4 * n * layers
    assert weight_indices(c) == list(range(4 * n * layers))
    assert c.observables == tuple("I" * i + "Z" + "I" * (n - 1 - i) for i in range(n))
    encoding = c.gates[:n]
    assert [(g.name, g.wires, g.params) for g in encoding] == [
        ("ry", (i,), (Param.input(i),)) for i in range(n)
    ]


def test_paper_circuit_layer_structure_and_ring_order_for_four_qubits():
    c = paper_circuit(4, 2)
    layer = c.gates[4 : 4 + 16]
    assert [g.name for g in layer] == ["ry"] * 4 + ["crz"] * 4 + ["ry"] * 4 + ["crz"] * 4
    assert [g.wires for g in layer[:4]] == [(0,), (1,), (2,), (3,)]
    forward_ring = [g.wires for g in layer[4:8]]
    reverse_ring = [g.wires for g in layer[12:16]]
    assert forward_ring == [(3, 0), (2, 3), (1, 2), (0, 1)]
    assert reverse_ring == [(3, 2), (0, 3), (1, 0), (2, 1)]
    second = c.gates[20:36]
    assert [g.wires for g in second] == [g.wires for g in layer]
    assert weight_indices(c)[16:20] == [16, 17, 18, 19]  # layer 1 starts at 4 * n * 1


@pytest.mark.parametrize(("n", "layers"), [(2, 1), (5, 3)])
def test_hardware_efficient_circuit_structure(n, layers):
    c = hardware_efficient_circuit(n, layers)
    assert (c.n_inputs, c.n_weights) == (n, 2 * n * layers)
    assert c.n_gates == n + 3 * n * layers
    assert weight_indices(c) == list(range(2 * n * layers))
    layer = c.gates[n : n + 3 * n]
    assert [g.name for g in layer] == ["ry"] * n + ["rz"] * n + ["cx"] * n
    assert [g.wires for g in layer[2 * n :]] == [(i, (i + 1) % n) for i in range(n)]


@pytest.mark.parametrize("factory", [paper_circuit, hardware_efficient_circuit])
def test_presets_reject_bad_sizes(factory):
    with pytest.raises(CircuitError, match="n_qubits >= 2"):
        factory(1, 1)
    with pytest.raises(CircuitError, match="n_layers >= 1"):
        factory(3, 0)


def test_build_ansatz_by_name():
    assert set(ANSATZE) == {"paper", "hardware_efficient"}
    assert build_ansatz("paper", 3, 2) == paper_circuit(3, 2)
    assert build_ansatz("hardware_efficient", 3, 2) == hardware_efficient_circuit(3, 2)
    with pytest.raises(CircuitError) as info:
        build_ansatz("papr", 3, 2)
    assert "'papr'" in str(info.value)
    assert "'hardware_efficient'" in str(info.value) and "'paper'" in str(info.value)
