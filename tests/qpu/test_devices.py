"""Devices by name: IBM's fake backends, listed from qiskit-ibm-runtime, and custom specs."""

import inspect

import pytest
from qiskit_ibm_runtime import fake_provider
from qiskit_ibm_runtime.fake_provider.fake_backend import FakeBackendV2

from qwthn_onnx.qpu.backend import QPUError
from qwthn_onnx.qpu.devices import (
    available_devices,
    is_fake_device,
    parse_custom_device,
    resolve_device,
)


def test_every_fake_backend_of_the_module_is_listed():
    classes = [
        c
        for c in vars(fake_provider).values()
        if inspect.isclass(c) and issubclass(c, FakeBackendV2) and c is not FakeBackendV2
    ]
    names = available_devices()
    assert names == sorted(names) and len(names) == len(classes) > 50
    assert {"fake_torino", "fake_sherbrooke", "fake_fez", "fake_athens"} <= set(names)
    assert is_fake_device("fake_torino") and not is_fake_device("ibm_torino")


@pytest.mark.parametrize(
    ("name", "qubits", "two_qubit_gate"),
    [("fake_torino", 133, "cz"), ("fake_sherbrooke", 127, "ecr"), ("fake_fez", 156, "cz")],
)
def test_fake_devices_resolve_to_their_snapshot(name, qubits, two_qubit_gate):
    device = resolve_device(name)
    assert device.name == name and device.num_qubits == qubits
    assert two_qubit_gate in device.operation_names
    assert device.target["measure"][(0,)].duration > 0


def test_an_unknown_name_lists_the_devices_and_the_custom_syntax():
    with pytest.raises(QPUError, match="unknown device 'fake_toronto_2'") as error:
        resolve_device("fake_toronto_2")
    assert "fake_torino" in str(error.value) and "custom:basis=" in str(error.value)
    with pytest.raises(QPUError, match="string"):
        resolve_device(5)


def _undirected(device):
    return {tuple(sorted(e)) for e in device.coupling_map.get_edges()}


@pytest.mark.parametrize(
    ("coupling", "qubits", "edges"),
    [
        ("line:4", 4, {(0, 1), (1, 2), (2, 3)}),
        ("ring:4", 4, {(0, 1), (1, 2), (2, 3), (0, 3)}),
        ("full:3", 3, {(0, 1), (0, 2), (1, 2)}),
        ("0-1, 1-3", 4, {(0, 1), (1, 3)}),
    ],
)
def test_custom_couplings(coupling, qubits, edges):
    device = resolve_device(f"custom:coupling={coupling}")
    assert device.num_qubits == qubits and _undirected(device) == edges
    # every coupling works both ways, as on IBM's devices
    assert len(device.coupling_map.get_edges()) == 2 * len(edges)
    assert {"rz", "sx", "x", "cx", "measure"} <= set(device.operation_names)


def test_custom_errors_and_durations_are_exactly_those_given():
    spec = (
        "custom:basis=rz,sx,x,cz;coupling=ring:3;error_1q=1e-3;error_2q=0.02;"
        "error_readout=0.05;duration_1q=3e-8;duration_2q=2e-7;duration_readout=1e-6"
    )
    device = resolve_device(spec)
    target = device.target
    assert device.name == spec and "cx" not in device.operation_names
    assert (target["sx"][(1,)].error, target["sx"][(1,)].duration) == (1e-3, 3e-8)
    assert (target["cz"][(2, 0)].error, target["cz"][(0, 2)].duration) == (0.02, 2e-7)
    assert (target["measure"][(0,)].error, target["measure"][(0,)].duration) == (0.05, 1e-6)
    assert (target["rz"][(0,)].error, target["rz"][(0,)].duration) == (0.0, 0.0)  # virtual


def test_a_custom_device_without_numbers_is_ideal():
    device = resolve_device("custom:coupling=line:3")
    assert all(
        props is None or (not props.error and not props.duration)  # rz: 0 s, no error
        for name in device.operation_names
        for props in (device.target[name] or {}).values()
    )
    parsed = parse_custom_device("custom:coupling=line:3")
    assert parsed.basis == ("rz", "sx", "x", "cx") and parsed.error_2q is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("custom:basis=rz,sx,x,cx", "needs coupling"),
        ("custom:coupling=line:x", "line:N needs a qubit count"),
        ("custom:coupling=ring:0", "1..1024 qubits"),
        ("custom:coupling=line:5000", "1..1024 qubits"),
        ("custom:coupling=full:200", "directed couplings"),
        ("custom:coupling=0-0", "two distinct qubit indices"),
        ("custom:coupling=0-a", "two distinct qubit indices"),
        ("custom:coupling=line:3;basis=rz,sx,foo", "'foo' is not a qiskit standard gate"),
        ("custom:coupling=line:3;basis=rz,sx,measure", "'measure' is not a qiskit standard"),
        ("custom:coupling=line:3;basis=rz,sx,x", "no two-qubit gate"),
        ("custom:coupling=line:3;error_2q=1.5", "error_2q must be a probability"),
        ("custom:coupling=line:3;duration_1q=-1", "duration_1q must be seconds"),
        ("custom:coupling=line:3;error_1q=nan", "error_1q must be a probability"),
        ("custom:coupling=line:3;colour=red", "not a known key=value"),
        ("custom:coupling=line:3;coupling=ring:3", "coupling is given twice"),
    ],
)
def test_bad_custom_specs_are_refused_with_the_reason(spec, message):
    with pytest.raises(QPUError, match=message):
        resolve_device(spec)
