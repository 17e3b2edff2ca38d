"""The quantum part of one forward pass as a QPU job: bound OpenQASM programs, run with shots.

``capture_quantum_calls`` runs the exported ``model.onnx`` in onnxruntime on a prompt with every
``QuantumLayer``'s input and output added as graph outputs, so the angles a QPU would receive
are exactly those the deployed graph computes. ``write_job`` turns each (layer, token) into a
bound OpenQASM 3 program (input values as exact literals) plus ``job.json``, the index of which
token and layer each program belongs to, with the kernel's exact expectations beside it.
``run_job`` executes the programs with shots on a qiskit backend standing in for the QPU and
compares the estimates with those expectations in standard errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from exporters.qasm import (
    DEFAULT_DIALECT,
    check_dialect,
    circuit_to_qasm2,
    circuit_to_qasm3,
    qasm3_to_circuit,
)
from qwthn_onnx._io import atomic_directory, atomic_write_text
from qwthn_onnx.circuit import Circuit
from qwthn_onnx.circuit.sampling import ShotEstimator, deviation_in_standard_errors
from qwthn_onnx.ops.schemas import (
    circuit_from_node,
    layer_of_node,
    quantum_layer_nodes,
    quantum_layer_weights,
)
from qwthn_onnx.runtime import export_dir
from qwthn_onnx.runtime.library import LibraryNotFoundError, session_options
from qwthn_onnx.runtime.metadata import ExportMetadata
from qwthn_onnx.runtime.session import QWTHNSession
from qwthn_onnx.runtime.signature import (
    ATTENTION_MASK,
    INPUT_IDS,
    POSITION_IDS,
    empty_cache,
    position_ids,
)

__all__ = [
    "JOB_INDEX",
    "QuantumCall",
    "capture_quantum_calls",
    "run_job",
    "write_job",
]

JOB_INDEX = "job.json"
RESULTS = "results.json"


@dataclass
class QuantumCall:
    """One QuantumLayer node's work in a forward pass: inputs [batch, seq, n_in] -> outputs."""

    layer: str
    circuit: Circuit
    weights: np.ndarray
    inputs: np.ndarray
    outputs: np.ndarray


def _prefill_feed(meta: ExportMetadata, ids: list[int]) -> dict[str, np.ndarray]:
    tokens = np.asarray([ids], dtype=np.int64)
    mask = np.ones_like(tokens)
    cache_dtype = np.float16 if meta.base_model["dtype"] == "float16" else np.float32
    return {
        INPUT_IDS: tokens,
        ATTENTION_MASK: mask,
        POSITION_IDS: position_ids(mask, tokens.shape[1]),
        **empty_cache(meta.cache, 1, cache_dtype),
    }


def capture_quantum_calls(model_path: str | Path, ids: list[int]) -> list[QuantumCall]:
    """Run a prefill of ``ids`` and return every QuantumLayer's inputs and outputs."""
    path = export_dir.model_path(model_path)
    model = onnx.load(str(path))
    nodes = quantum_layer_nodes(model)
    initializers = {t.name: t for t in model.graph.initializer}
    for node in nodes:
        for name in (node.input[0], node.output[0]):
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    try:
        options = session_options()
    except LibraryNotFoundError:  # the fallback functions give the same angles, more slowly
        options = ort.SessionOptions()
    session = ort.InferenceSession(model.SerializeToString(), options)
    names = [o.name for o in session.get_outputs()]
    feed = _prefill_feed(ExportMetadata.from_model(model, where=str(path)), ids)
    values = dict(zip(names, session.run(names, feed), strict=True))
    return [
        QuantumCall(
            layer=layer_of_node(node),
            circuit=circuit_from_node(node),
            weights=quantum_layer_weights(node, initializers),
            inputs=values[node.input[0]].astype(np.float64),
            outputs=values[node.output[0]].astype(np.float64),
        )
        for node in nodes
    ]


def write_job(
    export_dir: str | Path,
    prompt: str,
    output_dir: str | Path,
    qasm2: bool = False,
    basis: tuple[str, ...] = ("rz", "sx", "x", "cx"),
    dialect: str = DEFAULT_DIALECT,
) -> dict[str, Any]:
    """Write the bound programs of ``prompt``'s prefill to ``output_dir`` (atomically), in
    OpenQASM ``dialect`` (see exporters.qasm.DIALECTS)."""
    check_dialect(dialect)
    session = QWTHNSession(export_dir)
    ids = session.encode(prompt)
    calls = capture_quantum_calls(session.path, ids)
    tokenizer = session.tokenizer
    index: dict[str, Any] = {
        "format": "qwthn-onnx/qpu-job",
        "format_version": 1,
        "model": str(session.path.resolve()),
        "prompt": prompt,
        "tokens": [{"index": t, "id": i, "text": tokenizer.decode([i])} for t, i in enumerate(ids)],
        "reading": "<Z_i> = P(c[i] = 0) - P(c[i] = 1); expected = the ai.qwthn kernel's value",
        "dialect": dialect,
        "programs": [],
    }
    with atomic_directory(output_dir) as tmp:
        for call in calls:
            folder = tmp / "qasm3" / call.layer
            folder.mkdir(parents=True)
            if qasm2:
                (tmp / "qasm2" / call.layer).mkdir(parents=True)
            for t in range(len(ids)):
                angles = call.inputs[0, t]
                name = f"token_{t:04d}.qasm"
                text = circuit_to_qasm3(
                    call.circuit, call.weights, inputs=angles, layer=call.layer, dialect=dialect
                )
                (folder / name).write_text(text)
                entry = {
                    "file": f"qasm3/{call.layer}/{name}",
                    "layer": call.layer,
                    "token": t,
                    "inputs": {f"x_{i}": float(v) for i, v in enumerate(angles)},
                    "observables": list(call.circuit.observables),
                    "expected": [float(v) for v in call.outputs[0, t]],
                }
                if qasm2:
                    lowered = circuit_to_qasm2(call.circuit, angles, call.weights, basis=basis)
                    (tmp / "qasm2" / call.layer / name).write_text(lowered)
                    entry["qasm2"] = f"qasm2/{call.layer}/{name}"
                index["programs"].append(entry)
        (tmp / JOB_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


def run_job(
    job_dir: str | Path, shots: int = 4000, backend: str = "basic", seed: int | None = 0
) -> dict[str, Any]:
    """Run every program of a job with shots; write and return ``results.json``.

    Each program is read back through the OpenQASM 3 parser (so what runs is what the file
    says), estimated with ``shots``, and compared with the kernel's exact value: ``max_z`` is
    the largest distance in standard errors (see ``deviation_in_standard_errors``).
    """
    job_dir = Path(job_dir)
    index = json.loads((job_dir / JOB_INDEX).read_text())
    estimator = ShotEstimator(shots=shots, backend=backend, seed=seed)
    results = []
    for entry in index["programs"]:
        circuit = qasm3_to_circuit((job_dir / entry["file"]).read_text())
        means, errors = estimator.estimate(circuit, np.zeros((1, 0)), np.zeros(0))
        expected = np.asarray(entry["expected"])
        z = deviation_in_standard_errors(means[0], expected, shots)
        results.append(
            {
                "file": entry["file"],
                "layer": entry["layer"],
                "token": entry["token"],
                "estimate": means[0].tolist(),
                "stderr": errors[0].tolist(),
                "expected": entry["expected"],
                "max_z": float(z.max()),
            }
        )
    summary = {
        "shots": shots,
        "backend": backend,
        "seed": seed,
        "programs": len(results),
        "max_z": max((r["max_z"] for r in results), default=0.0),
        "within_5_stderr": all(r["max_z"] <= 5 for r in results),
        "results": results,
    }
    atomic_write_text(job_dir / RESULTS, json.dumps(summary, indent=2) + "\n")
    return summary
