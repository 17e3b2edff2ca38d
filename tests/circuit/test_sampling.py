"""Shot-based estimation and parameter-shift gradients against the exact torch simulator."""

import random
import sys

import numpy as np
import pytest
import torch

from qwthn_onnx.circuit import (
    Circuit,
    CircuitError,
    Gate,
    Param,
    expectation_values,
    hardware_efficient_circuit,
    paper_circuit,
)
from qwthn_onnx.circuit.sampling import (
    SHIFT_RULES,
    ShotEstimator,
    sampled_expectations,
    shift_gradients,
)
from tests.circuit.helpers import random_circuit

x, w, c = Param.input, Param.weight, Param.const


def shared_weight_circuit() -> Circuit:
    """w0 drives three gates (two ry, one rx), w1 two crz, x0 two gates; X/Y observables."""
    gates = [
        Gate("ry", (0,), (x(0),)),
        Gate("ry", (1,), (x(1),)),
        Gate("ry", (0,), (w(0),)),
        Gate("ry", (1,), (w(0),)),
        Gate("crz", (0, 1), (w(1),)),
        Gate("rx", (1,), (w(0),)),
        Gate("crz", (1, 0), (w(1),)),
        Gate("rzz", (0, 1), (x(0),)),
    ]
    return Circuit(2, tuple(gates), ("ZI", "IZ", "XX", "YZ"), n_inputs=2, n_weights=2)


def all_rules_circuit() -> Circuit:
    """Every gate with a shift rule, with input and weight angles, plus constant gates."""
    gates = [
        Gate("rx", (0,), (x(0),)),
        Gate("ry", (1,), (x(1),)),
        Gate("h", (2,)),
        Gate("rz", (2,), (w(0),)),
        Gate("p", (2,), (w(1),)),
        Gate("ry", (0,), (c(0.3),)),
        Gate("crx", (0, 1), (w(2),)),
        Gate("cry", (1, 2), (x(2),)),
        Gate("cp", (2, 0), (w(3),)),
        Gate("h", (0,)),
        Gate("rzz", (0, 2), (w(4),)),
        Gate("cx", (0, 2)),
        Gate("rxx", (1, 2), (w(5),)),
        Gate("s", (1,)),
        Gate("ryy", (0, 1), (x(0),)),
        Gate("crz", (2, 1), (w(0),)),
        Gate("crx", (1, 0), (c(0.7),)),
    ]
    observables = ("ZII", "IXI", "YZX", "ZZZ", "IIY")
    return Circuit(3, tuple(gates), observables, n_inputs=3, n_weights=6)


def random_values(circuit: Circuit, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = rng.uniform(-np.pi, np.pi, (batch, circuit.n_inputs))
    weights = rng.uniform(-np.pi, np.pi, circuit.n_weights)
    return inputs, weights


def exact(circuit: Circuit, inputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return expectation_values(circuit, torch.tensor(inputs), torch.tensor(weights)).numpy()


def autograd_vjp(circuit, inputs, weights, grad_out):
    xt = torch.tensor(inputs, requires_grad=True)
    wt = torch.tensor(weights, requires_grad=True)
    (expectation_values(circuit, xt, wt) * torch.tensor(grad_out)).sum().backward()
    return xt.grad.numpy(), wt.grad.numpy()


class CountingRun:
    """Wraps ``backend.run`` to record how many jobs and circuits an estimator submits."""

    def __init__(self, estimator: ShotEstimator, monkeypatch: pytest.MonkeyPatch):
        self.jobs: list[int] = []
        original = estimator.backend.run

        def run(circuits, **options):
            self.jobs.append(len(circuits))
            return original(circuits, **options)

        monkeypatch.setattr(estimator.backend, "run", run)


PRESETS = [paper_circuit(3, 1), hardware_efficient_circuit(3, 1)]
GRAD_CIRCUITS = [*PRESETS, shared_weight_circuit(), all_rules_circuit()]
GRAD_IDS = ["paper", "hardware_efficient", "shared_weight", "all_rules"]


# ----------------------------------------------------------------------------------------------
# Estimates
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "circuit", [*PRESETS, shared_weight_circuit(), all_rules_circuit()], ids=GRAD_IDS
)
def test_exact_mode_matches_simulator(circuit):
    inputs, weights = random_values(circuit, 5, seed=1)
    means, stderr = ShotEstimator(shots=None).estimate(circuit, inputs, weights)
    assert means.dtype == np.float64 and means.shape == (5, circuit.n_observables)
    np.testing.assert_allclose(means, exact(circuit, inputs, weights), rtol=0, atol=1e-10)
    assert np.all(stderr == 0)


def test_bit_order_and_pauli_bases_with_deterministic_outcomes():
    """|1>|+i>|+> (qubits 0, 1, 2): reading count keys left to right as qubit 0 flips signs."""
    gates = [Gate("x", (0,)), Gate("h", (1,)), Gate("s", (1,)), Gate("h", (2,))]
    observables = ("ZII", "IYI", "IIX", "ZIX", "ZYX", "ZYI")
    circuit = Circuit(3, tuple(gates), observables, n_inputs=0, n_weights=0)
    expected = [-1, 1, 1, -1, -1, -1]
    for estimator in (ShotEstimator(shots=None), ShotEstimator(shots=50, seed=0)):
        means, stderr = estimator.estimate(circuit, np.zeros((2, 0)), np.zeros(0))
        np.testing.assert_allclose(means, [expected] * 2, atol=1e-12)
        np.testing.assert_allclose(stderr, 0, atol=1e-12)


@pytest.mark.parametrize("circuit", PRESETS, ids=GRAD_IDS[:2])
def test_shot_estimates_are_within_five_standard_errors(circuit):
    shots = 4000
    inputs, weights = random_values(circuit, 6, seed=2)
    means, stderr = ShotEstimator(shots=shots, seed=11).estimate(circuit, inputs, weights)
    truth = exact(circuit, inputs, weights)
    assert np.all(stderr > 0)
    z = (means - truth) / stderr
    assert np.all(np.abs(z) < 5), z
    # stderr is sqrt((1 - m^2) / (shots - 1)) of the estimate, close to the true-m value...
    ideal = np.sqrt((1 - truth**2) / shots)
    ok = ideal > 0.005
    assert np.all((stderr[ok] / ideal[ok] > 0.8) & (stderr[ok] / ideal[ok] < 1.25))
    # ...and neither too small nor too large: the z-scores look standard normal
    assert 0.4 < np.mean(z**2) < 2.5


def test_pauli_observables_with_shots_and_grouping(monkeypatch):
    """X/Y observables are rotated; one circuit per qubit-wise-commuting group and sample."""
    circuit = Circuit(
        3,
        all_rules_circuit().gates,
        ("XIY", "XZY", "ZZI", "IIZ", "IXI"),
        n_inputs=3,
        n_weights=6,
    )
    # greedy grouping: {XIY, XZY} measured in XZY, {ZZI, IIZ} in ZZZ, {IXI} alone (3 groups)
    estimator = ShotEstimator(shots=4000, seed=5)
    counter = CountingRun(estimator, monkeypatch)
    inputs, weights = random_values(circuit, 4, seed=3)
    means, stderr = estimator.estimate(circuit, inputs, weights)
    assert counter.jobs == [4 * 3]
    assert np.all(np.abs(means - exact(circuit, inputs, weights)) < 5 * stderr)


def test_seed_makes_results_reproducible():
    circuit = paper_circuit(3, 1)
    inputs, weights = random_values(circuit, 3, seed=4)
    first = ShotEstimator(shots=500, seed=3).estimate(circuit, inputs, weights)
    again = ShotEstimator(shots=500, seed=3)
    np.testing.assert_array_equal(again.estimate(circuit, inputs, weights)[0], first[0])
    np.testing.assert_array_equal(
        ShotEstimator(shots=500, seed=3).estimate(circuit, inputs, weights)[1], first[1]
    )
    other = ShotEstimator(shots=500, seed=4).estimate(circuit, inputs, weights)
    assert not np.array_equal(other[0], first[0])
    # successive calls draw fresh shot noise (as hardware would), still reproducibly
    assert not np.array_equal(again.estimate(circuit, inputs, weights)[0], first[0])


def test_estimate_rejects_bad_shapes():
    circuit = paper_circuit(3, 1)
    estimator = ShotEstimator(shots=None)
    with pytest.raises(CircuitError, match="inputs must have shape"):
        estimator.estimate(circuit, np.zeros(3), np.zeros(circuit.n_weights))
    with pytest.raises(CircuitError, match="weights must have shape"):
        estimator.estimate(circuit, np.zeros((1, 3)), np.zeros(2))
    with pytest.raises(CircuitError, match="non-finite"):
        estimator.estimate(circuit, np.full((1, 3), np.nan), np.zeros(circuit.n_weights))


# ----------------------------------------------------------------------------------------------
# Parameter-shift gradients
# ----------------------------------------------------------------------------------------------


def test_shift_rules_cover_every_parameterised_gate():
    from qwthn_onnx.circuit import GATES

    assert {n for n, spec in GATES.items() if spec.n_params} == set(SHIFT_RULES)
    for rule in SHIFT_RULES.values():  # a constant's derivative is 0: coefficients sum to 0
        assert abs(sum(coeff for _, coeff in rule)) < 1e-15


@pytest.mark.parametrize("circuit", GRAD_CIRCUITS, ids=GRAD_IDS)
def test_exact_shift_gradients_match_autograd(circuit):
    inputs, weights = random_values(circuit, 3, seed=6)
    grad_out = np.random.default_rng(7).normal(size=(3, circuit.n_observables))
    grad_x, grad_w = shift_gradients(ShotEstimator(None), circuit, inputs, weights, grad_out)
    ref_x, ref_w = autograd_vjp(circuit, inputs, weights, grad_out)
    assert grad_x.shape == inputs.shape and grad_w.shape == weights.shape
    np.testing.assert_allclose(grad_x, ref_x, rtol=0, atol=1e-8)
    np.testing.assert_allclose(grad_w, ref_w, rtol=0, atol=1e-8)


@pytest.mark.parametrize("seed", range(3))
def test_exact_shift_gradients_match_autograd_on_random_circuits(seed):
    circuit = random_circuit(random.Random(seed), 3, 16, n_observables=4)
    inputs, weights = random_values(circuit, 2, seed=seed)
    grad_out = np.random.default_rng(seed).normal(size=(2, circuit.n_observables))
    grad_x, grad_w = shift_gradients(ShotEstimator(None), circuit, inputs, weights, grad_out)
    ref_x, ref_w = autograd_vjp(circuit, inputs, weights, grad_out)
    np.testing.assert_allclose(grad_x, ref_x, rtol=0, atol=1e-8)
    np.testing.assert_allclose(grad_w, ref_w, rtol=0, atol=1e-8)


def test_two_term_rule_is_wrong_for_controlled_rotations():
    """Guards the four-term rule: the cheaper two-term rule gives a different CRZ gradient."""
    circuit = paper_circuit(2, 1)
    inputs, weights = random_values(circuit, 2, seed=8)
    grad_out = np.ones((2, 2))
    _, ref_w = autograd_vjp(circuit, inputs, weights, grad_out)
    rules = SHIFT_RULES.copy()
    try:
        SHIFT_RULES["crz"] = SHIFT_RULES["ry"]
        from qwthn_onnx.circuit import sampling

        sampling._compile.cache_clear()
        _, wrong_w = shift_gradients(ShotEstimator(None), circuit, inputs, weights, grad_out)
    finally:
        SHIFT_RULES.clear()
        SHIFT_RULES.update(rules)
        sampling._compile.cache_clear()
    crz = [gate.params[0].value for gate in circuit.gates if gate.name == "crz"]
    assert np.abs(wrong_w[crz] - ref_w[crz]).max() > 1e-3


def test_shift_gradients_skip_unrequested_parts_and_use_one_job(monkeypatch):
    circuit = paper_circuit(2, 1)  # 2 ry(x), 4 ry(w), 4 crz(w)
    inputs, weights = random_values(circuit, 3, seed=9)
    estimator = ShotEstimator(shots=10, seed=0)
    counter = CountingRun(estimator, monkeypatch)
    grad_out = np.ones((3, 2))
    grad_x, grad_w = shift_gradients(estimator, circuit, inputs, weights, grad_out)
    assert grad_x.shape == (3, 2) and grad_w.shape == (8,)
    grad_x, grad_w = shift_gradients(
        estimator, circuit, inputs, weights, grad_out, wrt_inputs=False
    )
    assert grad_x is None and grad_w.shape == (8,)
    grad_x, grad_w = shift_gradients(
        estimator, circuit, inputs, weights, grad_out, wrt_weights=False
    )
    assert grad_w is None and grad_x.shape == (3, 2)
    assert counter.jobs == [3 * (2 * 2 + 4 * 2 + 4 * 4), 3 * (4 * 2 + 4 * 4), 3 * 2 * 2]


# ----------------------------------------------------------------------------------------------
# torch autograd function
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sampled_expectations_exact_mode_matches_autograd(dtype):
    circuit = all_rules_circuit()
    gen = torch.Generator().manual_seed(0)
    inputs = (torch.rand(2, 3, circuit.n_inputs, generator=gen, dtype=torch.float64) * 6 - 3).to(
        dtype
    )
    weights = (torch.rand(circuit.n_weights, generator=gen, dtype=torch.float64) * 6 - 3).to(dtype)
    grad_out = torch.randn(2, 3, circuit.n_observables, generator=gen, dtype=torch.float64)

    xs = inputs.clone().requires_grad_()
    ws = weights.clone().requires_grad_()
    out = sampled_expectations(circuit, xs, ws, ShotEstimator(shots=None))
    assert out.shape == (2, 3, circuit.n_observables) and out.dtype == dtype
    (out * grad_out.to(dtype)).sum().backward()
    assert xs.grad.dtype == dtype and ws.grad.dtype == dtype
    assert xs.grad.shape == inputs.shape and ws.grad.shape == weights.shape

    xr = inputs.double().requires_grad_()
    wr = weights.double().requires_grad_()
    ref = expectation_values(circuit, xr, wr)
    (ref * grad_out).sum().backward()
    tol = 1e-8 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), ref.detach(), rtol=0, atol=tol)
    torch.testing.assert_close(xs.grad.double(), xr.grad, rtol=0, atol=tol)
    torch.testing.assert_close(ws.grad.double(), wr.grad, rtol=0, atol=tol)


def test_sampled_expectations_only_weight_gradient():
    circuit = paper_circuit(2, 1)
    inputs = torch.rand(4, 2, dtype=torch.float64)
    weights = torch.rand(8, dtype=torch.float64, requires_grad=True)
    sampled_expectations(circuit, inputs, weights, ShotEstimator(None)).sum().backward()
    xr, wr = inputs.clone(), weights.detach().clone().requires_grad_()
    expectation_values(circuit, xr, wr).sum().backward()
    torch.testing.assert_close(weights.grad, wr.grad, rtol=0, atol=1e-8)


def test_empty_batch_and_parameterless_circuit():
    circuit = paper_circuit(2, 1)
    inputs = torch.zeros(0, 4, 2, requires_grad=True)
    weights = torch.rand(8, requires_grad=True)
    out = sampled_expectations(circuit, inputs, weights, ShotEstimator(shots=100, seed=0))
    assert out.shape == (0, 4, 2)
    out.sum().backward()
    assert inputs.grad.shape == inputs.shape and torch.all(weights.grad == 0)
    plus = Circuit(1, (Gate("h", (0,)),), ("X", "Z"), n_inputs=0, n_weights=0)
    grad_x, grad_w = shift_gradients(
        ShotEstimator(shots=10), plus, np.zeros((2, 0)), np.zeros(0), np.ones((2, 2))
    )
    assert grad_x.shape == (2, 0) and grad_w.shape == (0,)


def test_sampled_expectations_with_shots_estimates_the_gradient():
    """Shot gradients deviate from the exact ones by no more than their noise allows.

    Every rule's |coefficients| sum to 1, and one shot of sum_j g_j P_j lies in
    [-sum|g|, sum|g|], so the standard error of an occurrence's contribution is at most
    sum|g| / sqrt(shots); a parameter's is at most the sum over its occurrences (and samples).
    """
    circuit, shots = paper_circuit(3, 1), 4000
    inputs, weights = random_values(circuit, 3, seed=10)
    grad_out = np.random.default_rng(10).normal(size=(3, circuit.n_observables))
    xs = torch.tensor(inputs, dtype=torch.float32, requires_grad=True)
    ws = torch.tensor(weights, dtype=torch.float32, requires_grad=True)
    estimator = ShotEstimator(shots=shots, seed=21)
    out = sampled_expectations(circuit, xs, ws, estimator)
    assert out.dtype == torch.float32 and out.shape == (3, circuit.n_observables)
    (out * torch.tensor(grad_out, dtype=torch.float32)).sum().backward()
    ref_x, ref_w = autograd_vjp(circuit, inputs, weights, grad_out)

    row_bound = np.abs(grad_out).sum(1) / np.sqrt(shots)  # [B]
    uses_w = np.bincount(
        [g.params[0].value for g in circuit.gates if g.params and g.params[0].kind == "weight"],
        minlength=circuit.n_weights,
    )
    uses_x = np.bincount(
        [g.params[0].value for g in circuit.gates if g.params and g.params[0].kind == "input"],
        minlength=circuit.n_inputs,
    )
    bound_x = row_bound[:, None] * uses_x[None, :]
    bound_w = row_bound.sum() * uses_w
    err_x = np.abs(xs.grad.double().numpy() - ref_x)
    err_w = np.abs(ws.grad.double().numpy() - ref_w)
    assert np.all(err_x < 3 * bound_x) and np.all(err_w < 3 * bound_w)
    # and the estimate as a whole points where the exact gradient does
    est = np.concatenate([xs.grad.double().numpy().ravel(), ws.grad.double().numpy()])
    ref = np.concatenate([ref_x.ravel(), ref_w])
    assert np.linalg.norm(est - ref) < 0.1 * np.linalg.norm(ref)


# ----------------------------------------------------------------------------------------------
# Bad arguments
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shots", [0, -5, 2.5, True, "100"])
def test_bad_shots_are_rejected(shots):
    with pytest.raises(CircuitError, match="shots must be an integer >= 1"):
        ShotEstimator(shots=shots)


def test_unknown_backend_is_rejected():
    with pytest.raises(CircuitError, match=r"unknown backend 'qpu'.*'basic', 'aer'"):
        ShotEstimator(backend="qpu")


def test_missing_aer_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "qiskit_aer", None)  # makes `import qiskit_aer` fail
    with pytest.raises(CircuitError, match=r"pip install qiskit-aer.*backend='basic'"):
        ShotEstimator(shots=100, backend="aer")


def test_sampled_expectations_rejects_bad_arguments():
    circuit = paper_circuit(2, 1)
    weights = torch.zeros(8)
    with pytest.raises(CircuitError, match="estimator must be a ShotEstimator"):
        sampled_expectations(circuit, torch.zeros(1, 2), weights, None)
    with pytest.raises(CircuitError, match="inputs must have shape"):
        sampled_expectations(circuit, torch.zeros(1, 3), weights, ShotEstimator(None))
    with pytest.raises(CircuitError, match="inputs must be a real floating"):
        sampled_expectations(circuit, torch.zeros(1, 2, dtype=torch.long), weights, ShotEstimator())


def test_deviation_uses_the_true_standard_error_not_the_sample_one():
    from qwthn_onnx.circuit.sampling import deviation_in_standard_errors

    # 0 at mean 0 with 100 shots: sigma = 0.1, so 0.1 away is one standard error
    assert deviation_in_standard_errors(np.array([0.1]), np.array([0.0]), 100)[0] == 1.0
    # near +1 every shot agrees (sample stderr 0): still a small, finite deviation
    z = deviation_in_standard_errors(np.array([1.0]), np.array([0.99982]), 2000)[0]
    assert 0 < z < 1
    assert deviation_in_standard_errors(np.array([1.0]), np.array([1.0]), 50)[0] == 0.0
