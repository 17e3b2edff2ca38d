"""Open Inference Protocol v2 (KServe v2) REST payloads, and tensors to and from their JSON form.

The models follow the specification's JSON objects field for field
(https://github.com/kserve/open-inference-protocol), so they double as the OpenAPI schema of
the server. Tensor data arrives row-major, flat or nested; it leaves flat.

``GenerateRequest`` and ``GenerateResponse`` are the bodies of the text-generation endpoints
(named after Triton's generate extension; the fields are ours: the prompt and
``GenerationConfig``'s sampling parameters, with the ``QWTHNSession.generate`` defaults).
The same endpoints also take Triton's own body, ``TritonGenerateRequest`` (``text_input`` and
sampling ``parameters`` as Triton's vLLM backend reads them), and answer it in Triton's shape,
``TritonGenerateResponse``. ``ModelConfig`` is Triton's model-configuration extension.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import from_json

from qwthn_onnx.runtime.generation import GenerationConfig
from serving.errors import BadRequestError, ServingError, describe_validation_error

__all__ = [
    "NUMPY_DTYPES",
    "ErrorResponse",
    "GenerateRequest",
    "GenerateResponse",
    "InferenceRequest",
    "InferenceResponse",
    "MetadataTensor",
    "ModelConfig",
    "ModelMetadata",
    "ModelReady",
    "Parameters",
    "QasmProgram",
    "QasmResponse",
    "RepositoryModel",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerLive",
    "ServerMetadata",
    "ServerReady",
    "TritonGenerateRequest",
    "TritonGenerateResponse",
    "attach_binary_data",
    "config_tensor",
    "decode_tensor",
    "encode_response",
    "parse_generate_request",
    "sampling_config",
    "wants_binary",
]

# The specification's tensor data types that have a numpy equivalent. BYTES (strings) and
# Triton's BF16 have none; no exported QWTHN model has such an input.
NUMPY_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dtype)
    for name, dtype in {
        "BOOL": np.bool_,
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "FP16": np.float16,
        "FP32": np.float32,
        "FP64": np.float64,
    }.items()
}
DATATYPES = (*NUMPY_DTYPES, "BYTES")


def _scalar(value: Any) -> Any:
    if not isinstance(value, str | int | float | bool):
        raise ValueError("a parameter value must be a string, number or boolean")
    return value


# "$parameter = $string : $string | $number | $boolean" in the specification.
Parameters = dict[
    str,
    Annotated[
        Any,
        AfterValidator(_scalar),
        WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}),
    ],
]


class RequestInput(BaseModel):
    """``$request_input``: one input tensor of an inference request: its elements in ``data``,
    or (binary tensor data extension) ``parameters.binary_data_size`` bytes after the JSON."""

    name: StrictStr
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: StrictStr
    parameters: Parameters | None = None
    data: list[Any] | None = Field(None, description="row-major elements, flat or nested")
    _binary: bytes | None = PrivateAttr(None)  # set by attach_binary_data

    @property
    def binary_data_size(self) -> Any:
        return (self.parameters or {}).get("binary_data_size")


class RequestOutput(BaseModel):
    """``$request_output``: an output the client wants back (``parameters.binary_data``: as
    raw bytes after the JSON of the answer)."""

    name: StrictStr
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    """``$inference_request``. Without ``outputs`` every output of the model comes back."""

    id: StrictStr | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """``$response_output``: one output tensor, its data flat in row-major order."""

    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any]


class InferenceResponse(BaseModel):
    """``$inference_response``."""

    model_name: str
    model_version: str | None = None
    id: str
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    """``$metadata_tensor``; variable dimensions are -1."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """``$metadata_model_response``, plus ``qwthn``: what the adapters are (nested, so kept out
    of ``parameters``, whose values the specification limits to strings, numbers and booleans)."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: Parameters
    qwthn: dict[str, Any]


class ServerMetadata(BaseModel):
    """``$metadata_server_response``."""

    name: str
    version: str
    extensions: list[str]


class RepositoryModel(BaseModel):
    """One entry of the repository index (Triton's model-repository extension)."""

    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    generation: bool = Field(description="whether the version takes /generate requests")


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    """``$ready_model_response``."""

    name: str
    ready: bool


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: str


class QasmProgram(BaseModel):
    """One adapted layer's OpenQASM 3 program (see ``qasm/index.json`` of an export)."""

    file: str
    program: str
    n_qubits: int
    inputs: list[str]
    observables: list[str]
    weights: dict[str, float] | None = None


class QasmResponse(BaseModel):
    model_name: str
    model_version: str
    reading: str
    layers: dict[str, QasmProgram]


# Stop strings are checked after every token on the scheduler's thread, which all requests to a
# model version share: bounded, so that no request can slow down the others' tokens.
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256


class GenerateRequest(BaseModel):
    """The body of ``generate`` and ``generate_stream``. Strict: a misspelt field or a string for
    a number is a 400, not a silently used default."""

    model_config = ConfigDict(strict=True, extra="forbid")
    tokens_param: ClassVar[str] = "max_new_tokens"  # for messages about the token limit

    prompt: str
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = Field(0, description="0: no top-k filter")
    top_p: float = Field(1.0, description="1: no nucleus filter")
    seed: Annotated[int, Field(ge=0)] | None = Field(None, description="sampling seed")
    stop: list[Annotated[str, Field(max_length=MAX_STOP_LENGTH)]] = Field(
        [],
        max_length=MAX_STOP_STRINGS,
        description="strings that end the text (they are cut off)",
    )
    id: str | None = None

    @property
    def stop_strings(self) -> list[str]:
        return self.stop

    @property
    def token_limit_given(self) -> bool:
        """Whether the client set ``max_new_tokens`` (else the default, capped by the server)."""
        return "max_new_tokens" in self.model_fields_set

    def generation_config(self) -> GenerationConfig:
        """The sampling settings this request asks for (not yet validated)."""
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
        )


class GenerateResponse(BaseModel):
    """The answer of ``generate``, and the last event of ``generate_stream``."""

    model_name: str
    model_version: str
    id: str
    text: str
    token_ids: list[int] = Field(description="new tokens, a stop token or string included")
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"] = Field(
        description="stop: a stop token or string; length: max_new_tokens or the context"
    )


StopString = Annotated[str, Field(max_length=MAX_STOP_LENGTH)]
StopStrings = Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)]


def sampling_config(
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int = 0,
    seed: int | None = None,
) -> GenerationConfig:
    """Sampling settings as OpenAI and vLLM (and so Triton's vLLM backend) read them:
    temperature 0 is greedy decoding, any other samples; top_k 0 or -1 is no top-k filter.

    Raises BadRequestError, naming the field, for a negative temperature or seed.
    """
    if temperature < 0:
        raise BadRequestError(
            f"temperature must be >= 0 (0: greedy), got {temperature}", param="temperature"
        )
    if seed is not None and seed < 0:
        raise BadRequestError(f"seed must be >= 0, got {seed}", param="seed")
    return GenerationConfig(
        max_new_tokens=max_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else 1.0,
        top_k=0 if top_k == -1 else top_k,
        top_p=top_p,
        seed=seed,
    )


class TritonParameters(BaseModel):
    """The sampling ``parameters`` of Triton's generate body, named and read as Triton's vLLM
    backend reads them: temperature 0 is greedy (the default, 1, samples), top_k 0 or -1 is no
    filter, ``stop`` a string or a list. ``stream`` is taken and ignored (the endpoint decides);
    ``exclude_input_in_output`` false (the default) starts ``text_output`` with the prompt."""

    model_config = ConfigDict(strict=True, extra="forbid")

    max_tokens: Annotated[int, Field(ge=0)] = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: StopStrings | StopString = []
    stream: bool | None = None
    exclude_input_in_output: bool = False


class TritonGenerateRequest(TritonParameters):
    """Triton's generate-extension body: ``{"text_input": ..., "parameters": {...}}``; the
    parameters may also stand at the top level (as Triton's TensorRT-LLM models take them), but
    not both."""

    tokens_param: ClassVar[str] = "max_tokens"

    text_input: str
    parameters: TritonParameters | None = None

    @property
    def sampling(self) -> TritonParameters:
        """The sampling parameters, wherever the request put them."""
        if self.parameters is None:
            return self
        top = self.model_fields_set - {"text_input", "parameters"}
        if top:
            raise BadRequestError(
                f"give the sampling parameters in 'parameters' or at the top level, not both "
                f"(top level: {', '.join(sorted(top))})",
                param=sorted(top)[0],
            )
        return self.parameters

    @property
    def prompt(self) -> str:
        return self.text_input

    @property
    def token_limit_given(self) -> bool:
        """Whether the client set ``max_tokens`` (else the default, capped by the server)."""
        return "max_tokens" in self.sampling.model_fields_set

    @property
    def stop_strings(self) -> list[str]:
        stop = self.sampling.stop
        return [stop] if isinstance(stop, str) else stop

    def generation_config(self) -> GenerationConfig:
        """The sampling settings this request asks for (not yet validated)."""
        p = self.sampling
        return sampling_config(
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            seed=p.seed,
        )


class TritonGenerateResponse(BaseModel):
    """Triton's generate answer (and each generate_stream event, with the new text)."""

    model_name: str
    model_version: str
    text_output: str


def parse_generate_request(body: bytes) -> GenerateRequest | TritonGenerateRequest:
    """Our generate body, or Triton's when it has ``text_input``; BadRequestError naming the
    problem."""
    try:
        data = from_json(body)
    except ValueError as e:
        raise BadRequestError(f"request body is not valid JSON: {e}") from e
    triton = isinstance(data, dict) and "text_input" in data
    kind = TritonGenerateRequest if triton else GenerateRequest
    try:
        return kind.model_validate_json(body)
    except ValidationError as e:
        message, param = describe_validation_error(e, "generate request")
        raise BadRequestError(message, param=param) from e


class ModelOutputConfig(BaseModel):
    """An output of Triton's ModelConfig (``dims`` without the batch dimension when
    ``max_batch_size`` > 0; -1: variable)."""

    name: str
    data_type: str
    dims: list[int]


class ModelInputConfig(ModelOutputConfig):
    """An input of Triton's ModelConfig; ``optional``: the server fills it when left out."""

    format: str = "FORMAT_NONE"
    optional: bool = False


class ModelConfig(BaseModel):
    """Triton's model configuration (``GET .../config``), the JSON form of ``config.pbtxt``."""

    name: str
    platform: str
    backend: str
    version_policy: dict[str, Any]
    max_batch_size: int
    input: list[ModelInputConfig]
    output: list[ModelOutputConfig]
    dynamic_batching: dict[str, Any] | None = None
    instance_group: list[dict[str, Any]]
    default_model_filename: str
    parameters: dict[str, dict[str, str]]


def config_tensor(
    name: str, datatype: str, shape: list[int], batched: bool, optional: bool | None = None
) -> ModelInputConfig | ModelOutputConfig:
    """An input (``optional`` given) or output of Triton's ModelConfig from its protocol
    datatype and shape (-1: variable): ``TYPE_<datatype>`` (``TYPE_STRING`` for BYTES), the
    batch dimension left out when ``batched``."""
    data_type = "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
    dims = shape[1:] if batched else shape
    if optional is None:
        return ModelOutputConfig(name=name, data_type=data_type, dims=dims)
    return ModelInputConfig(name=name, data_type=data_type, dims=dims, optional=optional)


def attach_binary_data(request: InferenceRequest, payload: bytes) -> None:
    """Hand each input that has ``binary_data_size`` its bytes of ``payload`` (what follows
    the JSON, in input order: the binary tensor data extension); BadRequestError when sizes and
    payload disagree."""
    offset = 0
    for tensor in request.inputs:
        size = tensor.binary_data_size
        if size is None:
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequestError(
                f"input '{tensor.name}': binary_data_size must be an int >= 0, got {size!r}"
            )
        if tensor.data is not None:
            raise BadRequestError(f"input '{tensor.name}' has both 'data' and binary_data_size")
        if offset + size > len(payload):
            raise BadRequestError(
                f"input '{tensor.name}': binary_data_size {size} goes past the end of the "
                f"{len(payload)} bytes after the JSON"
            )
        tensor._binary = payload[offset : offset + size]
        offset += size
    if offset != len(payload):
        raise BadRequestError(
            f"{len(payload) - offset} bytes after the JSON belong to no input (the inputs' "
            f"binary_data_size add up to {offset})"
        )


def wants_binary(request: InferenceRequest, name: str) -> bool:
    """Whether output ``name`` goes back as raw bytes: its own ``binary_data`` parameter, else
    the request's ``binary_data_output``."""
    for output in request.outputs or []:
        if output.name == name and output.parameters and "binary_data" in output.parameters:
            return output.parameters["binary_data"] is True
    return (request.parameters or {}).get("binary_data_output") is True


def decode_tensor(tensor: RequestInput, datatype: str) -> np.ndarray:
    """The array of a request input that the model declares as ``datatype``.

    Raises BadRequestError naming the input for a datatype other than the model's, data that is
    not a regular array of the right kind of number, or a shape that does not hold the data.
    """
    name = tensor.name
    if tensor.datatype not in DATATYPES:
        raise BadRequestError(
            f"input '{name}': unknown datatype '{tensor.datatype}' (one of {', '.join(DATATYPES)})"
        )
    if tensor.datatype != datatype:
        raise BadRequestError(
            f"input '{name}': the model takes datatype {datatype}, the request gave "
            f"{tensor.datatype}"
        )
    if datatype not in NUMPY_DTYPES:
        raise BadRequestError(f"input '{name}': datatype {datatype} is not supported")
    target = NUMPY_DTYPES[datatype]
    if math.prod(d for d in tensor.shape if d) * target.itemsize >= 2**63:
        # numpy refuses such a shape even with a zero dim: no array can have it
        raise BadRequestError(
            f"input '{name}': shape {tensor.shape} of {datatype} is too large for an array (its "
            "non-zero dims multiply past 2^63 bytes)"
        )
    expected = math.prod(tensor.shape)
    if tensor._binary is not None:
        if len(tensor._binary) != expected * target.itemsize:
            raise BadRequestError(
                f"input '{name}': shape {tensor.shape} of {datatype} takes "
                f"{expected * target.itemsize} bytes, binary_data_size is {len(tensor._binary)}"
            )
        array = np.frombuffer(tensor._binary, target.newbyteorder("<")).astype(target)
        if datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
            raise BadRequestError(f"input '{name}' (BOOL): binary data holds bytes other than 0/1")
        _check_finite(name, datatype, array)
        return array.reshape(tensor.shape)
    if tensor.data is None:
        raise BadRequestError(
            f"input '{name}' has no data: give 'data', or 'binary_data_size' in its parameters "
            f"with the bytes after the JSON (Inference-Header-Content-Length)"
        )
    try:
        array = np.asarray(tensor.data)
    except (ValueError, OverflowError) as e:
        raise BadRequestError(f"input '{name}': data is not a regular (nested) list: {e}") from e
    if array.size != expected:
        raise BadRequestError(
            f"input '{name}': shape {tensor.shape} holds {expected} elements but data has "
            f"{array.size}"
        )
    if array.size:
        _check_kind(name, datatype, array)
    with np.errstate(over="ignore"):  # a number beyond the float type becomes inf: refused below
        converted = array.astype(target)
    _check_finite(name, datatype, converted)
    if target.kind in "iu" and not np.array_equal(converted, array):
        info = np.iinfo(target)
        raise BadRequestError(
            f"input '{name}': values out of the range of {datatype} [{info.min}, {info.max}]"
        )
    return converted.reshape(tensor.shape)


def _check_finite(name: str, datatype: str, array: np.ndarray) -> None:
    """Floating inputs must be finite: a NaN, an infinity or a number beyond the type's range
    would flow into outputs that JSON cannot carry (a 500), or into silently wrong answers."""
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        largest = float(np.finfo(array.dtype).max)
        raise BadRequestError(
            f"input '{name}' ({datatype}): values must be finite numbers within ±{largest:.4g}; "
            "the data holds NaN, infinity or a number too large for the type"
        )


def _check_kind(name: str, datatype: str, array: np.ndarray) -> None:
    kind = array.dtype.kind
    if datatype == "BOOL":
        ok, wanted = kind == "b", "booleans"
    elif datatype.startswith(("INT", "UINT")):
        ok, wanted = kind in "iu", "integers"
    else:
        ok, wanted = kind in "iuf", "numbers"
    if not ok:
        found = {"b": "booleans", "f": "non-integer numbers", "U": "strings"}.get(
            kind, "mixed or non-numeric values"
        )
        raise BadRequestError(f"input '{name}' ({datatype}) takes {wanted}; data holds {found}")


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: dict[str, tuple[str, np.ndarray]],
    binary: Collection[str] = (),
) -> tuple[bytes, int | None]:
    """The ``$inference_response`` of ``outputs`` (name -> (datatype, array)): its bytes, and
    the length of its JSON part when outputs in ``binary`` follow it as raw little-endian bytes
    (the binary tensor data extension; the answer's Inference-Header-Content-Length), else None.

    orjson writes the arrays directly (each float in its shortest form for its own precision,
    which reads back to the same value): 25x faster than ``json`` over ``tolist()``, which is
    most of a small request's cost. JSON has no NaN or infinity (orjson would write ``null``),
    so an output holding one in JSON is a server error naming it rather than a wrong answer.
    """
    bad = [
        n
        for n, (_, a) in outputs.items()
        if n not in binary and a.dtype.kind == "f" and not np.isfinite(a).all()
    ]
    if bad:
        raise ServingError(
            f"output {', '.join(bad)} holds NaN or infinity, which JSON cannot carry"
        )
    raw: list[bytes] = []
    described = []
    for name, (datatype, array) in outputs.items():
        output: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in binary:
            data = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
            output["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            output["data"] = np.ascontiguousarray(array).ravel()
        described.append(output)
    body = {
        "model_name": model_name,
        "model_version": model_version,
        "id": request_id,
        "outputs": described,
    }
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return (header + b"".join(raw), len(header)) if raw else (header, None)
