"""``qwthn-verify``: every face of an export checked against the others, torch ⇄ ONNX ⇄ QASM.

Per adapted layer, on random angles: the PyTorch simulator (float64, the reference), the
``QuantumLayer`` node run by our kernel and by its fallback function in onnxruntime, the
OpenQASM 3 program loaded in qiskit and simulated exactly (``Statevector``), and the same
program read back through the OpenQASM 3 parser and run with shots. The circuits themselves
must agree too: the node's attributes, the model's metadata and the program read back. For the
whole model, the file is imported back to PyTorch and compared with onnxruntime as on export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from qiskit import qasm3
from qiskit.quantum_info import Statevector

from exporters.causal_lm import CacheGeometry, CausalLMWithCache
from exporters.export import TOLERANCES as EXPORT_TOLERANCES
from exporters.onnx_import import import_onnx
from exporters.qasm import qasm3_to_circuit
from exporters.verify import verify_export
from qwthn_onnx.circuit import Circuit, Gate, Param, expectation_values
from qwthn_onnx.circuit.qiskit_bridge import observables_to_qiskit
from qwthn_onnx.circuit.sampling import ShotEstimator, deviation_in_standard_errors
from qwthn_onnx.ops.models import quantum_layer_model
from qwthn_onnx.ops.schemas import circuit_from_node, layer_of_node, quantum_layer_nodes
from qwthn_onnx.runtime import export_dir
from qwthn_onnx.runtime.library import session_options
from qwthn_onnx.runtime.metadata import ExportMetadata

__all__ = [
    "TOLERANCES",
    "Check",
    "CrossCheckReport",
    "bind_weights",
    "crosscheck",
]

# Maximum absolute difference from the float64 PyTorch simulator, per face; shots: in standard
# errors of each estimate.
TOLERANCES = {
    "onnx kernel": 1e-5,
    "onnx fallback": 1e-5,
    "qasm exact": 1e-6,
    # both are within their own tolerance of the float64 reference, so within the sum of each
    # other (the float32 kernel's error grows with the circuit: ~3e-6 at 10 qubits x 10 layers)
    "qasm exact vs onnx kernel": 1e-5 + 1e-6,
    "qasm shots": 5.0,
}


@dataclass
class Check:
    layer: str
    face: str  # e.g. "onnx kernel", "qasm shots", "circuit: node = metadata"
    value: float  # max abs error, max |z| for shots, 0/1 for structural checks
    tolerance: float
    passed: bool


@dataclass
class CrossCheckReport:
    model: str
    samples: int
    shots: int
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "passed": self.passed,
            "samples": self.samples,
            "shots": self.shots,
            "tolerances": TOLERANCES,
            "checks": [asdict(c) for c in self.checks],
        }


def bind_weights(circuit: Circuit, weights: np.ndarray) -> Circuit:
    """The circuit with every weight replaced by its value as a constant (as the QASM file
    writes trained weights)."""
    gates = tuple(
        Gate(
            g.name,
            g.wires,
            tuple(
                Param.const(float(weights[p.value])) if p.kind == "weight" else p for p in g.params
            ),
        )
        for g in circuit.gates
    )
    return Circuit(
        circuit.n_qubits, gates, circuit.observables, n_inputs=circuit.n_inputs, n_weights=0
    )


def _qasm_exact(text: str, circuit: Circuit, angles: np.ndarray) -> np.ndarray:
    """<Z...> of the program as qiskit reads it, simulated exactly, per row of ``angles``."""
    program = qasm3.loads(text)
    program.remove_final_measurements()
    by_name = {p.name: p for p in program.parameters}
    observables = observables_to_qiskit(circuit)
    rows = []
    for row in angles:
        bound = program.assign_parameters({by_name[f"x_{i}"]: float(v) for i, v in enumerate(row)})
        state = Statevector(bound)
        rows.append([state.expectation_value(o).real for o in observables])
    return np.asarray(rows)


def _check_layer(
    report: CrossCheckReport,
    layer: str,
    node: onnx.NodeProto,
    weights: np.ndarray,
    meta_circuit: Circuit,
    qasm_text: str,
    estimator: ShotEstimator,
    rng: np.random.Generator,
) -> None:
    def add(face: str, value: float, tolerance: float) -> None:
        report.checks.append(Check(layer, face, value, tolerance, bool(value <= tolerance)))

    circuit = circuit_from_node(node)
    add("circuit: node = metadata", float(circuit != meta_circuit), 0.0)
    read_back = qasm3_to_circuit(qasm_text, n_inputs=circuit.n_inputs, n_weights=0)
    add("circuit: qasm = node with weights", float(read_back != bind_weights(circuit, weights)), 0)

    angles = rng.uniform(-np.pi, np.pi, (report.samples, circuit.n_inputs))
    reference = expectation_values(
        circuit, torch.from_numpy(angles), torch.from_numpy(weights)
    ).numpy()
    model = quantum_layer_model(circuit, weights=weights.astype(np.float32)).SerializeToString()
    x = {"x": angles.astype(np.float32)}
    outputs = {}
    for face, options in (("onnx kernel", session_options(1)), ("onnx fallback", None)):
        (outputs[face],) = ort.InferenceSession(model, options).run(None, x)
        add(face, float(np.abs(outputs[face] - reference).max()), TOLERANCES[face])
    exact = _qasm_exact(qasm_text, circuit, angles)
    add("qasm exact", float(np.abs(exact - reference).max()), TOLERANCES["qasm exact"])
    face = "qasm exact vs onnx kernel"
    add(face, float(np.abs(exact - outputs["onnx kernel"]).max()), TOLERANCES[face])
    means, _ = estimator.estimate(read_back, angles, np.zeros(0))
    z = deviation_in_standard_errors(means, reference, report.shots)
    add("qasm shots", float(z.max()), TOLERANCES["qasm shots"])


def crosscheck(
    directory: str | Path, samples: int = 8, shots: int = 4000, seed: int = 0
) -> CrossCheckReport:
    """Check an export directory (model.onnx and qasm/) face against face.

    Files that differ from manifest.json are one failed check, not a refusal: a program edited
    on purpose is what this command is for, and the other checks say whether it still agrees.
    """
    path = export_dir.model_path(directory, check=False)
    proto = onnx.load(str(path))
    meta = ExportMetadata.from_model(proto, where=str(path))
    initializers = {t.name: t for t in proto.graph.initializer}
    report = CrossCheckReport(model=str(path), samples=samples, shots=shots)
    try:
        export_dir.check_integrity(path.parent)
        intact = True
    except export_dir.ExportIntegrityError:
        intact = False
    report.checks.append(Check("(whole export)", "files = manifest", float(not intact), 0, intact))
    estimator = ShotEstimator(shots=shots, seed=seed)
    rng = np.random.default_rng(seed)
    for node in quantum_layer_nodes(proto):
        layer = layer_of_node(node)
        qasm_file = path.parent / export_dir.QASM_DIR / f"{layer}.qasm"
        if not qasm_file.is_file():
            raise FileNotFoundError(
                f"{qasm_file} is missing: export with OpenQASM programs (qwthn-export --qasm)"
            )
        _check_layer(
            report,
            layer,
            node,
            numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64),
            Circuit.from_dict(meta.circuits[layer]),
            qasm_file.read_text(),
            estimator,
            rng,
        )
    loaded = import_onnx(path)
    base = loaded.model.base_model.eval()
    geometry = CacheGeometry.probe(base)
    vocab = base.get_output_embeddings().weight.shape[0]
    atol, rtol = EXPORT_TOLERANCES["float32"]  # qwthn-export's float32 bounds
    model_report = verify_export(
        path, CausalLMWithCache(base, geometry), loaded.tokenizer, vocab, atol=atol, rtol=rtol
    )
    for runtime in model_report.runtimes:
        worst = model_report.worst(runtime)
        report.checks.append(
            Check(
                "(whole model)",
                f"torch (imported) vs onnx {runtime}",
                worst.max_abs_error,
                worst.bound,
                all(c.passed for c in model_report.checks if c.runtime == runtime)
                and all(g.passed for g in model_report.generation if g.runtime == runtime),
            )
        )
    return report
