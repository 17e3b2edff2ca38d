"""Aer and IBM Runtime backends: exact, with shots, with a device's noise, one job per run."""

import socket

import numpy as np
import pytest
import qiskit_ibm_runtime
from qiskit.primitives import BackendEstimatorV2

from qwthn_onnx.circuit import Circuit, Gate, Param, paper_circuit
from qwthn_onnx.qpu.backend import ExactBackend, LayerCall, QPUError
from qwthn_onnx.qpu.qiskit_backends import AerBackend, IBMRuntimeBackend, precision_for_shots

CIRCUIT = paper_circuit(4, 2)
WEIGHTS = np.random.default_rng(0).uniform(-np.pi, np.pi, CIRCUIT.n_weights)
INPUTS = np.random.default_rng(1).uniform(-np.pi, np.pi, (6, 4))
SHOTS = 4000


def _run(backend, inputs=INPUTS, circuit=CIRCUIT, weights=WEIGHTS):
    backend.prepare("layer", circuit, weights)
    return backend.run([LayerCall("layer", circuit, weights, inputs)])[0]


@pytest.fixture(scope="module")
def exact():
    return _run(ExactBackend())


@pytest.fixture(scope="module")
def noisy_exact():
    """fake_torino's exact noisy expectations (density matrix, readout error included)."""
    return _run(AerBackend("fake_torino"))


def _stderr(expectation, shots):
    """One estimate's standard error: sqrt((1 - e^2) / shots), at least 1 / shots."""
    return np.maximum(np.sqrt(np.clip(1 - expectation**2, 0, None) / shots), 1 / shots)


@pytest.fixture
def count_runs(monkeypatch):
    """Counts ``run`` calls on a real estimator class (the call goes through unchanged)."""

    def install(cls):
        calls = []
        real = cls.run

        def run(self, pubs, **kwargs):
            pubs = list(pubs)
            calls.append(len(pubs))
            return real(self, pubs, **kwargs)

        monkeypatch.setattr(cls, "run", run)
        return calls

    return install


def test_noiseless_exact_equals_the_kernel(exact):
    for backend in (AerBackend(), AerBackend("fake_torino", noise=False)):
        np.testing.assert_allclose(_run(backend), exact, rtol=0, atol=1e-9)
        assert backend._cached_estimator.options.backend_options["method"] == "statevector"
    assert AerBackend().name == "aer" and AerBackend("fake_fez").name == "aer:fake_fez"


def test_shots_without_noise_are_within_five_standard_errors(exact):
    estimates = _run(AerBackend(shots=SHOTS, seed=7))
    assert np.all(np.abs(estimates - exact) <= 5 * _stderr(exact, SHOTS))
    assert not np.array_equal(estimates, exact)  # sampled, not exact


def test_device_noise_is_applied_yet_the_estimates_follow_the_exact_values(exact, noisy_exact):
    backend = AerBackend("fake_torino", shots=SHOTS, seed=11)
    estimates = _run(backend)
    # further from exact than shot noise explains: the device's errors shrink <Z> toward 0
    assert np.max(np.abs(estimates - exact) / _stderr(exact, SHOTS)) > 8
    assert np.corrcoef(estimates.ravel(), exact.ravel())[0, 1] > 0.95
    # and the shots scatter around the exact noisy value, readout error included
    assert np.all(np.abs(estimates - noisy_exact) <= 5 * _stderr(noisy_exact, SHOTS))
    assert backend.last_result[0].metadata["shots"] == SHOTS


def test_the_noisy_exact_expectation_is_a_density_matrix_and_includes_readout(exact, noisy_exact):
    gates_only = AerBackend("fake_torino")
    gates_only.prepare("layer", CIRCUIT, WEIGHTS)
    gates_only._exact_noisy.clear()  # the compiled circuit without the readout channel
    without_readout = gates_only.run([LayerCall("layer", CIRCUIT, WEIGHTS, INPUTS)])[0]
    assert gates_only._cached_estimator.options.backend_options["method"] == "density_matrix"
    assert (
        1e-3 < np.max(np.abs(without_readout - noisy_exact)) < np.max(np.abs(exact - noisy_exact))
    )


def test_a_custom_device_s_errors_are_the_noise(exact):
    ideal = _run(AerBackend("custom:basis=rz,sx,x,cz;coupling=ring:4"))
    np.testing.assert_allclose(ideal, exact, atol=1e-9)
    noisy = _run(AerBackend("custom:basis=rz,sx,x,cz;coupling=ring:4;error_2q=0.03"))
    assert np.max(np.abs(noisy - exact)) > 0.05
    readout = _run(AerBackend("custom:basis=rz,sx,x,cz;coupling=ring:4;error_readout=0.1"))
    np.testing.assert_allclose(readout, 0.8 * exact, atol=1e-9)  # <Z> -> (1 - 2p) <Z>


def test_one_job_of_one_pub_per_call(count_runs, exact):
    runs = count_runs(BackendEstimatorV2)
    backend = AerBackend("fake_torino", shots=1000, seed=3)
    other = paper_circuit(3, 1)
    other_weights = np.random.default_rng(4).uniform(-1, 1, other.n_weights)
    backend.prepare("a", CIRCUIT, WEIGHTS)
    backend.prepare("b", other, other_weights)
    calls = [
        LayerCall("a", CIRCUIT, WEIGHTS, INPUTS),
        LayerCall("b", other, other_weights, INPUTS[:2, :3]),
        LayerCall("a", CIRCUIT, WEIGHTS, INPUTS[:0]),  # no rows: nothing to send
        LayerCall("a", CIRCUIT, WEIGHTS, INPUTS[:1]),
    ]
    results = backend.run(calls)
    assert runs == [3]
    assert [r.shape for r in results] == [(6, 4), (2, 3), (0, 4), (1, 4)]
    assert [r.data.evs.shape for r in backend.last_result] == [(6, 4), (2, 3), (1, 4)]
    assert np.all(np.abs(results[3] - exact[:1]) < 0.5)


def test_a_seed_repeats_the_jobs_and_each_job_samples_anew():
    first, second = AerBackend(shots=500, seed=5), AerBackend(shots=500, seed=5)
    a1, a2 = _run(first), first.run([LayerCall("layer", CIRCUIT, WEIGHTS, INPUTS)])[0]
    b1, b2 = _run(second), second.run([LayerCall("layer", CIRCUIT, WEIGHTS, INPUTS)])[0]
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)


def test_ibm_local_mode_is_the_aer_path(count_runs, noisy_exact):
    ibm_runs = count_runs(qiskit_ibm_runtime.EstimatorV2)
    runs = count_runs(BackendEstimatorV2)
    backend = IBMRuntimeBackend("fake_torino", shots=SHOTS, seed=2)
    assert backend.name == "ibm:fake_torino" and backend.local and backend.num_qubits == 133
    estimates = _run(backend)
    assert ibm_runs == [1] and runs == [1]
    assert backend.last_result[0].metadata["shots"] == SHOTS
    assert np.all(np.abs(estimates - noisy_exact) <= 5 * _stderr(noisy_exact, SHOTS))
    aer = _run(AerBackend("fake_torino", shots=SHOTS, seed=9))
    assert np.all(np.abs(estimates - aer) <= 5 * np.sqrt(2) * _stderr(noisy_exact, SHOTS))


def test_precision_gives_exactly_the_shots():
    for shots in (1, 2, 7, 8, 1000, 2000, 4096, 12345, 99999):
        precision = precision_for_shots(shots)
        assert int(np.ceil(1 / precision**2)) == shots


@pytest.mark.parametrize("shots", [0, -5, 2.5, True, "100"])
def test_bad_shots_are_refused_before_any_work(shots):
    with pytest.raises(QPUError, match="shots must be an integer >= 1"):
        AerBackend("no_such_device", shots=shots)  # the device is not even looked up
    with pytest.raises(QPUError, match="shots must be an integer >= 1"):
        IBMRuntimeBackend("no_such_device", shots=shots)


def test_other_refusals():
    with pytest.raises(QPUError, match="optimization_level must be"):
        AerBackend("fake_torino", optimization_level=7)
    with pytest.raises(QPUError, match="unknown device 'fake_nowhere'"):
        AerBackend("fake_nowhere")
    with pytest.raises(QPUError, match="unknown device 'fake_nowhere'"):
        IBMRuntimeBackend("fake_nowhere")
    with pytest.raises(QPUError, match="give shots >= 1"):
        IBMRuntimeBackend("fake_torino", shots=None)
    with pytest.raises(QPUError, match="AerBackend"):
        IBMRuntimeBackend("custom:coupling=line:3")
    narrow = AerBackend("custom:coupling=line:3")
    with pytest.raises(QPUError, match="its circuit has 4 qubits, but aer:custom:coupling=line:3"):
        narrow.prepare("layer", CIRCUIT, WEIGHTS)
    assert narrow.compiled == {} and narrow.reports == {}
    with pytest.raises(QPUError, match="'missing' was not prepared"):
        narrow.run([LayerCall("missing", CIRCUIT, WEIGHTS, INPUTS)])


def test_exact_noisy_refuses_what_it_cannot_do_exactly():
    wide = AerBackend("fake_torino")
    with pytest.raises(QPUError, match="density matrix"):
        wide.prepare("wide", paper_circuit(10, 10), np.zeros(400))
    x_observable = Circuit(
        2, (Gate("ry", (0,), (Param.input(0),)),), ("XI", "IZ"), n_inputs=1, n_weights=0
    )
    with pytest.raises(QPUError, match="X or Y observable"):
        AerBackend("fake_torino").prepare("x", x_observable, np.zeros(0))
    # with shots, or without noise, both run
    backend = AerBackend("fake_torino", noise=False)
    backend.prepare("x", x_observable, np.zeros(0))
    inputs = np.array([[0.3], [1.2]])
    np.testing.assert_allclose(
        backend.run([LayerCall("x", x_observable, np.zeros(0), inputs)])[0],
        np.column_stack([np.sin(inputs[:, 0]), np.ones(2)]),
        atol=1e-9,
    )


def test_a_circuit_without_inputs_runs_once_for_all_rows():
    circuit = Circuit(
        2,
        (Gate("rx", (0,), (Param.weight(0),)), Gate("cx", (0, 1))),
        ("ZI", "IZ"),
        n_inputs=0,
        n_weights=1,
    )
    result = _run(
        AerBackend("fake_torino", noise=False), np.zeros((3, 0)), circuit, np.array([0.7])
    )
    np.testing.assert_allclose(result, np.full((3, 2), np.cos(0.7)), atol=1e-9)


@pytest.fixture
def offline(monkeypatch):
    """No IBM account in the environment, and any network connection fails the test."""
    for name in ("QISKIT_IBM_TOKEN", "QISKIT_IBM_URL", "QISKIT_IBM_INSTANCE", "QISKIT_IBM_CHANNEL"):
        monkeypatch.delenv(name, raising=False)
    attempts = []

    def connect(self, address):
        attempts.append(address)
        raise OSError(f"the test forbids network access (to {address})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_a_real_device_without_an_account_says_how_to_save_one(offline, tmp_path, monkeypatch):
    account_file = tmp_path / "qiskit-ibm.json"
    with pytest.raises(QPUError, match="save_account") as error:
        IBMRuntimeBackend("ibm_torino", account_file=account_file)
    assert "none is saved" in str(error.value) and "fake_torino" in str(error.value)
    assert not account_file.exists()  # QiskitRuntimeService would have written an empty one
    monkeypatch.setenv("HOME", str(tmp_path))  # the default place: ~/.qiskit/qiskit-ibm.json
    with pytest.raises(QPUError, match="none is saved"):
        IBMRuntimeBackend("ibm_torino")
    assert not (tmp_path / ".qiskit").exists()
    account_file.write_text("{}")  # a file without accounts: qiskit-ibm-runtime says so
    with pytest.raises(QPUError, match=r"Unable to find account.*save_account"):
        IBMRuntimeBackend("ibm_torino", account_file=account_file)
    with pytest.raises(QPUError, match="Account with the name lab does not exist"):
        IBMRuntimeBackend("ibm_torino", account="lab", account_file=account_file)
    assert offline == []
