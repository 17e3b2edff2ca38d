"""atheris targets for every Python parser qwthn-onnx owns, run one bounded process at a time.

Each target feeds fuzzed bytes to one public parser and lets through only that parser's
documented refusals (the exception types its callers turn into a clear message or a 400); any
other exception, a hang (``-timeout``) or runaway memory (``-rss_limit_mb``) is a crash, and
libFuzzer writes the input that caused it. ``atheris.Fuzz()`` ends its process, so :func:`run`
starts the child entry point ``python -m fuzz.python_targets <target> <libFuzzer flags>``.

Seeds are real artifacts: a tiny adapted Llama saved as ``model.pt``, exported to ONNX with its
OpenQASM 3 programs (built once per work directory), and valid protocol requests.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
import types
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuzz.common import FuzzResult, FuzzSetupError

__all__ = ["PYTHON_TARGETS", "replay", "run", "seed_corpus", "tiny_artifacts"]

PYTHON_TARGETS: dict[str, str] = {
    "circuit_encoding": "circuit dicts as JSON -> circuit.encoding.decode and Circuit.from_dict",
    "onnx_node": "a serialized ONNX NodeProto -> ops.schemas.circuit_from_node (op attributes)",
    "model_pt": "model.pt bytes (zip members mutated in place) -> checkpoint.load_model_pt",
    "onnx_import": "model.onnx bytes -> exporters.onnx_import.import_onnx",
    "qasm": "OpenQASM 3 text -> exporters.qasm.qasm3_to_circuit",
    "infer_request": "OIP v2 infer request JSON + binary tensor data -> serving.protocol decoders",
    "infer_feed": "the same -> ServedModel.prepare on a real export, onnxruntime, the answer",
    "generate_request": "generate request JSON -> GenerateRequest and its GenerationConfig",
}

# Only our own packages are instrumented (plus, per target, the library parser in front of
# ours): their branches are what the fuzzer should explore.
_INSTRUMENTED = ("qwthn_onnx", "exporters", "serving")
# Per target: seconds one input may take (model targets build a transformers model per input)
# and the RSS ceiling (torch, transformers and onnx alone take ~1 GiB).
_TIMEOUT_S = {"model_pt": 30, "onnx_import": 30}
_RSS_LIMIT_MB = 3072
_ARTIFACTS = "artifacts"
_ARTIFACTS_ENV = "QWTHN_FUZZ_ARTIFACTS"  # tells a child where the tiny export is (infer_feed)
_REPRODUCER = re.compile(r"^(crash|timeout|oom|leak|slow-unit)-[0-9a-f]+$")
# The binary tensor data extension's framing in an infer_request input: a little-endian uint16
# JSON length, the JSON, then the bytes after it (Inference-Header-Content-Length in HTTP).
_LENGTH = struct.Struct("<H")


# ----------------------------------------------------------------------------------------------
# The checks: one input each, raising only the refusals returned beside them.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Check:
    one_input: Callable[[bytes], None]
    refusals: tuple[type[BaseException], ...]
    mutator: Callable[[bytes, int, int], bytes] | None = None
    instrument: tuple[str, ...] = ()


def _json_dict(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # not JSON: nothing for these parsers to see
        return None
    return value if isinstance(value, dict) else None


def _circuit_encoding() -> _Check:
    from qwthn_onnx.circuit import Circuit, CircuitError
    from qwthn_onnx.circuit.encoding import decode

    def one_input(data: bytes) -> None:
        value = _json_dict(data)
        refusals = []
        for parse in () if value is None else (decode, Circuit.from_dict):
            try:
                parse(value)
            except CircuitError as e:  # the other parser still runs on the same dict
                refusals.append(e)
        if refusals:
            raise refusals[0]

    return _Check(one_input, (CircuitError,))


def _onnx_node() -> _Check:
    import onnx
    from google.protobuf.message import DecodeError

    from qwthn_onnx.circuit import CircuitError
    from qwthn_onnx.ops.schemas import circuit_from_node

    def one_input(data: bytes) -> None:
        node = onnx.NodeProto()
        try:
            node.ParseFromString(data)
        except DecodeError:
            return  # protobuf's refusal, before any code of ours runs
        circuit_from_node(node)

    return _Check(one_input, (CircuitError,))


def _file_parser(load: Callable[[Path], Any], suffix: str) -> Callable[[bytes], None]:
    """A check for a parser that takes a path: the input is written to one scratch file."""
    scratch = Path(tempfile.mkdtemp(prefix="qwthn-fuzz-")) / f"input{suffix}"

    def one_input(data: bytes) -> None:
        scratch.write_bytes(data)
        load(scratch)

    return one_input


def _mutate_zip_member(data: bytes, max_size: int, seed: int) -> bytes:
    """Mutate one member of a zip (torch.save's container) and zip it again, so mutations reach
    the pickle and the tensor records behind the container; raw bytes otherwise."""
    import atheris

    rng = random.Random(seed)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError):
        members = []
    if not members or rng.random() < 0.2:
        return atheris.Mutate(data, max_size)
    pickles = [i for i, (name, _) in enumerate(members) if name.endswith(".pkl")]
    index = pickles[0] if pickles and rng.random() < 0.7 else rng.randrange(len(members))
    name, content = members[index]
    members[index] = (name, atheris.Mutate(content, max(len(content) * 2, 64)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for member, content in members:
            archive.writestr(member, content)
    return out.getvalue()[:max_size]


def _model_pt() -> _Check:
    from qwthn_onnx.checkpoint import ModelFileError, load_model_pt

    return _Check(_file_parser(load_model_pt, ".pt"), (ModelFileError,), _mutate_zip_member)


def _onnx_import() -> _Check:
    from exporters.cli import USER_ERRORS
    from exporters.onnx_import import import_onnx

    return _Check(_file_parser(import_onnx, ".onnx"), USER_ERRORS)


def _qasm() -> _Check:
    from exporters.qasm import QasmError, qasm3_to_circuit

    def one_input(data: bytes) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return  # the CLI reads programs as text: undecodable bytes never reach the reader
        qasm3_to_circuit(text)

    return _Check(one_input, (QasmError,), instrument=("openqasm3",))


def _split_infer_body(data: bytes) -> tuple[bytes, bytes]:
    if len(data) < _LENGTH.size:
        return data, b""
    (length,) = _LENGTH.unpack_from(data)
    body = data[_LENGTH.size :]
    return body[:length], body[length:]


def _infer_request() -> _Check:
    from pydantic import ValidationError

    from serving.errors import BadRequestError
    from serving.protocol import (
        NUMPY_DTYPES,
        InferenceRequest,
        attach_binary_data,
        decode_tensor,
        wants_binary,
    )

    def one_input(data: bytes) -> None:
        header, payload = _split_infer_body(data)
        request = InferenceRequest.model_validate_json(header)
        attach_binary_data(request, payload)
        for output in request.outputs or []:
            wants_binary(request, output.name)
        for tensor in request.inputs:
            for datatype in (tensor.datatype, "INT64", "FP32"):
                try:
                    array = decode_tensor(tensor, datatype)
                except BadRequestError:
                    continue
                expected = NUMPY_DTYPES[datatype]
                if array.dtype != expected or list(array.shape) != tensor.shape:
                    raise AssertionError(
                        f"decode_tensor gave {array.dtype}{list(array.shape)} for "
                        f"{datatype}{tensor.shape}"
                    )

    return _Check(one_input, (ValidationError, BadRequestError))


def _infer_feed() -> _Check:
    """The whole inference path behind the protocol decoders, against a real served model:
    whatever ``ServedModel.prepare`` accepts must run in onnxruntime and encode as an answer
    (a feed it lets through that onnxruntime refuses would be a 500)."""
    from pydantic import ValidationError

    from qwthn_onnx.runtime.session import QWTHNSession
    from serving.errors import BadRequestError
    from serving.model import ServedModel
    from serving.protocol import InferenceRequest, attach_binary_data, encode_response

    export = Path(os.environ[_ARTIFACTS_ENV]) / "onnx"
    model = ServedModel("tiny", 1, export, QWTHNSession(export, threads=1))

    def one_input(data: bytes) -> None:
        header, payload = _split_infer_body(data)
        request = InferenceRequest.model_validate_json(header)
        attach_binary_data(request, payload)
        feed = model.prepare(request.inputs)
        outputs = model.select_outputs(request.outputs)
        result = model.run(feed, outputs)
        typed = {n: (model.outputs[n].datatype, result[n]) for n in outputs}
        encode_response(model.name, "1", "fuzz", typed, outputs[:1])

    return _Check(one_input, (ValidationError, BadRequestError))


def _generate_request() -> _Check:
    from pydantic import ValidationError

    from qwthn_onnx.runtime.generation import GenerationError
    from serving.protocol import GenerateRequest

    def one_input(data: bytes) -> None:
        GenerateRequest.model_validate_json(data).generation_config().validate()

    return _Check(one_input, (ValidationError, GenerationError))


_CHECKS: dict[str, Callable[[], _Check]] = {
    "circuit_encoding": _circuit_encoding,
    "onnx_node": _onnx_node,
    "model_pt": _model_pt,
    "onnx_import": _onnx_import,
    "qasm": _qasm,
    "infer_request": _infer_request,
    "infer_feed": _infer_feed,
    "generate_request": _generate_request,
}


def _target(name: str) -> Callable[[], _Check]:
    if name not in _CHECKS:
        raise ValueError(f"unknown Python fuzz target {name!r}; targets: {', '.join(_CHECKS)}")
    return _CHECKS[name]


def replay(name: str, data: bytes) -> None:
    """Run one input through target ``name`` as the fuzzer does: its refusals pass silently,
    anything else propagates (regression tests replay reproducers through this)."""
    _guarded(_target(name)())(data)


def _guarded(check: _Check) -> Callable[[bytes], None]:
    """``check.one_input`` with its refusals passing silently: what the fuzzer runs."""

    def test_one(data: bytes) -> None:
        with contextlib.suppress(check.refusals):
            check.one_input(data)

    return test_one


# ----------------------------------------------------------------------------------------------
# Seeds: real artifacts of a tiny adapted model, built once per work directory.
# ----------------------------------------------------------------------------------------------


def tiny_artifacts(cache: Path) -> Path:
    """``cache`` holding model.pt and its export (model.onnx, qasm/*.qasm), built if absent."""
    if (cache / "onnx" / "model.onnx").is_file():
        return cache
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from exporters import export_model
    from qwthn_onnx import QWTHNConfig, QWTHNModel, save_model_pt
    from qwthn_onnx._io import atomic_directory
    from qwthn_onnx.demo import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    adapter = QWTHNConfig(n_qubits=2, n_layers=1, rank=2, init_delta="normal")
    model = QWTHNModel(LlamaForCausalLM(config), adapter).eval()
    with atomic_directory(cache) as tmp:
        save_model_pt(tmp / "model.pt", model, tokenizer, {"steps": 0, "seed": 0})
        export_model(tmp / "model.pt", tmp / "onnx")
    return cache


def _circuit_seeds(artifacts: Path) -> dict[str, bytes]:
    from qwthn_onnx.circuit import Circuit
    from qwthn_onnx.circuit.encoding import encode
    from qwthn_onnx.circuit.presets import ANSATZE, build_ansatz

    circuits = [build_ansatz(name, 3, 2) for name in sorted(ANSATZE)]
    circuits += [Circuit.from_dict(c) for c in _metadata(artifacts, "circuits").values()]
    seeds = {}
    for i, circuit in enumerate(circuits):
        seeds[f"encoded-{i}.json"] = json.dumps(encode(circuit).as_dict()).encode()
        seeds[f"ir-{i}.json"] = json.dumps(circuit.to_dict()).encode()
    return seeds


def _metadata(artifacts: Path, key: str) -> Any:
    import onnx

    proto = onnx.load(str(artifacts / "onnx" / "model.onnx"), load_external_data=False)
    return json.loads(next(p.value for p in proto.metadata_props if p.key == f"qwthn.{key}"))


def _node_seeds(artifacts: Path) -> dict[str, bytes]:
    import onnx

    from qwthn_onnx.ops.schemas import DOMAIN

    proto = onnx.load(str(artifacts / "onnx" / "model.onnx"))
    nodes = [n for n in proto.graph.node if n.domain == DOMAIN]
    return {f"{n.op_type}-{i}.pb": n.SerializeToString() for i, n in enumerate(nodes)}


def _qasm_seeds(artifacts: Path) -> dict[str, bytes]:
    from exporters.qasm import circuit_to_qasm3
    from qwthn_onnx.circuit.presets import ANSATZE, build_ansatz

    seeds = {p.name: p.read_bytes() for p in sorted((artifacts / "onnx" / "qasm").glob("*.qasm"))}
    for name in sorted(ANSATZE):
        seeds[f"{name}.qasm"] = circuit_to_qasm3(build_ansatz(name, 3, 2)).encode()
    return seeds


def _infer_seeds() -> dict[str, bytes]:
    from qwthn_onnx.runtime.signature import past_names

    ids = [[3, 17, 25, 4]]
    int64 = struct.pack("<4q", *ids[0])
    mask = bytes([1, 1, 1, 1])
    requests: dict[str, tuple[dict[str, Any], bytes]] = {
        "nested": ({"inputs": [_tensor("input_ids", [1, 4], "INT64", data=ids)]}, b""),
        "flat-with-outputs": (
            {
                "id": "r1",
                "parameters": {"binary_data_output": True},
                "inputs": [
                    _tensor("input_ids", [2, 2], "INT64", data=[3, 17, 25, 4]),
                    _tensor("attention_mask", [2, 2], "INT64", data=[[1, 1], [1, 0]]),
                ],
                "outputs": [{"name": "logits", "parameters": {"binary_data": False}}],
            },
            b"",
        ),
        "binary": (
            {
                "inputs": [
                    _tensor("input_ids", [1, 4], "INT64", binary=len(int64)),
                    _tensor("mask", [4], "BOOL", binary=len(mask)),
                ]
            },
            int64 + mask,
        ),
        "with-cache": (
            {
                "inputs": [
                    _tensor("input_ids", [1, 1], "INT64", data=[5]),
                    _tensor("attention_mask", [1, 3], "INT64", data=[1, 1, 1]),
                    *(
                        _tensor(name, [1, 1, 2, 8], "FP32", data=[0.25] * 16)
                        for name in past_names(0)
                    ),
                ],
                "outputs": [{"name": "logits"}, {"name": "present.0.key"}],
            },
            b"",
        ),
        "floats": (
            {
                "inputs": [
                    _tensor("past", [1, 1, 0, 8], "FP32", data=[]),
                    _tensor("x", [2], "FP16", data=[0.5, -1.25]),
                    _tensor("b", [2], "BOOL", data=[True, False]),
                ]
            },
            b"",
        ),
    }
    seeds = {}
    for name, (body, payload) in requests.items():
        header = json.dumps(body).encode()
        seeds[f"{name}.bin"] = _LENGTH.pack(len(header)) + header + payload
    return seeds


def _tensor(
    name: str, shape: list[int], datatype: str, data: Any = None, binary: int | None = None
) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
    if binary is None:
        tensor["data"] = data
    else:
        tensor["parameters"] = {"binary_data_size": binary}
    return tensor


def _generate_seeds() -> dict[str, bytes]:
    bodies = [
        {"prompt": "23&58="},
        {"prompt": "7&5=", "max_new_tokens": 4, "stop": ["="], "id": "g1"},
        {
            "prompt": "40&",
            "do_sample": True,
            "temperature": 0.8,
            "top_k": 20,
            "top_p": 0.9,
            "seed": 0,
        },
    ]
    return {f"generate-{i}.json": json.dumps(b).encode() for i, b in enumerate(bodies)}


def seed_corpus(name: str, directory: Path, artifacts: Path | None = None) -> None:
    """Write target ``name``'s seeds into ``directory``: real files and requests.

    The tiny model behind the file seeds is built once and cached in ``artifacts`` (default:
    ``<directory's parent>/artifacts``, outside the corpus: libFuzzer reads corpora recursively).
    """
    _target(name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if name in ("infer_request", "infer_feed"):
        seeds = _infer_seeds()
    elif name == "generate_request":
        seeds = _generate_seeds()
    else:
        built = tiny_artifacts(Path(artifacts) if artifacts else directory.parent / _ARTIFACTS)
        seeds = {
            "circuit_encoding": _circuit_seeds,
            "onnx_node": _node_seeds,
            "model_pt": lambda a: {"model.pt": (a / "model.pt").read_bytes()},
            "onnx_import": lambda a: {"model.onnx": (a / "onnx" / "model.onnx").read_bytes()},
            "qasm": _qasm_seeds,
        }[name](built)
    for file, content in seeds.items():
        (directory / file).write_bytes(content)


# ----------------------------------------------------------------------------------------------
# Running: a child process per run, since atheris.Fuzz() never returns.
# ----------------------------------------------------------------------------------------------


def _libfuzzer_flags(name: str, seconds: float, target_dir: Path, seed: int | None) -> list[str]:
    return [
        f"-max_total_time={max(1, round(seconds))}",
        *([f"-seed={seed}"] if seed is not None else []),
        f"-timeout={_TIMEOUT_S.get(name, 10)}",
        f"-rss_limit_mb={_RSS_LIMIT_MB}",
        f"-artifact_prefix={target_dir}{os.sep}",
        "-print_final_stats=1",
        str(target_dir / "corpus"),
        str(target_dir / "seeds"),
    ]


def run(name: str, seconds: float, workdir: Path, *, seed: int | None = None) -> FuzzResult:
    """Fuzz target ``name`` for about ``seconds`` (libFuzzer's -max_total_time).

    ``seed`` fixes libFuzzer's random choices (the suite's smoke runs: the same inputs every
    time, in the order tried); None lets libFuzzer pick one, as long runs should.

    ``workdir`` is shared by all targets: ``<workdir>/artifacts`` caches the tiny model, and
    ``<workdir>/<name>/`` holds ``seeds/`` (written on the first run), ``corpus/`` (what the
    fuzzer found interesting, kept between runs) and the reproducers of crashes
    (``crash-*``, ``timeout-*``, ``oom-*``); ``crash_files`` lists those this run wrote.
    """
    _target(name)
    try:
        import atheris  # noqa: F401 - only checked here; the child process runs it
    except ImportError as e:
        raise FuzzSetupError(
            "the Python fuzz targets need atheris: pip install -e '.[dev]' (or pip install atheris)"
        ) from e
    workdir = Path(workdir).resolve()
    target_dir = workdir / name
    (target_dir / "corpus").mkdir(parents=True, exist_ok=True)
    if not any((target_dir / "seeds").glob("*")):
        seed_corpus(name, target_dir / "seeds", workdir / _ARTIFACTS)
    before = set(_reproducers(target_dir))
    command = [sys.executable, "-m", "fuzz.python_targets", name]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if name == "infer_feed":
        env[_ARTIFACTS_ENV] = str(tiny_artifacts(workdir / _ARTIFACTS))
    start = time.monotonic()
    child = subprocess.run(
        [*command, *_libfuzzer_flags(name, seconds, target_dir, seed)],
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    elapsed = time.monotonic() - start
    log = child.stdout + child.stderr
    crash_files = sorted(set(_reproducers(target_dir)) - before)
    return FuzzResult(
        target=name,
        engine="atheris",
        seconds=elapsed,
        executions=_executions(log),
        crashed=child.returncode != 0,  # a finding, or a child that died: the log says which
        crash_files=crash_files,
        log=log,
    )


def _reproducers(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if _REPRODUCER.match(p.name)]


def _executions(log: str) -> int:
    """Inputs tried: libFuzzer's final stats, else the last ``#N`` progress line."""
    found = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    if found:
        return int(found[-1])
    progress = re.findall(r"^#(\d+)\s", log, re.MULTILINE)
    return int(progress[-1]) if progress else 0


def _instrument(atheris: Any, packages: tuple[str, ...]) -> None:
    """Add coverage to every loaded function of ``packages``, after the fact: the editable
    install's import hook hides our modules from ``atheris.instrument_imports``."""
    for obj in gc.get_objects():
        if (
            isinstance(obj, types.FunctionType)
            and isinstance(getattr(obj, "__module__", None), str)
            and obj.__module__.split(".")[0] in packages
        ):
            atheris.instrument_func(obj)


def _main(argv: list[str]) -> None:
    """Child entry: ``python -m fuzz.python_targets <target> [libFuzzer flags and corpora]``."""
    import atheris

    if len(argv) < 2 or argv[1] not in _CHECKS:
        sys.exit(f"usage: python -m fuzz.python_targets {{{','.join(_CHECKS)}}} [libFuzzer args]")
    check = _CHECKS[argv[1]]()
    _instrument(atheris, (*_INSTRUMENTED, *check.instrument))
    extra = {} if check.mutator is None else {"custom_mutator": check.mutator}
    atheris.Setup([argv[0], *argv[2:]], _guarded(check), **extra)
    atheris.Fuzz()


if __name__ == "__main__":
    _main(sys.argv)
