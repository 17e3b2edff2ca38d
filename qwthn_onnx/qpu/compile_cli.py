"""``qwthn-qasm compile``: what every quantum layer of an export becomes on a device.

Reads each ``QuantumLayer`` node of an exported ``model.onnx`` (its circuit from the node's
attributes, its trained weights from the initializer ``node.input[1]``), compiles it as a
backend would (:func:`~qwthn_onnx.qpu.compile.compile_layer`) and prints one row per layer:
depth, two-qubit gates, gate counts, the estimated gate time and readout time, the device
qubits, with totals.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from qwthn_onnx._io import atomic_write_text
from qwthn_onnx.circuit.ir import CircuitError

from .backend import LayerReport, QPUError
from .compile import CompiledLayer, check_optimization_level, compile_layer
from .devices import CUSTOM_SYNTAX, resolve_device

__all__ = ["add_compile_command", "compile_export", "compile_model", "run_compile"]


def compile_model(
    export: str | Path, device: str, optimization_level: int = 1, seed: int = 0
) -> list[CompiledLayer]:
    """Every QuantumLayer of ``export`` (a qwthn-export directory or its model.onnx), compiled
    for ``device``, in graph order."""
    import onnx
    from google.protobuf.message import DecodeError

    from qwthn_onnx.ops.schemas import (
        circuit_from_node,
        layer_of_node,
        quantum_layer_nodes,
        quantum_layer_weights,
    )
    from qwthn_onnx.runtime import export_dir

    level = check_optimization_level(optimization_level)
    backend = resolve_device(device)
    path = export_dir.model_path(export)
    try:  # the base weights (maybe GBs of model.onnx.data) are not needed, only the circuits'
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError) as e:
        raise QPUError(
            f"{path} is not a readable ONNX model ({e}); give a qwthn-export output"
        ) from e
    nodes = quantum_layer_nodes(model)
    if not nodes:
        raise QPUError(f"{path} has no ai.qwthn QuantumLayer nodes: nothing to compile.")
    initializers = {t.name: t for t in model.graph.initializer}
    compiled = []
    for node in nodes:
        layer = layer_of_node(node)
        weights = quantum_layer_weights(node, initializers, str(path.parent))
        compiled.append(
            compile_layer(
                layer,
                circuit_from_node(node),
                weights,
                backend,
                optimization_level=level,
                seed=seed,
            )
        )
    return compiled


def compile_export(
    export: str | Path, device: str, optimization_level: int = 1, seed: int = 0
) -> list[LayerReport]:
    """The :class:`LayerReport` of every quantum layer of ``export`` on ``device``."""
    return [c.report for c in compile_model(export, device, optimization_level, seed)]


def add_compile_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``compile`` to ``qwthn-qasm``'s subcommands (run it with :func:`run_compile`)."""
    p = subparsers.add_parser(
        "compile",
        help="compile every quantum layer of an export for a device and report the result",
        description="Transpile each QuantumLayer's circuit (trained weights bound, inputs "
        "free) for a device and print depth, two-qubit gates, gate counts, estimated duration "
        "and the device qubits per layer.",
    )
    p.add_argument("export", type=Path, help="qwthn-export output directory or model.onnx")
    p.add_argument(
        "--device",
        required=True,
        help=f"a fake IBM device (fake_torino, fake_sherbrooke, fake_fez, ...) or {CUSTOM_SYNTAX}",
    )
    p.add_argument(
        "--optimization-level",
        type=int,
        default=1,
        choices=range(4),
        metavar="{0,1,2,3}",
        help="qiskit preset pass manager level (default 1)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="transpiler seed (layout and routing; default 0)"
    )
    p.add_argument("--json", type=Path, help="also write the reports to this JSON file")
    return p


def _us(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e6:,.2f}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _total(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(sum(values))  # type: ignore[arg-type]


def run_compile(args: argparse.Namespace) -> int:
    """``qwthn-qasm compile``: 0 on success, 2 on a user error (printed to stderr)."""
    from rich.console import Console
    from rich.table import Table

    from qwthn_onnx.runtime.export_dir import ExportIntegrityError

    try:
        layers = compile_model(args.export, args.device, args.optimization_level, args.seed)
    except (CircuitError, ExportIntegrityError, FileNotFoundError) as e:  # QPUError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # the fake devices come with qiskit-ibm-runtime
        print(
            f"error: qwthn-qasm compile needs the qpu extra ({e}); pip install 'qwthn-onnx[qpu]'",
            file=sys.stderr,
        )
        return 2
    totals: dict[str, int] = {}
    for c in layers:
        for name, n in c.report.gate_counts.items():
            totals[name] = totals.get(name, 0) + n
    gate_time = _total([c.report.duration_s for c in layers])
    readout_time = _total([c.readout_s for c in layers])
    table = Table(
        title=f"qwthn-qasm compile: {args.export} on {args.device} "
        f"(optimization level {args.optimization_level}, seed {args.seed})",
        caption="qubits: the device qubits of logical qubits 0, 1, ...; gates µs: the critical "
        "path through the device's gate durations; readout µs: the measurement after it; "
        "totals: the layers run one after another",
    )
    for column in ("layer", "qubits", "depth", "2q gates", "gate counts", "gates µs", "readout µs"):
        numeric = column in ("depth", "2q gates", "gates µs", "readout µs")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for i, c in enumerate(layers):
        r = c.report
        table.add_row(
            r.layer,
            ",".join(map(str, r.physical_qubits)),
            str(r.depth),
            str(r.two_qubit_gates),
            _counts(r.gate_counts),
            _us(r.duration_s),
            _us(c.readout_s),
            end_section=i == len(layers) - 1,
        )
    table.add_row(
        f"total ({len(layers)} layers)",
        "",
        str(sum(c.report.depth for c in layers)),
        str(sum(c.report.two_qubit_gates for c in layers)),
        _counts(totals),
        _us(gate_time),
        _us(readout_time),
    )
    width = shutil.get_terminal_size((160, 24)).columns  # rich assumes 80 when piped
    Console(highlight=False, soft_wrap=True, width=width).print(table)
    if args.json is not None:
        document = {
            "device": args.device,
            "optimization_level": args.optimization_level,
            "seed": args.seed,
            "reading": "duration_s: the gates' critical path from the device's gate durations; "
            "readout_s: the slowest measured qubit's readout (not included in duration_s)",
            "layers": [
                {
                    **asdict(c.report),
                    "physical_qubits": list(c.report.physical_qubits),
                    "readout_s": c.readout_s,
                    "active_qubits": list(c.active_qubits),
                }
                for c in layers
            ],
            "totals": {
                "layers": len(layers),
                "depth": sum(c.report.depth for c in layers),
                "two_qubit_gates": sum(c.report.two_qubit_gates for c in layers),
                "gate_counts": totals,
                "duration_s": gate_time,
                "readout_s": readout_time,
            },
        }
        atomic_write_text(args.json, json.dumps(document, indent=2) + "\n")
    return 0
