"""Amazon Braket's LocalSimulator backend: exact, with shots, one program set per job, refusals."""

import numpy as np
import pytest

from qwthn_onnx.circuit import Circuit, Gate, Param, hardware_efficient_circuit, paper_circuit
from qwthn_onnx.qpu.backend import ExactBackend, LayerCall, QPUError
from qwthn_onnx.qpu.registry import make_backend

braket_backend = pytest.importorskip("qwthn_onnx.qpu.braket_backend")
BraketLocalBackend = braket_backend.BraketLocalBackend
LocalSimulator = braket_backend.LocalSimulator

CIRCUIT = paper_circuit(4, 2)
WEIGHTS = np.random.default_rng(0).uniform(-np.pi, np.pi, CIRCUIT.n_weights)
INPUTS = np.random.default_rng(1).uniform(-np.pi, np.pi, (6, 4))
SHOTS = 2000


def _exact(circuit=CIRCUIT, weights=WEIGHTS, inputs=INPUTS):
    backend = ExactBackend()
    backend.prepare("layer", circuit, weights)
    return backend.run([LayerCall("layer", circuit, weights, inputs)])[0]


def _run(backend, circuit=CIRCUIT, weights=WEIGHTS, inputs=INPUTS):
    backend.prepare("layer", circuit, weights)
    return backend.run([LayerCall("layer", circuit, weights, inputs)])[0]


def _within_five_standard_errors(estimate, exact, shots):
    stderr = np.maximum(np.sqrt(np.clip(1 - exact**2, 0, None) / shots), 1 / shots)
    assert estimate.shape == exact.shape
    assert (np.abs(estimate - exact) <= 5 * stderr).all(), np.abs(estimate - exact) / stderr


@pytest.fixture
def device_runs(monkeypatch):
    """What each ``LocalSimulator.run`` was given (the call goes through unchanged)."""
    runs = []
    real = LocalSimulator.run

    def run(self, task, *args, **kwargs):
        runs.append(task)
        return real(self, task, *args, **kwargs)

    monkeypatch.setattr(LocalSimulator, "run", run)
    return runs


# A circuit whose qubit 1 has no gate (Braket simulates only the qubits in use) and whose
# observables are products: the qubit order of every path is visible in the values.
IDLE = Circuit(
    3,
    (
        Gate("ry", (0,), (Param.input(0),)),
        Gate("rx", (2,), (Param.weight(0),)),
        Gate("crz", (2, 0), (Param.input(1),)),
        Gate("h", (0,)),
    ),
    ("ZII", "IZI", "IIZ", "ZIZ", "ZZZ"),
    n_inputs=2,
    n_weights=1,
)


@pytest.mark.parametrize("device", [None, "local", "dm"])
def test_exact_equals_the_kernel(device):
    backend = make_backend("braket" if device is None else f"braket:{device}")
    assert isinstance(backend, BraketLocalBackend) and backend.shots is None
    assert backend.name == f"braket:{device or 'local'}"
    assert backend.num_qubits == (13 if device == "dm" else 26)
    np.testing.assert_allclose(_run(backend), _exact(), rtol=0, atol=1e-9)
    reference = ExactBackend().prepare("layer", CIRCUIT, WEIGHTS)
    assert backend.reports["layer"] == reference


def test_qubit_order_with_an_idle_qubit_and_products():
    inputs = np.random.default_rng(2).uniform(-np.pi, np.pi, (4, 2))
    exact = _exact(IDLE, np.array([0.7]), inputs)
    assert np.abs(exact[:, [0, 2, 3, 4]]).max() > 0.1  # nothing trivially 0
    got = _run(BraketLocalBackend(), IDLE, np.array([0.7]), inputs)
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-9)
    shots = 4000
    sampled = _run(BraketLocalBackend(shots=shots, seed=3), IDLE, np.array([0.7]), inputs)
    _within_five_standard_errors(sampled, exact, shots)
    np.testing.assert_array_equal(sampled[:, 1], 1.0)  # the idle qubit is always measured 0


@pytest.mark.parametrize("device", ["local", "dm"])
def test_shots_land_within_five_standard_errors(device):
    backend = BraketLocalBackend(device, shots=SHOTS, seed=11)
    assert backend.shots == SHOTS
    _within_five_standard_errors(_run(backend), _exact(), SHOTS)


def test_a_seed_repeats_the_shots():
    first, again = (_run(BraketLocalBackend(shots=500, seed=5)) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, _run(BraketLocalBackend(shots=500, seed=6)))
    backend = BraketLocalBackend(shots=500, seed=5)
    _run(backend)
    call = LayerCall("layer", CIRCUIT, WEIGHTS, INPUTS)
    assert not np.array_equal(backend.run([call])[0], first)  # the next job draws new shots


def test_one_program_set_for_several_layer_calls(device_runs):
    from braket.program_sets import ProgramSet

    other = hardware_efficient_circuit(3, 2)
    other_weights = np.linspace(-1, 1, other.n_weights)
    other_inputs = np.random.default_rng(4).uniform(-np.pi, np.pi, (3, other.n_inputs))
    backend = BraketLocalBackend(shots=SHOTS, seed=1)
    backend.prepare("a", CIRCUIT, WEIGHTS)
    backend.prepare("b", other, other_weights)
    calls = [
        LayerCall("a", CIRCUIT, WEIGHTS, INPUTS),
        LayerCall("b", other, other_weights, other_inputs),
        LayerCall("a", CIRCUIT, WEIGHTS, INPUTS[:0]),  # nothing to send
        LayerCall("a", CIRCUIT, WEIGHTS, INPUTS[:2]),
    ]
    results = backend.run(calls)
    assert len(device_runs) == 1 and isinstance(device_runs[0], ProgramSet)
    assert len(device_runs[0].entries) == 3 and device_runs[0].total_executables == 6 + 3 + 2
    assert device_runs[0].shots_per_executable == SHOTS
    assert results[2].shape == (0, CIRCUIT.n_observables)
    _within_five_standard_errors(results[0], _exact(), SHOTS)
    _within_five_standard_errors(results[1], _exact(other, other_weights, other_inputs), SHOTS)
    _within_five_standard_errors(results[3], _exact(inputs=INPUTS[:2]), SHOTS)


def test_a_layer_without_inputs_runs_once_for_all_rows(device_runs):
    gates = (Gate("ry", (0,), (Param.weight(0),)), Gate("cx", (0, 1)))
    circuit = Circuit(2, gates, ("ZZ", "ZI"), n_inputs=0, n_weights=1)
    weights, rows = np.array([0.9]), np.zeros((3, 0))
    backend = BraketLocalBackend(shots=SHOTS, seed=2)
    got = _run(backend, circuit, weights, rows)
    assert device_runs[0].total_executables == 1
    np.testing.assert_array_equal(got, np.broadcast_to(got[0], got.shape))
    _within_five_standard_errors(got, _exact(circuit, weights, rows), SHOTS)
    exact = _run(BraketLocalBackend(), circuit, weights, rows)
    np.testing.assert_allclose(exact, _exact(circuit, weights, rows), rtol=0, atol=1e-9)


def test_bad_backends_are_refused():
    with pytest.raises(QPUError, match=r"unknown Braket device 'sv1'; choose one of braket:local"):
        BraketLocalBackend("sv1")
    for shots in (0, -5, 1.5, True):
        with pytest.raises(QPUError, match="shots must be an integer >= 1"):
            BraketLocalBackend(shots=shots)
    with pytest.raises(QPUError, match="seed must be an integer"):
        BraketLocalBackend(seed="7")


def test_a_circuit_wider_than_the_simulator_is_refused_before_any_work(device_runs):
    backend = BraketLocalBackend("dm")
    wide = paper_circuit(14, 1)
    with pytest.raises(QPUError, match="its circuit has 14 qubits, but braket:dm has 13"):
        backend.prepare("wide", wide, np.zeros(wide.n_weights))
    assert not backend.layers and not backend.reports and not device_runs


def test_x_observables_are_refused():
    circuit = Circuit(1, (Gate("h", (0,)),), ("X",), n_inputs=0, n_weights=0)
    with pytest.raises(QPUError, match=r"layer 'x' cannot run on braket:local: .*'X' contains X"):
        BraketLocalBackend().prepare("x", circuit, np.zeros(0))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (LayerCall("other", CIRCUIT, WEIGHTS, INPUTS), "layer 'other' was not prepared"),
        (LayerCall("layer", CIRCUIT, WEIGHTS, INPUTS[:, :3]), r"inputs must be \[N, 4\]"),
        (LayerCall("layer", CIRCUIT, WEIGHTS, INPUTS[0]), r"got shape \(4,\)"),
        (LayerCall("layer", CIRCUIT, WEIGHTS, INPUTS * np.nan), "NaN or infinity"),
        (LayerCall("layer", CIRCUIT, WEIGHTS + 1, INPUTS), "other weights than it was compiled"),
        (LayerCall("layer", paper_circuit(4, 1), WEIGHTS, INPUTS), "another circuit or other"),
    ],
)
def test_bad_calls_are_refused_before_any_work(call, message, device_runs):
    backend = BraketLocalBackend(shots=100)
    backend.prepare("layer", CIRCUIT, WEIGHTS)
    good = LayerCall("layer", CIRCUIT, WEIGHTS, INPUTS)
    with pytest.raises(QPUError, match=message):
        backend.run([good, call])
    assert not device_runs
