"""``model.pt`` -> an export directory, written atomically and verified before it appears.

The directory's layout is defined in :mod:`qwthn_onnx.runtime.export_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import onnxscript
import torch
import transformers

from exporters.onnx_export import (
    DEFAULT_OPSET,
    DTYPES,
    ExportedGraph,
    ExportError,
    check_architecture,
    check_opset,
    export_graph,
    save_onnx,
)
from exporters.qasm import DEFAULT_DIALECT, check_dialect, circuit_to_qasm3
from exporters.runtime_files import normalize_tokenizer_files, write_runtime_files
from exporters.verify import Reference, VerifyReport, torch_reference, verify_reference
from qwthn_onnx import __version__
from qwthn_onnx._io import atomic_directory, file_sha256, tokenizer_to_files
from qwthn_onnx.adapter import QWTHNModel
from qwthn_onnx.adapter.config import ABLATION_FUSIONS
from qwthn_onnx.checkpoint import LoadedModel, model_from_payload, read_model_pt
from qwthn_onnx.circuit import CircuitError
from qwthn_onnx.ops.schemas import register_schemas
from qwthn_onnx.runtime import export_dir
from qwthn_onnx.runtime.library import LibraryNotFoundError, get_library_path
from qwthn_onnx.runtime.metadata import ExportMetadata, encode_files

__all__ = [
    "ExportOptions",
    "ExportResult",
    "export_model",
    "write_qasm",
]

# Default verification tolerances per export dtype: float32 as Optimum's order of magnitude;
# float16 rounds logits of size ~10 to steps of 0.008 (torch and onnxruntime round differently).
TOLERANCES = {"float32": (1e-4, 1e-3), "float16": (5e-2, 2e-2)}
# Above this the weights go to model.onnx.data, streamed from the model's tensors: a single-file
# model is built as one protobuf in memory (a full copy of the weights), and protobuf caps files
# at 2 GiB anyway.
EXTERNAL_DATA_THRESHOLD = 64 << 20


@dataclass(frozen=True)
class ExportOptions:
    """Choices of one export (the CLI flags of ``qwthn-export``)."""

    opset: int = DEFAULT_OPSET
    fallback: bool = True
    dtype: str = "float32"
    verify: bool = True
    atol: float | None = None  # None: the dtype's default (TOLERANCES)
    rtol: float | None = None
    external_data: bool | None = None  # None: only when the weights exceed 1 GiB
    qasm: bool = True  # qasm/<layer>.qasm, one OpenQASM 3 program per adapted layer
    qasm_weights_as_inputs: bool = False  # trained weights as `input` too, not only literals
    qasm_dialect: str = DEFAULT_DIALECT  # exporters.qasm.DIALECTS; portable runs in every tool
    # a copy of the ai.qwthn op library beside model.onnx, named in genai_config.json (False:
    # no binary in the export; stock runtimes then run the fallback functions)
    op_library: bool = True

    def validate(self) -> None:
        check_opset(self.opset)
        if self.dtype not in DTYPES:
            raise ExportError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        try:
            check_dialect(self.qasm_dialect)
        except ValueError as e:
            raise ExportError(str(e)) from None
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if value is not None and not value >= 0:  # also rejects NaN
                raise ExportError(f"{name} must be >= 0, got {value}")

    def tolerances(self) -> tuple[float, float]:
        """``(atol, rtol)``: the given ones, else the dtype's defaults."""
        atol, rtol = TOLERANCES[self.dtype]
        return (
            atol if self.atol is None else self.atol,
            rtol if self.rtol is None else self.rtol,
        )


@dataclass
class ExportResult:
    directory: Path
    files: dict[str, int]  # name -> bytes
    adapted_layers: list[str]
    verification: VerifyReport | None
    seconds: dict[str, float] = field(default_factory=dict)


def check_output_dir(path: Path) -> None:
    """Fail before any work when ``path`` cannot become the export directory."""
    if path.exists() and not path.is_dir():
        raise ExportError(f"output {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / export_dir.MANIFEST).is_file():
        raise ExportError(
            f"output {path} is a non-empty directory that is not a qwthn-export output; "
            f"choose a new -o (an earlier export there would be replaced, other files never)"
        )
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=parent):
            pass
    except OSError as e:
        raise ExportError(f"output {path} is not writable: {e.strerror or e}") from e


def _versions() -> dict[str, str]:
    return {
        "qwthn_onnx": __version__,
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _metadata(loaded: LoadedModel, dtype: str) -> ExportMetadata:
    model = loaded.model
    return ExportMetadata(
        producer={"name": "qwthn-onnx", **{k: str(v) for k, v in _versions().items()}},
        base_model={
            "architecture": type(model.base_model).__name__,
            "config_json": model.config.to_json_string(use_diff=False),
            "dtype": dtype,
        },
        adapter_config=model.qwthn_config.to_dict(),
        circuits={
            name: layer.qwthn.qnn.circuit.to_dict()
            for name, layer in model.adapter_layers().items()
        },
        cache={},
        weights={},
        tokenizer=None,
        training=loaded.training,
    )


def _cast_base(loaded: LoadedModel, dtype: str) -> None:
    """Base weights to ``dtype``; the adapters stay float32 (the QNN needs it)."""
    target = DTYPES[dtype]
    for name, p in loaded.model.base_model.named_parameters():
        if ".qwthn." not in name and p.is_floating_point():
            p.data = p.data.to(target)
    for name, b in loaded.model.base_model.named_buffers():
        if ".qwthn." not in name and b.is_floating_point() and b.dtype != torch.float32:
            b.data = b.data.to(target)


def write_qasm(
    export: Path, model: QWTHNModel, weights_as_inputs: bool, dialect: str = DEFAULT_DIALECT
) -> dict[str, Any]:
    """``qasm/<layer>.qasm`` per adapted layer of the export directory ``export`` (trained
    weights as exact literals, the layer's angles as ``input float[64] x_i``) in OpenQASM
    ``dialect``, and ``qasm/index.json`` mapping layers to files and names, with the dialect."""
    directory = export / export_dir.QASM_DIR
    directory.mkdir()
    layers: dict[str, Any] = {}
    for name, layer in model.adapter_layers().items():
        circuit = layer.qwthn.qnn.circuit
        weights = layer.qwthn.qnn.weights.detach().double().numpy()
        try:
            text = circuit_to_qasm3(
                circuit, weights, weights_as_inputs=weights_as_inputs, layer=name, dialect=dialect
            )
        except CircuitError as e:
            raise ExportError(
                f"layer {name}: {e}; export with --no-qasm to skip the OpenQASM programs"
            ) from e
        (directory / f"{name}.qasm").write_text(text)
        entry: dict[str, Any] = {
            "file": f"{name}.qasm",
            "n_qubits": circuit.n_qubits,
            "inputs": [f"x_{i}" for i in range(circuit.n_inputs)],
            "observables": list(circuit.observables),
        }
        if weights_as_inputs:
            entry["weights"] = {f"theta_{j}": float(w) for j, w in enumerate(weights)}
        layers[name] = entry
    index = {**export_dir.qasm_index(layers), "dialect": dialect}
    (export / export_dir.QASM_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


def _runtimes(fallback: bool) -> list[str]:
    runtimes = []
    try:
        get_library_path()
        runtimes.append("kernels")
    except LibraryNotFoundError as e:
        warnings.warn(f"verifying without the ai.qwthn kernels: {e}", stacklevel=3)
    if fallback:
        runtimes.append("fallback")
    if not runtimes:
        raise ExportError(
            "nothing can run the exported model: the kernel library is not built and "
            "--no-fallback was given; drop --no-fallback or --no-verify"
        )
    return runtimes


@contextmanager
def _timed(seconds: dict[str, float], step: str, progress: Callable[[str], None]) -> Iterator[None]:
    progress(step)
    start = time.perf_counter()
    yield
    seconds[step] = time.perf_counter() - start


@dataclass
class _Written:
    """What outlives the PyTorch model: the export's description and verification inputs."""

    metadata: ExportMetadata
    inputs: list[str]
    outputs: list[str]
    producer: dict[str, str]
    reference: Reference | None


def _external_data(exported: ExportedGraph, choice: bool | None) -> str | None:
    if choice is None:
        size = sum(t.nbytes for t in exported.weights.values())
        choice = size > EXTERNAL_DATA_THRESHOLD
    return export_dir.MODEL_DATA if choice else None


def _export_and_write(
    model_pt: Path,
    tmp: Path,
    options: ExportOptions,
    seconds: dict[str, float],
    progress: Callable[[str], None],
) -> _Written:
    """Load, export and write everything PyTorch is needed for. The PyTorch model lives only
    in this frame, so it is freed before any onnxruntime session is built."""
    with _timed(seconds, "load model.pt", progress):
        payload = read_model_pt(model_pt)
        check_architecture(payload["base_model"]["architecture"])
        loaded = model_from_payload(payload)
        del payload  # the model adopted the base tensors: they exist once, in the model
        fusion = loaded.model.qwthn_config.fusion
        if fusion in ABLATION_FUSIONS:
            raise ExportError(
                f"{model_pt}: fusion={fusion!r} is an ablation for studying the adapter, not "
                f"for deployment; qwthn-export writes 'weighted' and 'linear' adapters (train "
                f"with one of those to export)"
            )
        if options.dtype != "float32":
            _cast_base(loaded, options.dtype)
        metadata = _metadata(loaded, options.dtype)
        tokenizer_files = (
            normalize_tokenizer_files(tokenizer_to_files(loaded.tokenizer))
            if loaded.tokenizer is not None
            else None
        )
        metadata.tokenizer = encode_files(tokenizer_files) if tokenizer_files else None
    with _timed(seconds, "export to ONNX", progress):
        exported = export_graph(loaded.model, metadata, options.opset, options.fallback)
    with _timed(seconds, "write and check", progress):
        save_onnx(exported, tmp / export_dir.MODEL, _external_data(exported, options.external_data))
        register_schemas()
        onnx.checker.check_model(str(tmp / export_dir.MODEL), full_check=True)
        (tmp / export_dir.CONFIG).write_text(loaded.model.config.to_json_string(use_diff=False))
        for name, content in (tokenizer_files or {}).items():
            if isinstance(content, str):
                (tmp / name).write_text(content)
            else:
                (tmp / name).write_bytes(content)
        write_runtime_files(
            tmp,
            loaded.model.config.to_dict(),
            metadata.base_model["architecture"],
            metadata.cache,
            options.op_library,
        )
    if options.qasm:
        with _timed(seconds, "OpenQASM 3", progress):
            write_qasm(tmp, loaded.model, options.qasm_weights_as_inputs, options.qasm_dialect)
    reference = None
    if options.verify:
        with _timed(seconds, "PyTorch reference", progress):
            reference = torch_reference(exported.module, loaded.tokenizer, exported.vocab_size)
    return _Written(
        metadata=metadata,
        inputs=exported.geometry.input_names(),
        outputs=exported.geometry.output_names(),
        producer=loaded.producer,
        reference=reference,
    )


def export_model(
    model_pt: str | Path,
    output_dir: str | Path,
    options: ExportOptions | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> ExportResult:
    """Export ``model_pt`` to ``output_dir`` (created or replaced atomically).

    Raises ExportError (or ModelFileError for a bad model.pt) with a message naming the problem;
    a failed verification raises ExportError naming the diverging output, and nothing is
    written. ``progress`` is called with the name of each step as it starts.
    """
    options = options or ExportOptions()
    options.validate()
    model_pt, output_dir = Path(model_pt), Path(output_dir)
    check_output_dir(output_dir)
    seconds: dict[str, float] = {}
    runtimes = _runtimes(options.fallback) if options.verify else []
    with atomic_directory(output_dir) as tmp:
        written = _export_and_write(model_pt, tmp, options, seconds, progress)
        report = None
        if written.reference is not None:
            with _timed(seconds, "verify in onnxruntime", progress):
                report = verify_reference(
                    tmp / export_dir.MODEL, written.reference, *options.tolerances(), runtimes
                )
            (tmp / export_dir.VERIFY).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
            if not report.passed:
                failures = report.failures()
                raise ExportError(
                    f"verification failed: {failures[0]}; {len(failures)} checks failed (see "
                    f"the criteria in the README). Nothing was written; loosen --atol/--rtol or "
                    f"use --no-verify to keep the export"
                )
        metadata = written.metadata
        manifest = export_dir.build_manifest(
            tmp,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            source={
                "path": str(model_pt.resolve()),
                "sha256": file_sha256(model_pt),
                "producer": written.producer,
            },
            model={
                "architecture": metadata.base_model["architecture"],
                "adapted_layers": list(metadata.circuits),
                "cache": metadata.cache,
                "inputs": written.inputs,
                "outputs": written.outputs,
            },
            options=dataclasses.asdict(options),
            versions=_versions(),
            verification=None
            if report is None
            else {
                "passed": report.passed,
                "runtimes": report.runtimes,
                "file": export_dir.VERIFY,
            },
        )
        (tmp / export_dir.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        files = {name: entry["bytes"] for name, entry in manifest["files"].items()}
        files[export_dir.MANIFEST] = (tmp / export_dir.MANIFEST).stat().st_size
    return ExportResult(
        directory=output_dir,
        files=files,
        adapted_layers=list(metadata.circuits),
        verification=report,
        seconds=seconds,
    )
