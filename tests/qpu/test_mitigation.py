"""Readout-error mitigation on real qiskit-aer simulations: the correction inverts independent
asymmetric readout errors exactly, brings a noisy device closer to exact, removes a pure readout
error down to shot noise, calibrates once per set of qubits, and refuses what it cannot fix."""

import itertools
import json

import numpy as np
import pytest
from qiskit.primitives import BackendEstimatorV2
from qiskit.quantum_info import SparsePauliOp

from qwthn_onnx.circuit import paper_circuit
from qwthn_onnx.cli.run import main as run_main
from qwthn_onnx.qpu.backend import ExactBackend, LayerCall, QPUError
from qwthn_onnx.qpu.mitigation import ReadoutCalibration, ReadoutMitigated, correction_matrix
from qwthn_onnx.qpu.qiskit_backends import AerBackend, _device_errors
from qwthn_onnx.qpu.registry import make_backend

CIRCUIT = paper_circuit(4, 2)
WEIGHTS = np.random.default_rng(0).uniform(-np.pi, np.pi, CIRCUIT.n_weights)
INPUTS = np.random.default_rng(1).uniform(-np.pi, np.pi, (64, 4))
SHOTS = 4000
READOUT_ONLY = "custom:coupling=line:4;error_readout=0.05"  # ideal gates, symmetric 5 % flips


def _run(backend, circuit=CIRCUIT, weights=WEIGHTS, inputs=INPUTS, layer="layer"):
    backend.prepare(layer, circuit, weights)
    return backend.run([LayerCall(layer, circuit, weights, inputs)])[0]


def _mean_error(estimates, reference):
    return float(np.abs(estimates - reference).mean())


@pytest.fixture(scope="module")
def exact():
    return _run(ExactBackend())


def _z(qubits, width=9):
    return SparsePauliOp.from_sparse_list([("Z" * len(qubits), list(qubits), 1.0)], width)


def test_the_correction_inverts_independent_asymmetric_readout_errors_exactly():
    qubits = (2, 5, 7)
    e0 = np.array([0.02, 0.08, 0.01])  # P(1|0): far from P(0|1), so the offsets b matter
    e1 = np.array([0.06, 0.01, 0.12])  # P(0|1)
    calibration = ReadoutCalibration(qubits, 1 - 2 * e0, 2 * e1 - 1, 2, 2, 0.0)
    true = np.random.default_rng(3).dirichlet(np.ones(8)).reshape(2, 2, 2)  # axis i: qubit i
    measured = true
    for axis in range(3):  # each bit misread on its own: A[read, true]
        confusion = np.array([[1 - e0[axis], e1[axis]], [e0[axis], 1 - e1[axis]]])
        measured = np.moveaxis(np.tensordot(confusion, measured, axes=([1], [axis])), 0, axis)
    subsets = [s for r in (1, 2, 3) for s in itertools.combinations(range(3), r)]

    def parity(p, subset):
        signs = np.ones((2, 2, 2))
        for axis in subset:
            signs = signs * np.moveaxis(np.array([1.0, -1.0]).reshape(2, 1, 1), 0, axis)
        return float((p * signs).sum())

    observables = [_z([qubits[i] for i in s]) for s in subsets]
    matrix, skipped = correction_matrix(observables, calibration)
    assert skipped == {}
    raw = np.array([[parity(measured, s) for s in subsets]])
    want = np.array([[parity(true, s) for s in subsets]])
    np.testing.assert_allclose(np.concatenate([raw, [[1.0]]], axis=1) @ matrix, want, atol=1e-12)
    # the product of per-qubit factors alone (right only for symmetric errors) is not
    a = calibration.contrast
    assert abs(raw[0, -1] / np.prod(a) - want[0, -1]) > 1e-3

    # a product whose sub-products are not measured, and a sum, are left raw with the reason
    partial = [_z([2]), _z([2, 7]), _z([5]) + _z([7]), _z([])]
    matrix, skipped = correction_matrix(partial, calibration)
    assert set(skipped) == {1, 2}
    assert "needs the sub-string Z7" in skipped[1]
    assert "not a single Pauli string" in skipped[2]
    np.testing.assert_array_equal(matrix[:, 1:], np.eye(5, 4)[:, 1:])  # identity columns
    assert matrix[0, 0] == pytest.approx(1 / a[0])  # Z2: (raw - b) / a
    assert matrix[4, 0] == pytest.approx(-calibration.offset[0] / a[0])


@pytest.fixture(scope="module")
def torino():
    backend = make_backend("aer:fake_torino", shots=SHOTS, seed=5, mitigation="readout")
    return backend, _run(backend)


def test_fake_torino_mitigated_estimates_are_closer_to_exact(torino, exact):
    backend, mitigated = torino
    raw = backend.last_raw[0]
    assert backend.name == "aer:fake_torino+readout" and backend.skipped == {}
    # the same job, corrected: a measurable improvement, not a shuffle of shot noise
    assert _mean_error(mitigated, exact) < 0.9 * _mean_error(raw, exact)
    # without shot noise (the exact noisy expectations, readout error included) likewise; the
    # rest is gate noise, which readout mitigation does not touch
    noisy = _run(AerBackend("fake_torino"))
    assert _mean_error(backend.correct("layer", noisy), exact) < 0.9 * _mean_error(noisy, exact)
    # the calibration measured the noise model's own P(1|0), P(0|1), within shot noise
    (calibration,) = backend.calibrations
    assert calibration.qubits == backend.inner.compiled["layer"].readout_qubits
    _, readout = _device_errors(backend.inner.device)
    model = np.array([readout[q].probabilities for q in calibration.qubits])
    found = calibration.as_dict()
    for got, want in ((found["p1_given_0"], model[:, 0, 1]), (found["p0_given_1"], model[:, 1, 0])):
        assert np.all(np.abs(np.array(got) - want) <= 5 * np.sqrt(want * (1 - want) / SHOTS) + 1e-3)


def test_calibration_leaves_the_layer_jobs_samples_as_they_were(torino):
    backend, _ = torino
    plain = _run(AerBackend("fake_torino", shots=SHOTS, seed=5))
    np.testing.assert_array_equal(backend.last_raw[0], plain)  # same seed, same samples


def test_a_pure_readout_error_is_removed_down_to_shot_noise(exact):
    backend = ReadoutMitigated(
        AerBackend(READOUT_ONLY, shots=SHOTS, seed=2), calibration_shots=10**5
    )
    mitigated = _run(backend)
    raw = backend.last_raw[0]
    a = float(backend.calibrations[0].contrast.mean())
    assert a == pytest.approx(0.9, abs=0.01)  # 1 - 2 x 5 %
    stderr = np.sqrt((1 - (a * exact) ** 2) / SHOTS)  # of a raw estimate
    assert np.max(np.abs(raw - exact) / stderr) > 8  # the readout error shrinks <Z> by 10 %
    assert np.all(np.abs(mitigated - exact) <= 5 * stderr / a + 0.01)
    assert _mean_error(mitigated, exact) < 0.5 * _mean_error(raw, exact)
    # exact noisy expectations (no shot noise) come back to exact but for the calibration's
    noisy = _run(AerBackend(READOUT_ONLY))
    np.testing.assert_allclose(backend.correct("layer", noisy), exact, rtol=0, atol=0.005)
    assert _mean_error(noisy, exact) > 0.02


def test_one_calibration_serves_every_layer_on_the_same_qubits(monkeypatch):
    runs = []
    real = BackendEstimatorV2.run

    def counted(self, pubs, **kwargs):  # the real run, counted
        runs.append(len(list(pubs)))
        return real(self, pubs, **kwargs)

    monkeypatch.setattr(BackendEstimatorV2, "run", counted)
    backend = AerBackend(READOUT_ONLY, shots=500, seed=1)
    mitigated = ReadoutMitigated(backend)
    assert mitigated.reports is backend.reports
    small = paper_circuit(3, 1)
    layers = [
        ("q", CIRCUIT, WEIGHTS),
        ("v", CIRCUIT, -WEIGHTS),
        ("k", small, np.linspace(-1, 1, small.n_weights)),
    ]
    for name, circuit, weights in layers:
        mitigated.prepare(name, circuit, weights)
        mitigated.prepare(name, circuit, weights)  # cached
    assert runs == [2]  # one calibration job: |0000> and |1111>
    calls = [LayerCall(n, c, w, INPUTS[:5, : c.n_inputs]) for n, c, w in layers]
    results = mitigated.run(calls)
    assert runs == [2, 3] and [r.shape for r in results] == [(5, 4), (5, 4), (5, 3)]
    summary = mitigated.summary()
    assert (summary["circuits"], summary["shots"]) == (2, 1000)
    assert summary["calibrations"][0]["qubits"] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("exact", {}, "exact and braket expectations carry no device readout error"),
        ("braket:local", {"shots": 100}, "braket:local is not one"),
        ("aer", {"shots": 100}, "without a device: there is no readout error"),
        ("aer:fake_torino", {"shots": 100, "noise": False}, r"noise=False.*keep the noise on"),
        ("aer:fake_torino", {}, "calibrates from measured shots, as on hardware: give shots"),
        ("aer:fake_torino", {"shots": 100, "mitigation_": "zne"}, "unknown mitigation 'zne'"),
    ],
)
def test_refusals_say_why(spec, kwargs, message):
    mitigation = kwargs.pop("mitigation_", "readout")
    with pytest.raises(QPUError, match=message):
        make_backend(spec, mitigation=mitigation, **kwargs)


def test_unreadable_qubits_and_unprepared_layers_are_refused():
    with pytest.raises(QPUError, match="shots must be an integer"):
        ReadoutMitigated(AerBackend(READOUT_ONLY, shots=100), calibration_shots=0)
    coin = ReadoutMitigated(AerBackend("custom:coupling=line:2;error_readout=0.5", shots=2000))
    with pytest.raises(QPUError, match=r"barely tells \|0> from \|1>"):
        coin.prepare("layer", paper_circuit(2, 1), np.zeros(paper_circuit(2, 1).n_weights))
    backend = ReadoutMitigated(AerBackend(READOUT_ONLY, shots=100))
    with pytest.raises(QPUError, match="'nope' was not prepared"):
        backend.run([LayerCall("nope", CIRCUIT, WEIGHTS, INPUTS)])


def test_cli_mitigation_lowers_the_reported_error(exported, tmp_path, capsys):
    _, result, _ = exported("llama")
    base = [str(result.directory), "-p", "12&34=", "-n", "3"]
    with pytest.raises(SystemExit):
        run_main([*base, "--mitigation", "readout"])
    assert "--mitigation needs --quantum-backend" in capsys.readouterr().err
    assert run_main([*base, "--quantum-backend", "exact", "--mitigation", "readout"]) == 2
    assert "carry no device readout error" in capsys.readouterr().err

    device = ["--quantum-backend", "aer:fake_torino", "--shots", "2000", "--quantum-seed", "3"]
    reports = {}
    for label, extra in (("raw", []), ("readout", ["--mitigation", "readout"])):
        path = tmp_path / f"{label}.json"
        assert run_main([*base, *device, *extra, "--quantum-report", str(path)]) == 0
        reports[label] = json.loads(path.read_text())
    err = capsys.readouterr().err
    assert "readout mitigation: calibration 2 circuits, 4000 shots" in err
    raw, mitigated = reports["raw"], reports["readout"]
    assert mitigated["backend"] == "aer:fake_torino+readout"
    assert mitigated["mitigation"]["circuits"] == 2 and "mitigation" not in raw
    assert mitigated["totals"]["jobs"] == raw["totals"]["jobs"]
    assert mitigated["totals"]["mean_abs_error"] < raw["totals"]["mean_abs_error"]
