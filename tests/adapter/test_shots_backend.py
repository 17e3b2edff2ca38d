"""A whole adapted model run as on a QPU: sampled expectations, parameter-shift gradients."""

import pytest
import torch

from qwthn_onnx import AdapterError, QWTHNConfig, QWTHNModel

CONFIG = {"n_qubits": 2, "n_layers": 1, "rank": 2, "init_delta": "normal", "alpha": 64.0}


def _model(tiny_model):
    torch.manual_seed(0)
    return QWTHNModel(tiny_model("llama"), QWTHNConfig(**CONFIG)).eval()


def test_exact_mode_of_the_shot_backend_equals_the_simulator(tiny_model, batch):
    model = _model(tiny_model)
    with torch.no_grad():
        exact = model(**batch).logits
        model.set_quantum_backend("shots", shots=None)
        sampled = model(**batch).logits
    torch.testing.assert_close(sampled, exact, atol=1e-5, rtol=1e-5)


def test_shots_approximate_the_exact_logits_and_converge(tiny_model, batch):
    model = _model(tiny_model)
    with torch.no_grad():
        exact = model(**batch).logits
        errors = []
        for shots in (100, 10_000):
            model.set_quantum_backend("shots", shots=shots, seed=1)
            errors.append((model(**batch).logits - exact).abs().max().item())
    assert 0 < errors[1] < errors[0], errors  # noise shrinks with shots (~1/sqrt(shots))
    model.set_quantum_backend("auto")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, exact)


def test_a_training_step_with_shots_uses_parameter_shift_gradients(tiny_model, batch):
    model = _model(tiny_model)
    model.train()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    exact = {n: p.grad.clone() for n, p in model.named_parameters() if "qnn.weights" in n}
    model.zero_grad()
    model.set_quantum_backend("shots", shots=None)  # exact parameter shift
    model(**batch, labels=batch["input_ids"]).loss.backward()
    for name, p in model.named_parameters():
        if "qnn.weights" in name:
            torch.testing.assert_close(p.grad, exact[name], atol=1e-5, rtol=1e-4)


def test_unknown_backend_is_named(tiny_model):
    with pytest.raises(AdapterError, match="quantum backend 'qpu' is not one of"):
        _model(tiny_model).set_quantum_backend("qpu")
