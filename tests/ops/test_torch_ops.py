import copy
import random

import pytest
import torch

from qwthn_onnx import QWTHNConfig, QWTHNModel
from qwthn_onnx.circuit import CircuitError, expectation_values, paper_circuit
from qwthn_onnx.mpo import MPOError
from qwthn_onnx.ops.torch_ops import circuit_arguments, quantum_layer
from tests.circuit.helpers import random_circuit


@pytest.mark.parametrize("seed", range(3))
def test_opcheck_schema_fake_and_autograd(seed):
    circuit = random_circuit(random.Random(seed), 4, 20)
    x = torch.rand(2, 3, circuit.n_inputs, dtype=torch.float64, requires_grad=True)
    w = torch.rand(circuit.n_weights, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(quantum_layer, (x, w, *circuit_arguments(circuit)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_gradients_match_the_torch_simulator(dtype):
    circuit = paper_circuit(5, 3)
    x = torch.rand(4, 7, 5, dtype=dtype, requires_grad=True)
    w = torch.rand(circuit.n_weights, dtype=dtype, requires_grad=True)
    probe = torch.randn(4, 7, 5, dtype=dtype)
    y = quantum_layer(x, w, *circuit_arguments(circuit))
    gx, gw = torch.autograd.grad((y * probe).sum(), (x, w))
    y_ref = expectation_values(circuit, x, w)
    rx, rw = torch.autograd.grad((y_ref * probe).sum(), (x, w))
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=0)
    torch.testing.assert_close(gx, rx, rtol=1e-4 if dtype == torch.float32 else 1e-9, atol=tol)
    torch.testing.assert_close(gw, rw, rtol=1e-4 if dtype == torch.float32 else 1e-9, atol=tol)


def test_adapter_with_the_kernel_trains_like_the_torch_backend(tiny_model, batch):
    base = tiny_model("llama")
    config = {"n_qubits": 4, "n_layers": 2, "rank": 8, "init_delta": "normal"}
    models = {
        b: QWTHNModel(copy.deepcopy(base), QWTHNConfig(**config, quantum_backend=b))
        for b in ("torch", "cpp")
    }
    models["cpp"].load_adapter_state_dict(models["torch"].adapter_state_dict())
    losses, grads = {}, {}
    for name, model in models.items():
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        losses[name] = loss.item()
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert losses["cpp"] == pytest.approx(losses["torch"], rel=1e-5)
    for key, g in grads["torch"].items():
        torch.testing.assert_close(grads["cpp"][key], g, rtol=1e-3, atol=1e-6)
    layer = next(iter(models["cpp"].adapter_layers().values()))
    assert layer.qwthn.qnn._use_kernel(torch.zeros(1))


def test_kernel_ops_refuse_tensors_off_the_cpu_and_say_what_to_use():
    from qwthn_onnx.ops.torch_ops import _check, _check_mpo

    cpu, meta = torch.empty(1), torch.empty(1, device="meta")
    with pytest.raises(CircuitError, match=r"got meta; use quantum_backend='torch'"):
        _check(cpu, meta)
    with pytest.raises(MPOError, match=r"got meta; call the MPOLinear module"):
        _check_mpo(cpu, [cpu, meta])
