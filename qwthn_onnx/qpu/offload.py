"""Run an exported model with its ``QuantumLayer`` nodes executed on a quantum backend.

onnxruntime cannot call out to a QPU from inside a graph, so the graph is cut at its quantum
nodes: every tensor gets a *round*, the number of quantum nodes on its longest path from the
inputs. Stage ``r`` (an ordinary onnxruntime session over the nodes of round ``r``) computes the
inputs of round ``r``'s quantum nodes; those nodes — in a Llama the adapted q and v projections of
one decoder layer, which depend on nothing quantum of each other — then run on the backend as
ONE job holding every (prompt, token) row of the step; their outputs feed stage ``r + 1``.
A forward pass is therefore ``rounds + 1`` sessions and ``rounds`` jobs, in dependency order.

Rows a step does not need are not sent: positions the attention mask marks as padding (their
values never reach a real token) get the exact kernel value instead. Every job is also run
through :class:`~qwthn_onnx.qpu.backend.ExactBackend` on the same rows (microseconds next to a
job), so each :class:`~qwthn_onnx.qpu.backend.JobRecord` says how far the backend was from what
the ONNX node would have computed.

:class:`OffloadSession` has the parts of ``onnxruntime.InferenceSession`` that
:class:`~qwthn_onnx.runtime.session.QWTHNSession` uses, so generation, chat and batching run
unchanged on top of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from qwthn_onnx.circuit.ir import Circuit
from qwthn_onnx.ops.schemas import (
    DOMAIN,
    circuit_from_node,
    layer_of_node,
    quantum_layer_nodes,
    quantum_layer_weights,
)
from qwthn_onnx.qpu.backend import ExactBackend, JobRecord, LayerCall, QPUError, QuantumBackend
from qwthn_onnx.runtime.signature import ATTENTION_MASK, INPUT_IDS

__all__ = ["OffloadSession", "QuantumNode", "TensorInfo"]

_EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


@dataclass(frozen=True)
class TensorInfo:
    """What ``InferenceSession.get_inputs()`` / ``get_outputs()`` give: name, type, shape."""

    name: str
    type: str
    shape: list[int | str | None]


@dataclass(frozen=True)
class QuantumNode:
    """One QuantumLayer node of the graph: the adapted layer, its circuit and trained weights."""

    layer: str
    circuit: Circuit
    weights: np.ndarray
    input: str
    output: str


@dataclass
class _Stage:
    nodes: list[onnx.NodeProto]
    inputs: list[str]  # tensors fed from outside the stage (graph inputs, earlier results)
    outputs: list[str]  # tensors later stages, quantum nodes or the caller need
    initializers: list[str]  # the model's initializers the stage reads
    session: ort.InferenceSession | None = None


class _Meta:
    """``get_modelmeta()``'s answer, from the parsed model."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.custom_metadata_map = {p.key: p.value for p in model.metadata_props}


def _type_string(value_info: onnx.ValueInfoProto) -> str:
    elem = value_info.type.tensor_type.elem_type
    return f"tensor({helper.tensor_dtype_to_string(elem).removeprefix('TensorProto.').lower()})"


def _tensor_info(value_info: onnx.ValueInfoProto) -> TensorInfo:
    dims = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in value_info.type.tensor_type.shape.dim
    ]
    return TensorInfo(value_info.name, _type_string(value_info), dims)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a control-flow node carries in its attributes (If, Loop, Scan)."""
    return [g for a in node.attribute for g in [*a.graphs, *([a.g] if a.HasField("g") else [])]]


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names a control-flow node's subgraphs read (implicit inputs)."""
    names: set[str] = set()
    for graph in _subgraphs(node):
        local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
        for inner in graph.node:
            local.update(inner.output)
        for inner in graph.node:
            used = set(inner.input) | _subgraph_inputs(inner)
            names.update(n for n in used if n and n not in local)
    return names


def _node_inputs(node: onnx.NodeProto) -> set[str]:
    return {n for n in node.input if n} | _subgraph_inputs(node)


def _is_quantum(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == "QuantumLayer"


class OffloadSession:
    """An exported model whose quantum layers run on ``backend`` (see the module docstring).

    ``options``: onnxruntime session options for the stages (with the ``ai.qwthn`` library
    registered for the MPO kernels, or plain for the fallback functions). ``on_job`` is called
    with each :class:`JobRecord` as soon as its job has run (progress, logs).
    """

    def __init__(
        self,
        path: str | Path,
        backend: QuantumBackend,
        options: ort.SessionOptions | None = None,
        *,
        on_job: Callable[[JobRecord], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.backend = backend
        self.options = options or ort.SessionOptions()
        # The stages are built from bytes; weights stored beside the model stay on disk and
        # onnxruntime reads each stage's own from there (no copy in memory, no 2 GiB limit).
        self.options.add_session_config_entry(_EXTERNAL_DATA_FOLDER, str(self.path.parent))
        self.on_job = on_job
        self.jobs: list[JobRecord] = []
        self._exact = ExactBackend()
        model = onnx.load(str(self.path), load_external_data=False)
        self._model = model
        self._meta = _Meta(model)
        self._inputs = [_tensor_info(v) for v in model.graph.input]
        self._outputs = [_tensor_info(v) for v in model.graph.output]
        self.quantum_nodes, self._stages, self.rounds = self._cut(model)
        for node in self.quantum_nodes:  # compile every layer (and check its width) up front
            backend.prepare(node.layer, node.circuit, node.weights)
            self._exact.prepare(node.layer, node.circuit, node.weights)

    # -- the parts of InferenceSession that QWTHNSession and the server use --------------------

    def get_inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    def get_modelmeta(self) -> _Meta:
        return self._meta

    def run(
        self, output_names: Sequence[str] | None, feed: dict[str, np.ndarray]
    ) -> list[np.ndarray]:
        """One forward pass: the stages in order, each round's quantum nodes as one job."""
        names = list(output_names or [o.name for o in self._outputs])
        values: dict[str, np.ndarray] = dict(feed)
        active = _active_rows(feed)
        for index, stage in enumerate(self._stages):
            if stage.nodes:
                session = self._session(stage, values)
                results = session.run(stage.outputs, {n: values[n] for n in stage.inputs})
                values.update(zip(stage.outputs, results, strict=True))
            if index < len(self.rounds):
                self._run_round(self.rounds[index], values, active)
        return [values[n] for n in names]

    # -- cutting the graph ------------------------------------------------------------------

    def _cut(
        self, model: onnx.ModelProto
    ) -> tuple[list[QuantumNode], list[_Stage], list[list[QuantumNode]]]:
        _check_quantum_nodes(model, self.path)
        graph = model.graph
        initializers = {t.name: t for t in graph.initializer}
        nodes = list(graph.node)  # ONNX graphs are topologically sorted
        reads = [_node_inputs(node) for node in nodes]
        level: dict[str, int] = {v.name: 0 for v in graph.input}
        level.update(dict.fromkeys(initializers, 0))
        # Nodes computed from initializers alone go into every stage that reads them, where
        # onnxruntime folds them once at session creation, instead of being recomputed in
        # stage 0 and passed along at every step.
        constant: dict[str, int] = {}  # tensor -> index of the constant node making it
        stage_nodes: dict[int, list[int]] = {}
        rounds: dict[int, list[QuantumNode]] = {}
        quantum: list[QuantumNode] = []
        for index, node in enumerate(nodes):
            if (
                all(n in initializers or n in constant for n in reads[index])
                and not _subgraphs(node)
                and not node.op_type.startswith("Random")
            ):
                constant.update(dict.fromkeys(node.output, index))
                continue
            r = max((level.get(n, 0) for n in reads[index]), default=0)
            if _is_quantum(node):
                q = QuantumNode(
                    layer=layer_of_node(node),
                    circuit=circuit_from_node(node),
                    weights=quantum_layer_weights(node, initializers, str(self.path.parent)),
                    input=node.input[0],
                    output=node.output[0],
                )
                quantum.append(q)
                rounds.setdefault(r, []).append(q)
                level[q.output] = r + 1
            else:
                stage_nodes.setdefault(r, []).append(index)
                level.update(dict.fromkeys(node.output, r))
        n_stages = max([*stage_nodes, *(r + 1 for r in rounds)], default=0) + 1
        graph_outputs = {o.name for o in graph.output}
        needed_after: dict[int, set[str]] = {}  # tensors read at or after stage r
        wanted = set(graph_outputs)
        for r in range(n_stages - 1, -1, -1):
            wanted |= {n for index in stage_nodes.get(r, []) for n in reads[index]}
            wanted |= {q.input for q in rounds.get(r, [])}
            needed_after[r] = set(wanted)
        stages = []
        for r in range(n_stages):
            chosen = _with_constants(stage_nodes.get(r, []), constant, reads)
            produced = [o for index in chosen for o in nodes[index].output if o]
            stage_reads = set().union(*(reads[index] for index in chosen))
            later = needed_after.get(r + 1, set()) | {q.input for q in rounds.get(r, [])}
            outputs = [
                o for o in produced if (o in later and o not in constant) or o in graph_outputs
            ]
            stages.append(
                _Stage(
                    nodes=[nodes[index] for index in chosen],
                    inputs=sorted(stage_reads - set(produced) - set(initializers)),
                    outputs=outputs,
                    initializers=sorted(stage_reads & set(initializers)),
                )
            )
        return quantum, stages, [rounds.get(r, []) for r in range(n_stages - 1)]

    def _session(self, stage: _Stage, values: dict[str, np.ndarray]) -> ort.InferenceSession:
        """The stage's session, built on first use: its inputs' types come from the values fed."""
        if stage.session is None:
            source = self._model
            used = set(stage.initializers)
            graph = helper.make_graph(
                stage.nodes,
                f"stage_{id(stage)}",
                [
                    helper.make_tensor_value_info(
                        n,
                        helper.np_dtype_to_tensor_dtype(values[n].dtype),
                        [f"{n}_d{i}" for i in range(values[n].ndim)],
                    )
                    for n in stage.inputs
                ],
                [helper.make_empty_tensor_value_info(n) for n in stage.outputs],
                [t for t in source.graph.initializer if t.name in used],
            )
            model = helper.make_model(
                graph,
                opset_imports=list(source.opset_import),
                functions=list(source.functions),
                ir_version=source.ir_version,
            )
            stage.session = ort.InferenceSession(
                model.SerializeToString(), self.options, providers=["CPUExecutionProvider"]
            )
        return stage.session

    # -- the quantum rounds -----------------------------------------------------------------

    def _run_round(
        self,
        nodes: list[QuantumNode],
        values: dict[str, np.ndarray],
        active: np.ndarray | None,
    ) -> None:
        calls, exact_calls, sent = [], [], []
        for node in nodes:
            flat = values[node.input].reshape(-1, values[node.input].shape[-1]).astype(np.float64)
            keep = active if active is not None and active.size == len(flat) else slice(None)
            calls.append(LayerCall(node.layer, node.circuit, node.weights, flat[keep]))
            exact_calls.append(LayerCall(node.layer, node.circuit, node.weights, flat))
            sent.append(keep)
        start = time.perf_counter()
        estimates = self.backend.run(calls) if any(c.inputs.shape[0] for c in calls) else []
        wall = time.perf_counter() - start
        results = self._exact.run(exact_calls)  # what the ONNX node gives, every row
        errors = []
        for result, keep, estimate in zip(
            results, sent, estimates, strict=False
        ):  # [] if none sent
            errors.append(np.abs(estimate - result[keep]).ravel())
            result[keep] = estimate
        for node, result in zip(nodes, results, strict=True):
            x = values[node.input]
            values[node.output] = result.reshape(*x.shape[:-1], result.shape[-1]).astype(x.dtype)
        error = np.concatenate(errors) if errors else np.zeros(0)
        record = JobRecord(
            index=len(self.jobs),
            backend=self.backend.name,
            layers=[node.layer for node in nodes],
            rows=[c.inputs.shape[0] for c in calls],
            shots=self.backend.shots,
            wall_s=wall,
            max_abs_error=float(error.max()) if error.size else None,
            mean_abs_error=float(error.mean()) if error.size else None,
        )
        self.jobs.append(record)
        if self.on_job is not None:
            self.on_job(record)


def _check_quantum_nodes(model: onnx.ModelProto, path: Path) -> None:
    """Every QuantumLayer must be a top-level node with a layer name of its own: the backends
    compile and cache each layer by name, and a node inside a subgraph or function would stay
    in onnxruntime unseen."""
    top = quantum_layer_nodes(model)
    if not top:
        raise QPUError(
            f"{path} has no ai.qwthn QuantumLayer nodes: there is nothing to run on a quantum "
            "backend (run it without --quantum-backend)"
        )
    names = [layer_of_node(node) for node in top]
    repeated = sorted({n for n in names if names.count(n) > 1 or not n})
    if repeated:
        raise QPUError(
            f"{path}: QuantumLayer nodes without a name of their own ({repeated!r}); the "
            "backends tell layers apart by node name: re-export with qwthn-export"
        )
    nested = [f.name for f in model.functions if any(_is_quantum(n) for n in f.node)]
    nested += [n.name for n in model.graph.node if _nested_quantum(n)]
    if nested:
        raise QPUError(
            f"{path}: QuantumLayer nodes inside functions or control flow ({nested!r}) cannot be "
            "run on a quantum backend; only top-level nodes can"
        )


def _nested_quantum(node: onnx.NodeProto) -> bool:
    return any(
        _is_quantum(inner) or _nested_quantum(inner) for g in _subgraphs(node) for inner in g.node
    )


def _with_constants(
    chosen: list[int], constant: dict[str, int], reads: list[set[str]]
) -> list[int]:
    """Node indices ``chosen`` and those of the constant nodes they read, transitively, in
    graph order (each once)."""
    found = set(chosen)
    pending = [n for index in chosen for n in reads[index] if n in constant]
    while pending:
        index = constant[pending.pop()]
        if index not in found:
            found.add(index)
            pending += [n for n in reads[index] if n in constant]
    return sorted(found)


def _active_rows(feed: dict[str, np.ndarray]) -> np.ndarray | None:
    """Which (prompt, token) rows of this step are real tokens: the attention mask's last
    ``sequence`` columns, flattened (None when there is no mask to go by)."""
    mask = feed.get(ATTENTION_MASK)
    ids = feed.get(INPUT_IDS)
    if mask is None or ids is None or mask.ndim != 2 or ids.ndim != 2:
        return None
    return mask[:, -ids.shape[1] :].reshape(-1).astype(bool)
