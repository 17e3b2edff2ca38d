"""libqwthn_ops in onnxruntime: kernels vs references, fallbacks, validation, threads, loading."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

import qwthn_onnx
from qwthn_onnx.circuit import expectation_values, hardware_efficient_circuit, paper_circuit
from qwthn_onnx.mpo import MPOLinear
from qwthn_onnx.ops import register_schemas
from qwthn_onnx.ops.models import mpo_linear_model, quantum_layer_model
from qwthn_onnx.runtime import LibraryNotFoundError
from tests.circuit.helpers import random_circuit

try:
    LIBRARY = qwthn_onnx.get_library_path()
except LibraryNotFoundError:  # pragma: no cover - depends on the build
    LIBRARY = None
pytestmark = pytest.mark.skipif(LIBRARY is None, reason="libqwthn_ops not built")


@pytest.fixture(autouse=True)
def _schemas():
    register_schemas()


def _session(model: onnx.ModelProto, library: bool = True, threads: int = 1):
    options = qwthn_onnx.session_options(threads) if library else ort.SessionOptions()
    if not library:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _quantum_reference(circuit, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    out = expectation_values(circuit, torch.from_numpy(x).double(), torch.from_numpy(w).double())
    return out.numpy()


def _circuit_data(circuit, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-np.pi, np.pi, (*shape, circuit.n_inputs)).astype(dtype)
    w = rng.uniform(-np.pi, np.pi, circuit.n_weights).astype(dtype)
    return x, w


# --- the library itself ------------------------------------------------------------------------


def test_library_exports_only_the_registration_entry_point():
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not installed")
    out = subprocess.run([nm, "-D", "--defined-only", LIBRARY], capture_output=True, text=True)
    symbols = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
    assert symbols == ["RegisterCustomOps"]


def test_library_is_not_linked_to_libonnxruntime():
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) not installed")
    out = subprocess.run([readelf, "-d", LIBRARY], capture_output=True, text=True, check=True)
    needed = [line for line in out.stdout.splitlines() if "(NEEDED)" in line]
    assert needed and not any("onnxruntime" in line for line in needed)


def test_library_loads_and_runs_in_a_fresh_process():
    code = textwrap.dedent(
        """
        import numpy as np, onnxruntime as ort, qwthn_onnx
        from qwthn_onnx.circuit import paper_circuit
        from qwthn_onnx.ops.models import quantum_layer_model
        model = quantum_layer_model(paper_circuit(3, 1), fallback=False)
        s = ort.InferenceSession(model.SerializeToString(), qwthn_onnx.session_options(1))
        (y,) = s.run(None, {"x": np.zeros((2, 3), np.float32),
                            "weights": np.zeros(12, np.float32)})
        print(y.shape, float(y.sum()))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(2,", "3)", "6.0"]  # all-zero angles: <Z> = 1 on 3 qubits


def test_missing_library_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("QWTHN_OPS_LIBRARY", str(tmp_path / "nope.so"))
    with pytest.raises(LibraryNotFoundError, match=r"QWTHN_OPS_LIBRARY=.*is not a file"):
        qwthn_onnx.get_library_path()
    with pytest.raises(ValueError, match="threads must be a non-negative int"):
        qwthn_onnx.session_options(-1)


# --- QuantumLayer --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_circuits_match_the_simulator(seed, dtype):
    rng = random.Random(seed)
    circuit = random_circuit(rng, rng.randint(1, 6), rng.randint(1, 30))
    x, w = _circuit_data(circuit, (3, 5), dtype, seed)
    session = _session(quantum_layer_model(circuit, dtype=dtype, leading_dims=("b", "s")))
    (y,) = session.run(None, {"x": x, "weights": w})
    assert y.dtype == dtype and y.shape == (3, 5, len(circuit.observables))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, _quantum_reference(circuit, x, w), atol=tol)


@pytest.mark.parametrize("make", [paper_circuit, hardware_efficient_circuit])
def test_kernel_and_fallback_only_sessions_agree(make):
    circuit = make(5, 2)
    x, w = _circuit_data(circuit, (4, 7), np.float32)
    model = quantum_layer_model(circuit, leading_dims=("batch", "seq"), weights=w)
    reference = _quantum_reference(circuit, x, w)
    (with_library,) = _session(model).run(None, {"x": x})
    (fallback_only,) = _session(model, library=False).run(None, {"x": x})
    np.testing.assert_allclose(with_library, reference, atol=1e-5)
    np.testing.assert_allclose(fallback_only, reference, atol=1e-5)


def test_registered_library_runs_the_kernel_not_the_fallback():
    """The kernel refuses NaN angles; the inlined fallback would quietly return NaN."""
    circuit = paper_circuit(3, 1)
    x, w = _circuit_data(circuit, (2,), np.float32)
    x[1, 2] = np.nan
    model = quantum_layer_model(circuit, weights=w)
    (y,) = _session(model, library=False).run(None, {"x": x})
    assert np.isnan(y[1]).any()
    with pytest.raises(Exception, match=r"non-finite value \(nan at sample 1, column 2\)"):
        _session(model).run(None, {"x": x})


def test_shape_inference_keeps_symbolic_leading_dims():
    circuit = paper_circuit(4, 1)
    model = quantum_layer_model(circuit, leading_dims=("batch", "seq", 3), fallback=False)
    model.graph.output[0].type.tensor_type.ClearField("shape")  # leave y's shape to inference
    session = _session(model)
    assert session.get_outputs()[0].shape == ["batch", "seq", 3, 4]
    assert session.get_outputs()[0].type == "tensor(float)"


def test_intra_op_threads_give_identical_results():
    circuit = paper_circuit(6, 2)
    x, w = _circuit_data(circuit, (700,), np.float32)
    model = quantum_layer_model(circuit, weights=w, fallback=False)
    (one,) = _session(model, threads=1).run(None, {"x": x})
    (three,) = _session(model, threads=3).run(None, {"x": x})
    assert np.array_equal(one, three)


def test_concurrent_runs_on_one_session_are_correct():
    circuit = paper_circuit(5, 2)
    _, w = _circuit_data(circuit, (1,), np.float32)
    session = _session(quantum_layer_model(circuit, weights=w, fallback=False), threads=2)
    inputs = [_circuit_data(circuit, (1 + 13 * i,), np.float32, seed=i)[0] for i in range(24)]

    def run(x):
        return session.run(None, {"x": x})[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(run, inputs))
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_allclose(y, _quantum_reference(circuit, x, w), atol=1e-5)


def test_weights_that_change_between_runs_are_never_served_stale():
    """The kernel keeps the circuit prepared for the last weights; new weights (from several
    threads at once, in both dtypes) must each give their own answer."""
    circuit = paper_circuit(4, 2)
    x, _ = _circuit_data(circuit, (9,), np.float64)
    sessions = {
        dtype: _session(quantum_layer_model(circuit, dtype=dtype, fallback=False), threads=1)
        for dtype in (np.float32, np.float64)
    }
    cases = [
        (dtype, _circuit_data(circuit, (1,), dtype, seed=i)[1])
        for i in range(12)
        for dtype in (np.float32, np.float64)
    ]
    cases += cases[:4]  # back to weights seen before

    def run(case):
        dtype, w = case
        return sessions[dtype].run(None, {"x": x.astype(dtype), "weights": w})[0]

    with ThreadPoolExecutor(max_workers=6) as pool:
        outputs = list(pool.map(run, cases))
    for (dtype, w), y in zip(cases, outputs, strict=True):
        reference = _quantum_reference(circuit, x.astype(dtype), w)
        np.testing.assert_allclose(y, reference, atol=1e-5 if dtype == np.float32 else 1e-12)
    with pytest.raises(Exception, match=r"weights contain a non-finite value \(nan at index 3\)"):
        bad = cases[0][1].copy()
        bad[3] = np.nan
        sessions[np.float32].run(None, {"x": x.astype(np.float32), "weights": bad})


def _set_attribute(model: onnx.ModelProto, name: str, value) -> onnx.ModelProto:
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))
    return model


def _edit_ints(name: str, index: int, value: int):
    def edit(model):
        attribute = next(a for a in model.graph.node[0].attribute if a.name == name)
        attribute.ints[index] = value
        return model

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_edit_ints("gates", 1, 7), r"wire0 7 is out of range for a 3-qubit circuit"),
        (_edit_ints("gates", 0, 99), r"opcode 99"),
        (_edit_ints("params", 1, 1000), r"input index 1000 is out of range"),
        (_edit_ints("observables", 0, 9), r"Pauli code 9"),
        (lambda m: _set_attribute(m, "n_qubits", 2**40), r"n_qubits is 1099511627776"),
        (lambda m: _set_attribute(m, "n_qubits", -3), r"n_qubits is -3"),
        (lambda m: _set_attribute(m, "n_inputs", -1), r"n_inputs must be >= 0"),
        (lambda m: _set_attribute(m, "encoding_version", 2), r"reads version 1"),
        (lambda m: _set_attribute(m, "observables", None), r"'observables' is missing"),
        (lambda m: _set_attribute(m, "gates", [0, 1]), r"'gates' has 2 values"),
        (lambda m: _set_attribute(m, "observables", [3, 3]), r"not a multiple of n_qubits=3"),
    ],
)
def test_malformed_attributes_fail_session_creation_with_a_message(edit, message):
    model = edit(quantum_layer_model(paper_circuit(3, 1), fallback=False))
    with pytest.raises(Exception, match=message) as error:
        _session(model)
    assert "QuantumLayer node 'quantum_layer'" in str(error.value)


def test_too_many_qubits_names_the_limit_and_the_variable(monkeypatch):
    model = quantum_layer_model(paper_circuit(3, 1), fallback=False)
    _set_attribute(model, "n_qubits", 24)
    with pytest.raises(Exception, match=r"must be in 1\.\.20 .*QWTHN_MAX_QUBITS"):
        _session(model)
    model = quantum_layer_model(paper_circuit(3, 1), fallback=False)
    monkeypatch.setenv("QWTHN_MAX_QUBITS", "many")
    with pytest.raises(Exception, match=r"QWTHN_MAX_QUBITS='many' is not a positive integer"):
        _session(model)
    monkeypatch.setenv("QWTHN_MAX_QUBITS", "24")
    _set_attribute(model, "n_qubits", 24)
    with pytest.raises(Exception, match=r"'observables' has 9 values, not a multiple of n_q"):
        _session(model)  # the limit is raised: the next check speaks


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        (lambda x, w: (x[:, :2], w), r"'x' must have shape \[\.\.\., n_inputs=3\], got \[4, 2\]"),
        (lambda x, w: (x[:0], w), r"'x' is empty"),
        (lambda x, w: (x, w[:5]), r"'weights' must have shape \[n_weights=12\], got \[5\]"),
        (lambda x, w: (x, np.full_like(w, np.inf)), r"weights contain a non-finite value"),
    ],
)
def test_bad_inputs_fail_the_run_and_the_session_survives(feeds, message):
    circuit = paper_circuit(3, 1)
    x, w = _circuit_data(circuit, (4,), np.float32)
    session = _session(_unshaped(quantum_layer_model(circuit, fallback=False)))
    bad_x, bad_w = feeds(x, w)
    with pytest.raises(Exception, match=message):
        session.run(None, {"x": bad_x, "weights": bad_w})
    (y,) = session.run(None, {"x": x, "weights": w})
    np.testing.assert_allclose(y, _quantum_reference(circuit, x, w), atol=1e-5)


def _unshaped(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop declared input shapes, so onnxruntime passes any shape to the kernel."""
    for value in model.graph.input:
        value.type.tensor_type.ClearField("shape")
    return model


# --- MPOLinear -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("d_in", "d_out", "bond", "k"), [(64, 8, 4, 3), (8, 64, 4, 3), (7, 5, 3, 1)]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mpo_kernel_and_fallback_match_torch(d_in, d_out, bond, k, dtype):
    torch.manual_seed(0)
    mpo = MPOLinear(d_in, d_out, bond_dim=bond, num_cores=k, dtype=torch.float64)
    cores = [c.detach().numpy().astype(dtype) for c in mpo.cores]
    model = mpo_linear_model(cores, leading_dims=("batch", "seq"))
    x = np.random.default_rng(1).normal(size=(3, 11, d_in))
    reference = mpo(torch.from_numpy(x)).detach().numpy()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for library in (True, False):
        session = _session(model, library=library)
        assert session.get_outputs()[0].shape == ["batch", "seq", d_out]
        (y,) = session.run(None, {"x": x.astype(dtype)})
        np.testing.assert_allclose(y, reference, atol=tol, rtol=tol)


def test_mpo_bad_modes_and_cores_give_errors():
    torch.manual_seed(0)
    mpo = MPOLinear(64, 8, bond_dim=4, num_cores=3)
    cores = [c.detach().numpy() for c in mpo.cores]
    bad_modes = mpo_linear_model(cores, fallback=False)
    _set_attribute(bad_modes, "in_modes", [4, 0, 16])
    with pytest.raises(Exception, match=r"MPOLinear node 'mpo_linear'.*modes must be positive"):
        _session(bad_modes)
    huge = mpo_linear_model(cores, fallback=False)
    _set_attribute(huge, "in_modes", [2**40, 2**40, 1])
    with pytest.raises(Exception, match=r"prod\(in_modes\) exceeds"):
        _session(huge)
    swapped = mpo_linear_model([cores[0], cores[2], cores[1]], fallback=False)
    _set_attribute(swapped, "in_modes", [4, 4, 4])
    _set_attribute(swapped, "out_modes", [2, 2, 2])
    session = _session(_unshaped(swapped))
    with pytest.raises(Exception, match=r"core 2 has bond_in 4 but core 1 has bond_out 1"):
        session.run(None, {"x": np.zeros((2, 64), np.float32)})
    session = _session(_unshaped(mpo_linear_model(cores, fallback=False)))
    with pytest.raises(Exception, match=r"must have shape \[\.\.\., prod\(in_modes\)=64\]"):
        session.run(None, {"x": np.zeros((2, 63), np.float32)})
    (y,) = session.run(None, {"x": np.ones((2, 64), np.float32)})
    np.testing.assert_allclose(y, mpo(torch.ones(2, 64)).detach().numpy(), atol=1e-5)


def test_readme_onnxruntime_example_runs():
    """The README's onnxruntime snippet is executed as written, so it cannot rot."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### Running `ai.qwthn` models in onnxruntime") :]
    start = section.index("```python\n") + len("```python\n")
    namespace: dict = {}
    exec(section[start : section.index("```", start)], namespace)
    (fallback,) = namespace["plain"].run(None, {"x": namespace["x"], "weights": namespace["w"]})
    assert namespace["y"].shape == (4, 16, 10)
    np.testing.assert_allclose(namespace["y"], fallback, atol=1e-5)
