"""The C++ kernel (qwthn_onnx._native via qwthn_onnx.native) against the PyTorch simulator."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from qwthn_onnx import native
from qwthn_onnx.circuit import CircuitError, expectation_values, paper_circuit
from qwthn_onnx.circuit.encoding import GATE_CODES, EncodedCircuit, decode, encode
from tests.circuit.helpers import random_circuit
from tests.kernels.conftest import ISAS

pytestmark = pytest.mark.skipif(not native.available(), reason="qwthn_onnx._native not built")


def _data(circuit, batch, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-np.pi, np.pi, (batch, circuit.n_inputs)).astype(dtype)
    w = rng.uniform(-np.pi, np.pi, circuit.n_weights).astype(dtype)
    g = rng.normal(size=(batch, circuit.n_observables)).astype(dtype)
    return x, w, g


def _reference(circuit, x, w, g):
    """Forward and autograd gradients of sum(g * y) from the PyTorch simulator, in float64."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    y = expectation_values(circuit, xt, wt)
    (y * torch.tensor(g, dtype=torch.float64)).sum().backward()
    grads = [np.zeros(t.shape) if t.grad is None else t.grad.numpy() for t in (xt, wt)]
    return y.detach().numpy(), *grads


def _check(circuit, dtype, batch=13, seed=0, threads=1):
    x, w, g = _data(circuit, batch, dtype, seed)
    enc = encode(circuit)
    y = native.quantum_forward(enc, x, w, threads)
    gx, gw = native.quantum_backward(enc, x, w, g, threads)
    assert y.dtype == gx.dtype == gw.dtype == dtype
    assert y.shape == (batch, circuit.n_observables)
    assert gx.shape == x.shape and gw.shape == w.shape
    ry, rgx, rgw = _reference(circuit, x, w, g)
    if dtype == np.float64:
        np.testing.assert_allclose(y, ry, rtol=0, atol=1e-10)
        for got, ref in ((gx, rgx), (gw, rgw)):
            scale = max(1.0, float(np.abs(ref).max(initial=0)))
            np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * scale)
    else:
        np.testing.assert_allclose(y, ry, rtol=0, atol=1e-5)
        for got, ref in ((gx, rgx), (gw, rgw)):
            scale = max(1.0, float(np.abs(ref).max(initial=0)))
            assert np.abs(got - ref).max(initial=0) <= 1e-4 * scale
    return y


# --------------------------------------------------------------------------------------------
# Agreement with the reference simulator
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("gate", GATE_CODES)
def test_each_gate_matches_reference(isa, gate, dtype):
    rng = random.Random(GATE_CODES.index(gate))
    # the gate under test among gates that make the state generic, on 3 qubits
    circuit = random_circuit(rng, 3, 24, names=[gate, gate, gate, "h", "rx", "ry"])
    assert gate in {g.name for g in circuit.gates}
    _check(circuit, dtype, seed=GATE_CODES.index(gate))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(8))
def test_random_circuits_match_reference(isa, seed, dtype):
    rng = random.Random(1000 + seed)
    n_qubits = [1, 2, 3, 4, 5, 6, 7, 5][seed]
    circuit = random_circuit(rng, n_qubits, 60, n_observables=6)
    _check(circuit, dtype, batch=rng.choice([1, 7, 19]), seed=seed)


def test_random_circuits_cover_every_gate_and_pauli():
    names, paulis = set(), set()
    for seed in range(8):
        rng = random.Random(1000 + seed)
        circuit = random_circuit(rng, [1, 2, 3, 4, 5, 6, 7, 5][seed], 60, n_observables=6)
        names |= {g.name for g in circuit.gates}
        paulis |= set("".join(circuit.observables))
    assert names == set(GATE_CODES)
    assert paulis == set("IXYZ")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_paper_circuit_batch_64(isa, dtype):
    y = _check(paper_circuit(10, 10), dtype, batch=64, seed=3)
    assert np.abs(y).max() > 1e-3  # not a trivially zero output


def test_weight_only_and_constant_circuits(isa):
    """No inputs at all (n_inputs=0), and a circuit whose gates all use constants."""
    rng = random.Random(7)
    for kinds in (("weight", "const"), ("const",)):
        circuit = random_circuit(rng, 4, 30, n_inputs=0, kinds=kinds)
        _check(circuit, np.float64, batch=5)


def test_leading_dims_are_kept():
    circuit = paper_circuit(3, 2)
    x, w, _ = _data(circuit, 6, np.float64, 0)
    enc = encode(circuit)
    y = native.quantum_forward(enc, x.reshape(2, 3, 3), w)
    assert y.shape == (2, 3, 3)
    np.testing.assert_array_equal(y.reshape(6, 3), native.quantum_forward(enc, x, w))
    gx, gw = native.quantum_backward(enc, x.reshape(2, 3, 3), w, np.ones((2, 3, 3)))
    assert gx.shape == (2, 3, 3) and gw.shape == w.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_counts_give_identical_results(isa, dtype):
    circuit = paper_circuit(6, 3)
    x, w, g = _data(circuit, 203, dtype, 5)  # several work chunks, ragged last tile
    enc = encode(circuit)
    results = []
    for threads in (1, 2, 0):
        y = native.quantum_forward(enc, x, w, threads)
        gx, gw = native.quantum_backward(enc, x, w, g, threads)
        results.append((y, gx, gw))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_isa_builds_agree():
    if not native.available():
        pytest.skip("no kernel")
    circuit = random_circuit(random.Random(3), 5, 80, n_observables=5)
    x, w, g = _data(circuit, 17, np.float64, 1)
    enc = encode(circuit)
    outs = []
    try:
        for name in ISAS:
            try:
                native.set_isa(name)
            except CircuitError:
                continue
            assert native.isa() == name
            outs.append((native.quantum_forward(enc, x, w), *native.quantum_backward(enc, x, w, g)))
    finally:
        native.set_isa("auto")
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Malformed encodings and arguments: a CircuitError naming the problem, never a crash
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small():
    circuit = paper_circuit(3, 1)
    x, w, g = _data(circuit, 4, np.float64, 0)
    return encode(circuit), x, w, g


def _with(enc: EncodedCircuit, **arrays) -> EncodedCircuit:
    return replace(enc, **arrays)


def _set(array: np.ndarray, index, value) -> np.ndarray:
    out = array.copy()
    out[index] = value
    return out


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: _with(e, gates=_set(e.gates, (0, 0), 23)), "opcode 23"),
        (lambda e: _with(e, gates=_set(e.gates, (0, 0), -1)), "opcode -1"),
        (lambda e: _with(e, gates=_set(e.gates, (1, 1), 3)), "wire0 3 is out of range"),
        (lambda e: _with(e, gates=_set(e.gates, (-1, 2), -2)), "wire1 -2 is out of range"),
        (lambda e: _with(e, gates=_set(e.gates, (0, 2), 1)), "has wire1 1"),
        (lambda e: _with(e, gates=_set(e.gates, (-1, 2), e.gates[-1, 1])), "repeats wire"),
        (lambda e: _with(e, params=_set(e.params, (0, 1), 3)), "input index 3 is out of range"),
        (lambda e: _with(e, params=_set(e.params, (5, 1), 99)), "weight index 99"),
        (lambda e: _with(e, params=_set(e.params, (0, 0), 5)), "parameter kind 5"),
        (lambda e: _with(e, params=_set(e.params, (0, 0), 2)), "uses constant"),
        (lambda e: _with(e, params=e.params[:-1]), "needs parameter"),
        (lambda e: _with(e, params=np.concatenate([e.params, e.params[:1]])), "the gates use"),
        (lambda e: _with(e, observables=_set(e.observables, (0, 0), 4)), "Pauli code 4"),
        (lambda e: _with(e, observables=e.observables[:, :2]), "rows have 2 entries"),
        (lambda e: _with(e, observables=e.observables[:0]), "no observables"),
        (lambda e: _with(e, gates=e.gates[:, :2]), r"gates must have shape \[n_gates, 3\]"),
        (lambda e: _with(e, gates=e.gates.reshape(-1)), "gates must have shape"),
        (lambda e: _with(e, n_qubits=21, observables=np.zeros((1, 21), np.int64)), "1..20"),
        (lambda e: _with(e, n_qubits=0), "n_qubits is 0"),
        (lambda e: _with(e, n_weights=-1), "n_weights must be >= 0"),
        (lambda e: _with(e, params=_set(e.params, (0, 1), -1)), "input index -1"),
    ],
)
def test_malformed_encoding_raises(small, mutate, message):
    enc, x, w, g = small
    bad = mutate(enc)
    with pytest.raises(CircuitError, match=message):
        native.quantum_forward(bad, x, w)
    with pytest.raises(CircuitError, match=message):
        native.quantum_backward(bad, x, w, g)
    # the process is alive and the kernel still works
    assert native.quantum_forward(enc, x, w).shape == (4, 3)


def test_constants_are_checked(small):
    enc, x, w, _ = small
    params = _set(enc.params, 0, (2, 0))
    with pytest.raises(CircuitError, match="not finite"):
        native.quantum_forward(_with(enc, params=params, constants=np.array([np.nan])), x, w)
    ok = native.quantum_forward(_with(enc, params=params, constants=np.array([0.5])), x, w)
    assert ok.shape == (4, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda x, w, g: (x[:, :2], w, g), r"n_inputs=3"),
        (lambda x, w, g: (x, w[:-1], g), r"n_weights=12"),
        (lambda x, w, g: (x, w.reshape(1, -1), g), "weights must have shape"),
        (lambda x, w, g: (x[:0], w, g[:0]), "batch is empty"),
        (lambda x, w, g: (_set(x, (2, 1), np.nan), w, g), "non-finite value.*sample 2"),
        (lambda x, w, g: (x, _set(w, 4, np.inf), g), "weights contain a non-finite value"),
        (lambda x, w, g: (x.astype(np.float32), w, g), "inputs are float32"),
        (lambda x, w, g: (x.astype(np.int64), w, g), "float32 or float64"),
        (lambda x, w, g: (x.tolist(), w, g), "numpy array"),
    ],
)
def test_bad_arguments_raise(small, args, message):
    enc, x, w, g = small
    xa, wa, ga = args(x, w, g)
    with pytest.raises(CircuitError, match=message):
        native.quantum_forward(enc, xa, wa)
    with pytest.raises(CircuitError, match=message):
        native.quantum_backward(enc, xa, wa, ga)


def test_bad_grad_out_raises(small):
    enc, x, w, g = small
    with pytest.raises(CircuitError, match="grad_out must have shape"):
        native.quantum_backward(enc, x, w, g[:, :2])
    with pytest.raises(CircuitError, match="grad_out has dtype float32"):
        native.quantum_backward(enc, x, w, g.astype(np.float32))


def test_raw_module_checks_arrays(small):
    """The pybind layer itself rejects wrong dtypes, ranks and layouts (no silent casts)."""
    from qwthn_onnx import _native

    enc, x, w, _ = small
    good = dict(gates=enc.gates, params=enc.params, constants=enc.constants)
    args = (enc.n_qubits, enc.n_inputs, enc.n_weights)
    c = _native.Circuit(*args, **good, observables=enc.observables)
    assert (c.n_qubits, c.n_gates, c.n_observables) == (3, 15, 3)
    with pytest.raises(ValueError, match="gates must have dtype int64"):
        _native.Circuit(
            *args, **{**good, "gates": enc.gates.astype(np.int32)}, observables=enc.observables
        )
    with pytest.raises(ValueError, match="C-contiguous"):
        c.forward(np.asfortranarray(np.tile(x, (1, 2)))[:, ::2], w)
    with pytest.raises(ValueError, match="inputs must have shape"):
        c.forward(x[0], w)
    with pytest.raises(ValueError, match="weights must have dtype"):
        c.forward(x, w.astype(np.float32))


def test_random_corruptions_agree_with_python_decoder(small):
    """Mutate single entries at random: the kernel accepts exactly what decode() accepts."""
    enc, x, w, _ = small
    rng = np.random.default_rng(0)
    rejected = 0
    for _ in range(300):
        field = rng.choice(["gates", "params", "observables"])
        array = getattr(enc, field).copy()
        index = tuple(rng.integers(0, s) for s in array.shape)
        array[index] = rng.integers(-3, 26)
        bad = _with(enc, **{field: array})
        try:
            decode(bad.as_dict())
            python_ok = True
        except CircuitError:
            python_ok = False
        try:
            y = native.quantum_forward(bad, x, w)
            assert np.all(np.abs(y) <= 1 + 1e-12)
            native_ok = True
        except CircuitError:
            native_ok = False
        assert native_ok == python_ok, (field, index, array[index])
        rejected += not native_ok
    assert 50 < rejected < 300


def test_too_many_qubits_allowed_by_limit_but_not_kernel(small):
    _, x, w, _ = small
    enc = encode(paper_circuit(3, 1))
    big = _with(enc, n_qubits=31, observables=np.zeros((1, 31), np.int64))
    with pytest.raises(CircuitError, match="at most 30"):
        native.quantum_forward(big, x, w, max_qubits=40)


def test_module_loads_in_fresh_subprocess():
    code = (
        "import numpy as np\n"
        "from qwthn_onnx import native, _native\n"
        "from qwthn_onnx.circuit import paper_circuit\n"
        "from qwthn_onnx.circuit.encoding import encode\n"
        "assert native.available()\n"
        "y = native.quantum_forward(encode(paper_circuit(2, 1)), np.zeros((1, 2)), np.zeros(8))\n"
        "print(_native.__name__, native.isa(), float(y.sum()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    name, isa, total = out.stdout.split()
    assert name == "qwthn_onnx._native" and isa in ISAS
    assert float(total) == pytest.approx(2.0)  # |00>: <Z0> + <Z1> = 2


def _with_native_module(path: str, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "QWTHN_NATIVE_MODULE": path}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_native_module_override_loads_that_build_or_says_what_is_wrong(tmp_path):
    """$QWTHN_NATIVE_MODULE (sanitizer builds use it) is the extension every importer gets."""
    out = _with_native_module(
        str(native.module_path()),
        "import qwthn_onnx._native as m; from qwthn_onnx import native;"
        "print(native.available(), m.__file__ == str(native.module_path()))",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
    missing = str(tmp_path / "nope.so")
    out = _with_native_module(
        missing, "from qwthn_onnx import native; print(native.available()); native.isa()"
    )
    assert out.stdout.split() == ["False"]
    assert f"$QWTHN_NATIVE_MODULE={missing} is not a file" in out.stderr
