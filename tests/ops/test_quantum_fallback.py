import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from qwthn_onnx.circuit import expectation_values, hardware_efficient_circuit, paper_circuit
from qwthn_onnx.ops import register_schemas
from qwthn_onnx.ops.models import quantum_layer_model
from qwthn_onnx.ops.quantum_fallback import quantum_layer_function
from tests.circuit.helpers import random_circuit

OPSET = 21


def _session(circuit, dtype) -> ort.InferenceSession:
    register_schemas()
    model = quantum_layer_model(circuit, dtype=dtype, leading_dims=("batch", "seq"), opset=OPSET)
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _compare(circuit, dtype, shape=(2, 3), tol=1e-10):
    session = _session(circuit, np.float64 if dtype == torch.float64 else np.float32)
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


def test_rotation_layers_are_fused_into_kronecker_blocks():
    """The paper circuit's RY layers take the fused path (and the presets test checks values)."""
    function = quantum_layer_function(paper_circuit(7, 2), OPSET)
    einsums = [n for n in function.node if n.op_type == "Einsum"]
    krons = [n for n in einsums if "ac,bd->abcd" in str(n.attribute)]
    # 3 RY layers after the prefix, 7 qubits -> blocks of 5 + 2 -> 4 + 1 krons, 4 Einsums each.
    assert len(krons) == 3 * (4 + 1) * 4
