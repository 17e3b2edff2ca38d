"""Qiskit backends: Aer (noiseless, or with a device's noise) and IBM Runtime (fake or real).

Both compile each layer once (:func:`~qwthn_onnx.qpu.compile.compile_layer`) and run a job as
ONE ``estimator.run(pubs)``, one PUB per :class:`~qwthn_onnx.qpu.backend.LayerCall`:
``(circuit, [observables], values[N, 1, P])``, whose ``evs`` are ``[N, n_observables]``.
Only the estimator differs (qiskit 2.6, qiskit-aer 0.18, qiskit-ibm-runtime 0.51):

- exact (``shots=None``): ``qiskit_aer.primitives.EstimatorV2`` at precision 0 (Aer's
  ``save_expectation_value``: no sampling). Noiseless: statevector. With a device's noise: the
  density matrix, so the expectation is the exact noisy one; the device's readout error is
  applied as a channel before it, as a measurement would (Z-type observables only), so the mean
  of many shot estimates converges to it. The density matrix needs ``16 * 4**k`` bytes for k
  active device qubits (routing may use more than the circuit's): up to
  :data:`MAX_DENSITY_MATRIX_QUBITS`.
- shots: ``qiskit.primitives.BackendEstimatorV2`` over an ``AerSimulator``: measurements and
  counts, so the estimate has real shot noise and readout error. Aer's own EstimatorV2 cannot
  sample: given a precision it adds ``N(0, precision)`` to the exact value, whatever the
  expectation, which is not what shots give (``(1 - <Z>^2) / shots``).
- IBM: ``qiskit_ibm_runtime.EstimatorV2(mode=backend)``. For a fake device that is IBM's local
  testing mode (``BackendEstimatorV2`` over the fake backend, i.e. Aer with the device's whole
  noise model); for a real one, a Qiskit Runtime job on the device (needs a saved account).
"""

from __future__ import annotations

import math
import os
import warnings
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qwthn_onnx.circuit.ir import Circuit

from .backend import LayerCall, LayerReport, QPUError, QuantumBackend, check_shots
from .compile import CompiledLayer, check_optimization_level, compile_layer
from .devices import CUSTOM_PREFIX, available_devices, is_fake_device, resolve_device

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.primitives import BaseEstimatorV2, PrimitiveResult
    from qiskit.providers import BackendV2
    from qiskit_aer.noise import NoiseModel

__all__ = [
    "MAX_DENSITY_MATRIX_QUBITS",
    "TRANSPILE_SEED",
    "AerBackend",
    "IBMRuntimeBackend",
    "QiskitEstimatorBackend",
    "precision_for_shots",
]

MAX_DENSITY_MATRIX_QUBITS = 10  # 16 MiB per density matrix; 12 would be 256 MiB and ~16x slower
# Layout and routing are stochastic; a fixed seed makes every backend compile a layer alike
TRANSPILE_SEED = 0
IBM_ACCOUNT_FILE = Path("~/.qiskit/qiskit-ibm.json")  # where save_account writes by default
_SAVE_ACCOUNT = (
    'save an IBM Quantum account once with: python -c "from qiskit_ibm_runtime import '
    "QiskitRuntimeService as S; S.save_account(channel='ibm_quantum_platform', "
    "token='<API key>', instance='<instance CRN>')\" (or set QISKIT_IBM_TOKEN)"
)


def precision_for_shots(shots: int) -> float:
    """The precision a qiskit estimator turns back into exactly ``shots``.

    ``BackendEstimatorV2`` runs ``ceil(1 / precision**2)`` shots, and ``1 / sqrt(s)`` gives
    ``s + 1`` for about 30 % of s (rounding); the next float up gives ``s``.
    """
    precision = 1.0 / math.sqrt(shots)
    while math.ceil(1.0 / precision**2) > shots:
        precision = float(np.nextafter(precision, np.inf))
    return precision


class QiskitEstimatorBackend(QuantumBackend):
    """Compile per layer, run each job as one ``estimator.run(pubs)``; subclasses pick the
    estimator. ``last_result`` is the latest job's ``PrimitiveResult`` (its metadata says the
    shots, the simulator's method, ...)."""

    def __init__(
        self,
        name: str,
        device: BackendV2 | None,
        shots: int | None,
        seed: int | None,
        optimization_level: int,
    ) -> None:
        super().__init__()
        self.name = name
        self.device = device
        self.shots = shots
        self.num_qubits = device.num_qubits if device is not None else None
        self.rep_delay_s = _default_rep_delay(device)
        self.seed = seed
        self.optimization_level = optimization_level
        self.compiled: dict[str, CompiledLayer] = {}
        self.last_result: PrimitiveResult | None = None
        self._job_seeds = np.random.default_rng(seed)

    def _prepare(self, layer: str, circuit: Circuit, weights: np.ndarray) -> LayerReport:
        compiled = compile_layer(
            layer,
            circuit,
            weights,
            self.device,
            optimization_level=self.optimization_level,
            seed=TRANSPILE_SEED,
        )
        self._on_compiled(compiled)
        self.compiled[layer] = compiled
        return compiled.report

    def _on_compiled(self, compiled: CompiledLayer) -> None:
        """Called once per new layer, before it is used (e.g. to extend the noise model)."""

    def _pub_circuit(self, compiled: CompiledLayer) -> QuantumCircuit:
        return compiled.circuit

    @abstractmethod
    def estimator(self, seed: int | None) -> BaseEstimatorV2:
        """The estimator for one job, seeded with ``seed`` where it samples."""

    def _next_seed(self) -> int | None:
        """A seed per job, drawn from ``seed``: runs repeat, yet two jobs' samples differ."""
        if self.seed is None:
            return None
        return int(self._job_seeds.integers(1, 2**31 - 1))  # 0 is ignored by IBM's local mode

    def run(self, calls: Sequence[LayerCall]) -> list[np.ndarray]:
        results: list[np.ndarray | None] = []
        pubs: list[tuple[Any, ...]] = []
        rows: list[tuple[int, int]] = []  # (index in results, N) of each PUB
        checked = [self.check_call(call) for call in calls]  # every refusal before any work
        for call, inputs in zip(calls, checked, strict=True):
            compiled = self.compiled[call.layer]
            values = compiled.parameter_values(inputs)
            if len(values) == 0:  # Aer crashes on an empty parameter set
                results.append(np.zeros((0, len(compiled.observables))))
                continue
            pub: tuple[Any, ...] = (self._pub_circuit(compiled), [list(compiled.observables)])
            if values.shape[1]:
                pub += (values[:, None, :],)
            rows.append((len(results), len(values)))
            results.append(None)
            pubs.append(pub)
        if pubs:
            precision = 0.0 if self.shots is None else precision_for_shots(self.shots)
            job = self.estimator(self._next_seed()).run(pubs, precision=precision)
            self.last_result = job.result()
            for (index, n), pub_result in zip(rows, self.last_result, strict=True):
                evs = np.asarray(pub_result.data.evs, dtype=np.float64)
                # a circuit without inputs ran once: every row has its value
                results[index] = np.broadcast_to(evs.reshape(-1, evs.shape[-1]), (n, evs.shape[-1]))
        return [np.array(r, dtype=np.float64) for r in results]


def _default_rep_delay(device: BackendV2 | None) -> float | None:
    """IBM devices wait this long between shots (seconds; from the backend's configuration)."""
    configuration = getattr(device, "configuration", None)
    if configuration is None:
        return None
    delay = getattr(configuration(), "default_rep_delay", None)
    return float(delay) if delay else None


_DEVICE_ERRORS: dict[str, tuple[list[tuple[str, tuple[int, ...], Any]], dict[int, Any]]] = {}


def _device_errors(device: BackendV2) -> tuple[list[tuple[str, tuple[int, ...], Any]], dict]:
    """Aer's error model of ``device``, as the fake backends build it for their own ``run``:
    depolarizing plus thermal relaxation per gate, a readout error per qubit. ~3.5 s on a
    133-qubit device, so computed once per device name (a fake device's snapshot, a spec)."""
    errors = _DEVICE_ERRORS.get(device.name)
    if errors is None:
        from qiskit_aer.noise.device import basic_device_gate_errors, basic_device_readout_errors

        target = device.target
        gates = basic_device_gate_errors(
            target=target, thermal_relaxation=target.qubit_properties is not None
        )
        # A fake device's calibration has P(1|0) and P(0|1) apart, its target only their mean:
        # the fake backend's own run (IBM's local mode) uses the former, and so do we
        properties = device.properties() if callable(getattr(device, "properties", None)) else None
        source = {"target": target} if properties is None else {"properties": properties}
        readout = {q[0]: error for q, error in basic_device_readout_errors(**source)}
        errors = _DEVICE_ERRORS[device.name] = (gates, readout)
    return errors


def _readout_channel(error: Any) -> Any:
    """A readout error as the quantum channel a Z measurement sees: |i> -> |j> with
    probability P(j | i) (Kraus ``sqrt(P(j|i)) |j><i|``)."""
    from qiskit.quantum_info import Kraus

    probabilities = np.asarray(error.probabilities, dtype=np.float64)
    basis = np.eye(2)
    return Kraus(
        [
            math.sqrt(p) * np.outer(basis[j], basis[i])
            for (i, j), p in np.ndenumerate(probabilities)
            if p > 0
        ]
    )


class AerBackend(QiskitEstimatorBackend):
    """qiskit-aer on this machine: the logical circuit (no device), or compiled for a device
    (``fake_torino``, ``custom:...``) with that device's noise unless ``noise=False``.

    ``shots=None`` gives exact expectations (noisy ones, with a device's noise; see the module
    docstring); ``seed`` makes a sequence of jobs repeat.
    """

    def __init__(
        self,
        device: str | None = None,
        *,
        shots: int | None = None,
        seed: int | None = None,
        noise: bool = True,
        optimization_level: int = 1,
    ) -> None:
        shots = check_shots(shots)
        level = check_optimization_level(optimization_level)
        backend = resolve_device(device) if device is not None else None
        super().__init__("aer" if device is None else f"aer:{device}", backend, shots, seed, level)
        self.noise = bool(noise) and backend is not None
        self._noise_qubits: set[int] = set()
        self._noise_model: NoiseModel | None = None
        self._exact_noisy: dict[str, QuantumCircuit] = {}
        self._cached_estimator: BaseEstimatorV2 | None = None

    def _on_compiled(self, compiled: CompiledLayer) -> None:
        if not self.noise:
            return
        if self.shots is None:
            self._exact_noisy[compiled.layer] = self._with_readout_error(compiled)
        new = set(compiled.active_qubits) - self._noise_qubits
        if new:
            # only the qubits the layers use: the whole 133-qubit model costs ~2.5 s per job
            self._noise_qubits |= new
            self._noise_model = self._build_noise_model()
            self._cached_estimator = None

    def _with_readout_error(self, compiled: CompiledLayer) -> QuantumCircuit:
        active = len(compiled.active_qubits)
        if active > MAX_DENSITY_MATRIX_QUBITS:
            raise QPUError(
                f"layer {compiled.layer!r} uses {active} qubits of {self.name}: its exact noisy "
                f"expectations need a {active}-qubit density matrix (16 x 4^{active} bytes), "
                f"more than the {MAX_DENSITY_MATRIX_QUBITS} allowed; give shots, or noise=False."
            )
        for op in compiled.observables:
            if op.paulis.x.any():
                raise QPUError(
                    f"layer {compiled.layer!r} measures an X or Y observable; exact noisy "
                    "expectations model the readout error for Z observables only: give shots."
                )
        _, readout = _device_errors(self.device)
        circuit = compiled.circuit.copy()
        for qubit in compiled.readout_qubits:
            if qubit in readout:
                circuit.append(_readout_channel(readout[qubit]), [qubit])
        return circuit

    def _build_noise_model(self) -> NoiseModel:
        from qiskit_aer.noise import NoiseModel

        gates, readout = _device_errors(self.device)
        model = NoiseModel(basis_gates=list(self.device.operation_names))
        for name, qubits, error in gates:
            if self._noise_qubits.issuperset(qubits):
                model.add_quantum_error(error, name, qubits)
        for qubit, error in readout.items():
            if qubit in self._noise_qubits:
                model.add_readout_error(error, [qubit])
        return model

    def _pub_circuit(self, compiled: CompiledLayer) -> QuantumCircuit:
        return self._exact_noisy.get(compiled.layer, compiled.circuit)

    def estimator(self, seed: int | None) -> BaseEstimatorV2:
        estimator = self._cached_estimator
        if estimator is None:
            if self.shots is None:
                from qiskit_aer.primitives import EstimatorV2

                method = "density_matrix" if self.noise else "statevector"
                options: dict[str, Any] = {"method": method}
                if self.noise:
                    options["noise_model"] = self._noise_model
                estimator = EstimatorV2(options={"backend_options": options})
            else:
                from qiskit.primitives import BackendEstimatorV2
                from qiskit_aer import AerSimulator

                simulator = AerSimulator(noise_model=self._noise_model if self.noise else None)
                estimator = BackendEstimatorV2(backend=simulator)
            self._cached_estimator = estimator
        if self.shots is not None:
            estimator.options.seed_simulator = seed
        return estimator


def _ibm_backend(name: str, account: str | None, account_file: str | Path | None) -> BackendV2:
    """The real IBM backend ``name`` through a saved account; never touches the network (nor
    writes the account file, which QiskitRuntimeService would create empty) without one."""
    from qiskit.exceptions import QiskitError
    from qiskit_ibm_runtime import QiskitRuntimeService

    path = Path(account_file if account_file is not None else IBM_ACCOUNT_FILE).expanduser()
    if not os.environ.get("QISKIT_IBM_TOKEN") and not path.is_file():
        raise QPUError(
            f"{name!r} is not a fake device, so it runs on IBM Quantum, which needs an account; "
            f"none is saved ({path} does not exist). To run there, {_SAVE_ACCOUNT}. To emulate "
            f"a device offline, use one of: {', '.join(available_devices())}."
        )
    try:
        service = QiskitRuntimeService(
            name=account, filename=str(path) if account_file is not None else None
        )
        return service.backend(name)
    except QiskitError as e:  # IBMError (account, network, access) and unknown backends
        raise QPUError(
            f"IBM Quantum backend {name!r}: {e}. To use another account, {_SAVE_ACCOUNT}."
        ) from e


class IBMRuntimeBackend(QiskitEstimatorBackend):
    """IBM Runtime's EstimatorV2: a fake device (``fake_torino``) runs in IBM's local testing
    mode on this machine; any other name is a real IBM Quantum backend (``ibm_torino``) and
    needs a saved account (``account``: its name, ``account_file``: where it is saved).

    Real devices run with ``resilience_level=0`` (raw estimates, as the local mode gives); the
    real path is untested here (no account).
    """

    def __init__(
        self,
        device: str,
        *,
        shots: int = 4096,
        seed: int | None = None,
        optimization_level: int = 1,
        account: str | None = None,
        account_file: str | Path | None = None,
    ) -> None:
        if check_shots(shots) is None:
            raise QPUError(
                "a device estimates from shots: give shots >= 1 (exact expectations: AerBackend)."
            )
        level = check_optimization_level(optimization_level)
        if not isinstance(device, str) or device.startswith(CUSTOM_PREFIX):
            raise QPUError(
                f"IBM Runtime runs fake_* or IBM Quantum devices, got {device!r}; a device given "
                "by hand runs on AerBackend('custom:...')."
            )
        self.local = is_fake_device(device) or device.startswith("fake_")
        backend = (
            resolve_device(device) if self.local else _ibm_backend(device, account, account_file)
        )
        super().__init__(f"ibm:{device}", backend, shots, seed, level)
        from qiskit_ibm_runtime import EstimatorV2

        with warnings.catch_warnings():
            # deprecated since 0.50 for executor_estimator, which fails locally on fake devices
            # (it simulates all 133 qubits of fake_torino): nothing a user can act on
            warnings.filterwarnings(
                "ignore", "The EstimatorV2 class is deprecated", DeprecationWarning
            )
            self._runtime = EstimatorV2(mode=backend)
        if not self.local:
            self._runtime.options.resilience_level = 0

    def estimator(self, seed: int | None) -> BaseEstimatorV2:
        if self.local and seed is not None:
            self._runtime.options.simulator.seed_simulator = seed
        return self._runtime
