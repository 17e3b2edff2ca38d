"""One served model version: its tensors in Open Inference Protocol terms, the checks a request
must pass before it reaches onnxruntime, and the inputs the server fills in.

Exports are causal LMs with a KV cache (see ``qwthn_onnx.runtime.signature``). A client that
only wants logits should not have to build an empty cache, a mask and positions, so the server
fills what is missing: an empty cache (past length 0), an all-ones mask, and positions from the
mask (0..S-1 for a prefill), exactly as ``QWTHNSession.generate`` would.

For text generation a version also encodes prompts and decodes new tokens with the export's
tokenizer (:class:`qwthn_onnx.runtime.tokenizer.Tokenizer`). One instance serves every thread:
nothing changes it after loading, and the Rust tokenizer's encode and decode only read it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qwthn_onnx.chat import Message, chat_prompt_ids
from qwthn_onnx.runtime import export_dir
from qwthn_onnx.runtime.session import QWTHNSession
from qwthn_onnx.runtime.signature import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    empty_cache,
    past_names,
    position_ids,
    present_names,
)
from qwthn_onnx.runtime.tokenizer import Tokenizer, TokenizerError
from serving.errors import BadRequestError, NotFoundError, ServingError
from serving.protocol import NUMPY_DTYPES, RequestInput, RequestOutput, decode_tensor

__all__ = ["PLATFORM", "ServedModel", "TensorSpec"]

PLATFORM = "onnxruntime_onnx"  # Triton's name for ONNX models run by onnxruntime
_ORT_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}


@dataclass(frozen=True)
class TensorSpec:
    """An input or output as onnxruntime declares it: fixed dims are ints, named variable dims
    are their names (the same name must have the same size across a request), unnamed ones None."""

    name: str
    datatype: str
    dims: tuple[int | str | None, ...]

    @classmethod
    def from_ort(cls, arg: Any) -> TensorSpec:
        dims = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
        return cls(arg.name, _ORT_DATATYPES.get(arg.type, arg.type), dims)

    @property
    def shape(self) -> list[int]:
        """The shape as the protocol writes it: -1 for a variable dimension."""
        return [d if isinstance(d, int) else -1 for d in self.dims]

    def check(self, array: np.ndarray) -> None:
        """Raise BadRequestError when ``array``'s rank or fixed dims do not fit."""
        if array.ndim != len(self.dims) or any(
            isinstance(d, int) and d != n for d, n in zip(self.dims, array.shape, strict=False)
        ):
            raise BadRequestError(
                f"input '{self.name}': shape {list(array.shape)} does not fit the model's "
                f"{self.shape} (-1: any size)"
            )


class ServedModel:
    """A loaded export directory, as one version of a named model."""

    def __init__(self, name: str, version: int, directory: Path, session: QWTHNSession) -> None:
        self.name = name
        self.version = version
        self.directory = directory
        self.session = session
        self.inputs = {a.name: TensorSpec.from_ort(a) for a in session.session.get_inputs()}
        self.outputs = {a.name: TensorSpec.from_ort(a) for a in session.session.get_outputs()}
        cache = session.metadata.cache
        self.past = [n for layer in range(cache["num_layers"]) for n in past_names(layer)]
        self.optional_inputs = [ATTENTION_MASK, POSITION_IDS, *self.past]
        vocab = self.outputs[LOGITS].dims[-1] if LOGITS in self.outputs else None
        self.vocab_size = vocab if isinstance(vocab, int) else None
        # Requests merge on dim 0 only when every tensor is batch-major along one named dim.
        first = {spec.dims[0] if spec.dims else None for spec in self._specs()}
        self.batch_major = len(first) == 1 and isinstance(next(iter(first)), str)

    def _specs(self) -> list[TensorSpec]:
        return [*self.inputs.values(), *self.outputs.values()]

    @property
    def label(self) -> str:
        return f"model '{self.name}' version {self.version}"

    def prepare(self, inputs: Sequence[RequestInput]) -> dict[str, np.ndarray]:
        """The onnxruntime feed of a request's inputs, checked and completed.

        Raises BadRequestError naming the problem: an unknown or repeated input, a wrong
        datatype, a shape that does not hold its data or does not fit the model, sizes that
        disagree between inputs, a missing required input, or token ids outside the vocabulary.
        """
        feed: dict[str, np.ndarray] = {}
        for tensor in inputs:
            spec = self.inputs.get(tensor.name)
            if spec is None:
                raise BadRequestError(
                    f"{self.label} has no input '{tensor.name}' (inputs: {', '.join(self.inputs)})"
                )
            if tensor.name in feed:
                raise BadRequestError(f"input '{tensor.name}' is given twice")
            feed[tensor.name] = array = decode_tensor(tensor, spec.datatype)
            spec.check(array)
        self._check_required(feed)
        self._check_sizes(feed)
        self._fill_defaults(feed)
        ids = feed[INPUT_IDS]
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            raise BadRequestError(f"input '{INPUT_IDS}' needs at least one row and one token")
        if self.vocab_size is not None and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise BadRequestError(
                f"input '{INPUT_IDS}': token ids must be in [0, {self.vocab_size}); got "
                f"{int(ids.min())}..{int(ids.max())}"
            )
        return {name: feed[name] for name in self.inputs}

    def _check_required(self, feed: dict[str, np.ndarray]) -> None:
        missing = [n for n in self.inputs if n not in feed and n not in self.optional_inputs]
        if missing:
            raise BadRequestError(
                f"{self.label}: missing required input {', '.join(map(repr, missing))} "
                f"(optional, filled by the server: {ATTENTION_MASK}, {POSITION_IDS}, "
                f"past_key_values.*)"
            )
        given = [n for n in self.past if n in feed]
        if given and len(given) != len(self.past):
            absent = [n for n in self.past if n not in feed]
            raise BadRequestError(
                f"the KV cache is all or nothing: {len(given)} of {len(self.past)} "
                f"past_key_values inputs given, missing {', '.join(absent)}"
            )

    def _check_sizes(self, feed: dict[str, np.ndarray]) -> None:
        seen: dict[str, tuple[int, str]] = {}
        for name, array in feed.items():
            for dim, size in zip(self.inputs[name].dims, array.shape, strict=True):
                if not isinstance(dim, str):
                    continue
                first = seen.setdefault(dim, (size, name))
                if first[0] != size:
                    raise BadRequestError(
                        f"dimension '{dim}' is {first[0]} in input '{first[1]}' but {size} in "
                        f"input '{name}'"
                    )
        if ATTENTION_MASK in feed:
            past = feed[self.past[0]].shape[2] if self.past[0] in feed else 0
            total = past + feed[INPUT_IDS].shape[1]
            if feed[ATTENTION_MASK].shape[1] != total:
                raise BadRequestError(
                    f"input '{ATTENTION_MASK}' must cover past and new tokens: {total} columns "
                    f"(past {past} + sequence {feed[INPUT_IDS].shape[1]}), got "
                    f"{feed[ATTENTION_MASK].shape[1]}"
                )

    def _fill_defaults(self, feed: dict[str, np.ndarray]) -> None:
        batch, seq = feed[INPUT_IDS].shape
        if self.past[0] not in feed:
            dtype = NUMPY_DTYPES[self.inputs[self.past[0]].datatype]
            feed.update(empty_cache(self.session.metadata.cache, batch, dtype))
        past = feed[self.past[0]].shape[2]
        if ATTENTION_MASK not in feed:
            dtype = NUMPY_DTYPES[self.inputs[ATTENTION_MASK].datatype]
            feed[ATTENTION_MASK] = np.ones((batch, past + seq), dtype)
        if POSITION_IDS not in feed:
            dtype = NUMPY_DTYPES[self.inputs[POSITION_IDS].datatype]
            feed[POSITION_IDS] = position_ids(feed[ATTENTION_MASK], seq).astype(dtype)

    def select_outputs(self, requested: Sequence[RequestOutput] | None) -> list[str]:
        """Names of the outputs to return: all of them, or the requested ones in order."""
        if not requested:
            return list(self.outputs)
        names = list(dict.fromkeys(o.name for o in requested))
        unknown = [n for n in names if n not in self.outputs]
        if unknown:
            raise BadRequestError(
                f"{self.label} has no output {', '.join(map(repr, unknown))} "
                f"(outputs: {', '.join(self.outputs)})"
            )
        return names

    def run(self, feed: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """One onnxruntime call (thread-safe; the GIL is released while it runs)."""
        names = list(outputs)
        return dict(zip(names, self.session.session.run(names, feed), strict=True))

    # Text generation.

    @property
    def generation_problem(self) -> str | None:
        """Why this version cannot generate text (for a 400), or None when it can."""
        layers = range(self.session.metadata.cache["num_layers"])
        needed_inputs = [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *self.past]
        needed_outputs = [LOGITS, *(n for layer in layers for n in present_names(layer))]
        missing = [n for n in needed_inputs if n not in self.inputs]
        missing += [n for n in needed_outputs if n not in self.outputs]
        if missing:
            return (
                f"{self.label} is not a causal LM with a KV cache (it lacks "
                f"{', '.join(map(repr, missing))}); text generation needs one"
            )
        if self.session.metadata.tokenizer is None:
            return (
                f"{self.label} carries no tokenizer (its export has none), so it cannot encode "
                f"a prompt; send token ids to /infer instead"
            )
        try:
            self.session.tokenizer  # noqa: B018 - loaded once; its errors say what is wrong
        except TokenizerError as e:
            return f"{self.label}: {e}"
        return None

    def load_tokenizer(self) -> Tokenizer:
        """Load the tokenizer now, not in a first request. One instance serves every thread:
        it is never changed after loading, and the Rust tokenizer's encode and decode only
        read it."""
        return self.session.tokenizer

    def encode(self, prompt: str) -> list[int]:
        """The prompt's token ids, bos first, as ``QWTHNSession.encode`` gives them."""
        return self.session.encode(prompt)

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """The prompt of the next assistant turn, laid out as training laid it out
        (:func:`qwthn_onnx.chat.chat_prompt_ids`); DataError for a conversation it refuses."""
        return chat_prompt_ids(list(messages), self.session.tokenizer)

    def decode(self, ids: Sequence[int], skip: Collection[int]) -> str:
        """The text of generated ``ids`` without the ``skip`` (stop) tokens, decoded as
        ``QWTHNSession.generate`` does."""
        kept = [t for t in ids if t not in skip]
        return self.session.tokenizer.decode(kept, skip_special_tokens=True)

    def metadata(self, versions: Sequence[int], extra: dict[str, Any]) -> dict[str, Any]:
        """The ``$metadata_model_response`` of this version (``extra`` joins ``parameters``)."""
        meta = self.session.metadata
        layers = list(meta.circuits)
        return {
            "name": self.name,
            "versions": [str(v) for v in versions],
            "platform": PLATFORM,
            "inputs": [_tensor(s) for s in self.inputs.values()],
            "outputs": [_tensor(s) for s in self.outputs.values()],
            "parameters": {
                "architecture": meta.base_model["architecture"],
                "dtype": meta.base_model["dtype"],
                "adapter_type": str(meta.adapter_config.get("adapter_type", "QWTHN")),
                "adapted_layers": len(layers),
                "kernels": self.session.kernels,
                "qasm": (self.directory / export_dir.QASM_INDEX).is_file(),
                **extra,
            },
            "qwthn": {
                "adapter_config": meta.adapter_config,
                "adapted_layers": layers,
                "circuits": meta.circuits,
                "cache": meta.cache,
                "kernels": self.session.kernels,
                "optional_inputs": self.optional_inputs,
            },
        }

    def qasm(self) -> dict[str, Any]:
        """The export's OpenQASM 3 programs by layer, from ``qasm/index.json`` and its files."""
        try:
            index = export_dir.read_qasm_programs(self.directory)
        except ValueError as e:
            raise ServingError(f"{self.label}: {e}") from e
        if index is None:
            raise NotFoundError(
                f"{self.label} has no OpenQASM programs (qasm/index.json is missing: exported with "
                f"--no-qasm or by an older qwthn-export; export it again to get them)"
            )
        return {
            "model_name": self.name,
            "model_version": str(self.version),
            "reading": index.get("reading", ""),
            "layers": index["layers"],
        }


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": spec.shape}
