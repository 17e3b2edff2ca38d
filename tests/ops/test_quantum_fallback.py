import collections
import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from qwthn_onnx.circuit import (
    Circuit,
    Gate,
    Param,
    expectation_values,
    hardware_efficient_circuit,
    paper_circuit,
)
from qwthn_onnx.ops import register_schemas
from qwthn_onnx.ops.models import quantum_layer_model
from qwthn_onnx.ops.quantum_fallback import MIN_OPSET, quantum_layer_function
from tests.circuit.helpers import random_circuit

OPSET = 21


def _session(circuit, dtype, lead=("batch", "seq"), opset=OPSET, weights=None):
    register_schemas()
    model = quantum_layer_model(
        circuit, dtype=dtype, leading_dims=lead, opset=opset, weights=weights
    )
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _compare(circuit, dtype, shape=(2, 3), tol=1e-10, opset=OPSET):
    lead = tuple(f"d{i}" for i in range(len(shape)))
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    session = _session(circuit, np_dtype, lead, opset)
    x = torch.rand(*shape, max(circuit.n_inputs, 1), dtype=torch.float64)[..., : circuit.n_inputs]
    w = torch.rand(circuit.n_weights, dtype=torch.float64) * 2
    (y,) = session.run(None, {"x": x.to(dtype).numpy(), "weights": w.to(dtype).numpy()})
    expected = expectation_values(circuit, x, w).numpy()
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, atol=tol, rtol=0)


@pytest.mark.parametrize("seed", range(10))
def test_random_circuits_every_gate_match_the_simulator_float64(seed):
    rng = random.Random(seed)
    _compare(random_circuit(rng, rng.randint(1, 5), rng.randint(1, 30)), torch.float64)


@pytest.mark.parametrize("seed", range(4))
def test_random_circuits_float32(seed):
    rng = random.Random(100 + seed)
    _compare(random_circuit(rng, 4, 30), torch.float32, tol=1e-5)


@pytest.mark.parametrize("make", [paper_circuit, hardware_efficient_circuit])
def test_presets_with_symbolic_batch_and_sequence(make):
    circuit = make(4, 2)
    for shape in [(1, 1), (3, 5)]:
        _compare(circuit, torch.float64, shape=shape)


def _layered(n: int, layers: int, gates) -> Circuit:
    """``gates(layer, weight)`` per layer; weights numbered by a shared counter."""
    out, count = [], iter(range(10**6))
    for layer in range(layers):
        out += gates(layer, lambda: Param.weight(next(count)))
    n_weights = next(count)
    observables = ("Z" * n, "X" + "Y" * (n - 1), "I" * (n - 1) + "X", "YZ" + "I" * (n - 2))
    return Circuit(n, tuple(out), observables, n_inputs=n, n_weights=n_weights)


def _reuploading(n: int, layers: int) -> Circuit:
    """Input-dependent gates after entangling ones: per-sample one-qubit matrices, phases and
    two-qubit matrices, next to complex weight-only blocks (RX on 5 + 1 qubits)."""
    x = Param.input
    return _layered(
        n,
        layers,
        lambda layer, w: [
            *(Gate("ry", (q,), (x(q),)) for q in range(n)),
            *(Gate("rx", (q,), (w(),)) for q in range(n)),
            *(Gate("crz", (q, (q + 1) % n), (x(q),)) for q in range(n)),
            Gate("rzz", (0, n - 1), (w(),)),
            Gate("rxx", (n - 1, 1), (x(layer % n),)),
            Gate("cry", (2, 0), (w(),)),
            Gate("rz", (1,), (Param.const(0.3),)),
            Gate("swap", (0, 3)),
        ],
    )


def _complex_prefix(n: int, layers: int) -> Circuit:
    """H, RZ(x), RX(w) before any entangler: a complex product state; constant phase runs."""
    return _layered(
        n,
        layers,
        lambda layer, w: [
            *(
                Gate(g, (q,), p)
                for q in range(n)
                for g, p in [("h", ()), ("rz", (Param.input(q),))]
            ),
            *(Gate("rx", (q,), (w(),)) for q in range(n)),
            *(Gate("cz", (q, q + 1)) for q in range(n - 1)),
            Gate("s", (0,)),
            Gate("t", (n - 1,)),
            Gate("cy", (1, 0)),
            Gate("y", (2,)),
            Gate("p", (1,), (w(),)),
        ],
    )


def _no_prefix(n: int, layers: int) -> Circuit:
    """Every qubit starts with an entangling gate: the state starts as |0...0>."""
    return _layered(
        n,
        layers,
        lambda layer, w: [
            *(Gate("cx", (q, (q + 1) % n)) for q in range(n)),
            Gate("ryy", (0, 2), (w(),)),
            *(Gate("ry", (q,), (Param.input(q),)) for q in range(n)),
            Gate("crx", (1, 2), (w(),)),
        ],
    )


def _weights_only(n: int, layers: int) -> Circuit:
    """No gate reads an input: one row of results broadcast over the batch."""
    circuit = _layered(
        n,
        layers,
        lambda layer, w: [
            *(Gate("ry", (q,), (w(),)) for q in range(n)),
            *(Gate("crz", (q, (q + 1) % n), (w(),)) for q in range(n)),
            Gate("x", (1,)),
        ],
    )
    return Circuit(n, circuit.gates, circuit.observables, n_inputs=0, n_weights=circuit.n_weights)


@pytest.mark.parametrize(
    "circuit",
    [
        _reuploading(6, 2),
        _complex_prefix(7, 2),
        _no_prefix(3, 2),
        _weights_only(6, 2),
        paper_circuit(7, 2),
        hardware_efficient_circuit(12, 1),
    ],
    ids=["reuploading", "complex-prefix", "no-prefix", "weights-only", "paper-7", "hwe-12"],
)
@pytest.mark.parametrize("shape", [(3, 5), (1,), ()])
def test_every_path_matches_the_simulator(circuit, shape):
    """Batched and shared matrices, real and complex states, blocks of 5 + remainder, 1-D x."""
    _compare(circuit, torch.float64, shape=shape)


@pytest.mark.parametrize("opset", [MIN_OPSET, 17, 18, 23])
def test_opsets_with_attribute_and_input_axes(opset):
    """Reduce* / Split take axes and output counts as attributes before opset 18."""
    _compare(_reuploading(4, 1), torch.float64, opset=opset)
    _compare(_complex_prefix(3, 1), torch.float32, opset=opset, tol=1e-5)


def test_opset_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match=f"opset >= {MIN_OPSET}.*opset 14"):
        quantum_layer_function(paper_circuit(2, 1), 14)


def test_paper_circuit_10x10_float32_batch_64():
    circuit = paper_circuit(10, 10)
    weights = np.random.default_rng(0).uniform(0, 2 * np.pi, circuit.n_weights)
    session = _session(circuit, np.float32, ("batch",), weights=weights.astype(np.float32))
    x = np.random.default_rng(1).uniform(-1, 1, (64, 10)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    expected = expectation_values(
        circuit, torch.tensor(x, dtype=torch.float64), torch.tensor(weights)
    ).numpy()
    np.testing.assert_allclose(y, expected, atol=2e-5, rtol=0)


def _nodes(circuit: Circuit) -> int:
    return len(quantum_layer_function(circuit, OPSET).node)


def test_body_size_grows_with_gate_runs_not_gates():
    """onnxruntime inlines one body per node and its load time is superlinear in graph size:
    the paper 10x10 body was 5,933 nodes (a 60-adapter model took ~7 minutes to load)."""
    assert _nodes(paper_circuit(10, 10)) <= 650
    assert _nodes(hardware_efficient_circuit(10, 10)) <= 370
    assert _nodes(paper_circuit(4, 2)) <= 150
    # one paper layer is 4n gates but 4 runs (2 of them in blocks of 5 qubits)
    for n in (4, 10, 16):
        per_layer = _nodes(paper_circuit(n, 4)) - _nodes(paper_circuit(n, 3))
        assert per_layer <= 40 + 8 * -(-n // 5), (n, per_layer)


def test_generation_is_deterministic():
    """check_fallbacks compares a model's bodies with freshly generated ones."""
    circuit = _reuploading(5, 2)
    assert quantum_layer_function(circuit, OPSET) == quantum_layer_function(circuit, OPSET)


def test_weight_only_work_is_constant_folded(tmp_path):
    """With the weights an initializer, onnxruntime folds every gate matrix and phase: only the
    input-dependent encoding computes a cosine at run time."""
    circuit = paper_circuit(10, 3)
    weights = np.random.default_rng(0).uniform(0, 6, circuit.n_weights).astype(np.float32)
    model = quantum_layer_model(circuit, weights=weights)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)
    assert ops["Cos"] == ops["Sin"] == 1
    assert sum(ops.values()) < _nodes(circuit) / 3
