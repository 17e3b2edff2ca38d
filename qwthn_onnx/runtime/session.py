"""An onnxruntime session for a qwthn-export output, with the kernels when they can be had.

``QWTHNSession`` registers the ``ai.qwthn`` library; when the library is missing it warns and
runs the model's fallback functions in plain onnxruntime instead. It reads the model's own
metadata (cache geometry, tokenizer, base config), so a ``model.onnx`` alone is enough.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from qwthn_onnx.chat import Message, chat_prompt_ids
from qwthn_onnx.circuit.ir import CircuitError
from qwthn_onnx.runtime import export_dir
from qwthn_onnx.runtime.generation import GenerationConfig, GenerationError, generate_tokens
from qwthn_onnx.runtime.library import LibraryNotFoundError, session_options
from qwthn_onnx.runtime.metadata import ExportMetadata, MetadataError
from qwthn_onnx.runtime.signature import past_names
from qwthn_onnx.runtime.tokenizer import Tokenizer

if TYPE_CHECKING:
    from qwthn_onnx.qpu.backend import JobRecord, QuantumBackend

__all__ = ["FallbackWarning", "Generation", "QWTHNSession"]


class FallbackWarning(RuntimeWarning):
    """The kernel library could not be registered; the standard-op fallbacks run instead."""


def _check_in_background(directory: Path) -> Future[None]:
    """The export's weight data checked against its manifest in a thread (hashing releases
    the GIL, as onnxruntime does while it builds the session)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwthn-integrity")
    try:
        return pool.submit(export_dir.check_integrity, directory, True)
    finally:
        pool.shutdown(wait=False)


def _check_fallbacks(path: Path) -> None:
    """Without the kernels onnxruntime runs each node's fallback body, chosen by name: check
    that the bodies are the ones the nodes' attributes give (weights are not needed for it).
    Only this path parses the file with onnx: with the kernels, onnxruntime alone reads it."""
    import onnx

    from qwthn_onnx.ops.fallback import check_fallbacks

    proto = onnx.load(str(path), load_external_data=False)
    if proto.functions:  # none: exported with --no-fallback, which onnxruntime will name
        check_fallbacks(proto, where=str(path))


@dataclass
class Generation:
    """One prompt's result: the new text and tokens, and why it stopped."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (stop token or string) or "length"


class QWTHNSession:
    """Run an exported QWTHN causal LM.

    Args:
        path: ``model.onnx`` or an export directory.
        kernels: ``"auto"`` (register the library, else warn and use the fallbacks), ``True``
            (require the library) or ``False`` (plain onnxruntime, fallbacks only).
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
        quantum: run the ``QuantumLayer`` nodes on this backend
            (:mod:`qwthn_onnx.qpu`: a noisy device emulator, shots, Braket, IBM Runtime) instead
            of inside onnxruntime; each step's layers go out as batched jobs, recorded in
            ``session.session.jobs``. ``on_job`` is called with each job's record.
    """

    def __init__(
        self,
        path: str | Path,
        kernels: bool | str = "auto",
        threads: int | None = None,
        *,
        quantum: QuantumBackend | None = None,
        on_job: Callable[[JobRecord], None] | None = None,
    ) -> None:
        if kernels not in ("auto", True, False):
            raise ValueError(f"kernels must be 'auto', True or False, got {kernels!r}")
        # The directory's files are checked before onnxruntime parses them; only the weight
        # data (raw bytes, half a second of hashing for SmolLM2) is checked while it loads.
        self.path = export_dir.model_path(path, check=None)
        weights_checked = _check_in_background(self.path.parent) if Path(path).is_dir() else None
        options = ort.SessionOptions()
        self.kernels = False
        if kernels is not False:
            try:
                session_options(threads, options)
                self.kernels = True
            except LibraryNotFoundError as e:
                if kernels is True:
                    raise
                warnings.warn(f"{e} Running the fallback functions.", FallbackWarning, 2)
        if threads is not None:
            options.intra_op_num_threads = threads
        if not self.kernels:
            _check_fallbacks(self.path)
        try:
            if quantum is not None:
                from qwthn_onnx.qpu.offload import OffloadSession

                self.session = OffloadSession(self.path, quantum, options, on_job=on_job)
            else:
                self.session = ort.InferenceSession(
                    str(self.path), options, providers=["CPUExecutionProvider"]
                )
        except (CircuitError, ImportError):  # a backend that cannot take a layer, or is missing
            raise
        except Exception as e:  # onnxruntime raises its own exception types
            if weights_checked is not None:
                weights_checked.result()  # a damaged export: that error names the cause
            hint = "" if self.kernels else " (the model may have been exported with --no-fallback)"
            raise RuntimeError(f"onnxruntime cannot load {self.path}{hint}: {e}") from e
        if weights_checked is not None:
            weights_checked.result()
        # From onnxruntime, which has parsed the file already (a second parse of a big model
        # just for its metadata would cost seconds and its size in memory).
        self.metadata = ExportMetadata.from_props(
            self.session.get_modelmeta().custom_metadata_map, where=str(self.path)
        )
        self.output_names = [o.name for o in self.session.get_outputs()]
        cache_input = next(i for i in self.session.get_inputs() if i.name == past_names(0)[0])
        self.cache_dtype = np.float16 if cache_input.type == "tensor(float16)" else np.float32
        self.config: dict[str, Any] = json.loads(self.metadata.base_model["config_json"])
        self._tokenizer: Tokenizer | None = None
        self._lock = threading.Lock()

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One forward pass; returns every output by name."""
        return dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer stored in the model's metadata (loaded once)."""
        with self._lock:
            if self._tokenizer is None:
                files = self.metadata.tokenizer_files()
                if files is None:
                    raise MetadataError(f"{self.path} carries no tokenizer; pass token ids")
                self._tokenizer = Tokenizer(files)
            return self._tokenizer

    @property
    def max_length(self) -> int | None:
        for key in ("max_position_embeddings", "n_positions"):
            if isinstance(self.config.get(key), int):
                return self.config[key]
        return None

    def _special(self, name: str) -> int | None:
        value = self.config.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        return value if isinstance(value, int) else None

    def stop_config(self, config: GenerationConfig) -> GenerationConfig:
        """``config`` with the model's eos token(s) added to its stop tokens."""
        eos = self.config.get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
        stop = tuple(dict.fromkeys([*config.stop_token_ids, *eos_ids]))
        return GenerationConfig(**{**config.__dict__, "stop_token_ids": stop})

    def stream_ids(
        self, prompts: Sequence[Sequence[int]], config: GenerationConfig | None = None
    ) -> Iterator[list[int | None]]:
        """Token ids per step for a batch of prompts (None where a sequence has finished).

        The model's eos token always stops a sequence, besides ``config.stop_token_ids``.
        """
        config = self.stop_config(config or GenerationConfig())
        pad = self._special("pad_token_id")
        pad = pad if pad is not None else (self._special("eos_token_id") or 0)
        cache = self.metadata.cache
        return generate_tokens(
            self.run,
            prompts,
            config,
            num_layers=cache["num_layers"],
            num_kv_heads=cache["num_kv_heads"],
            head_dim=cache["head_dim"],
            cache_dtype=self.cache_dtype,
            pad_token_id=pad,
            max_length=self.max_length,
        )

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], config: GenerationConfig | None = None
    ) -> list[list[int]]:
        """New token ids per prompt (stop tokens included, as transformers returns them)."""
        out: list[list[int]] = [[] for _ in prompts]
        for step in self.stream_ids(prompts, config):
            for row, token in enumerate(step):
                if token is not None:
                    out[row].append(token)
        return out

    def encode(self, prompt: str) -> list[int]:
        """Token ids of ``prompt``, with the bos token first when the model has one."""
        tok = self.tokenizer
        ids = tok.encode(prompt, add_special_tokens=False)
        bos = self._special("bos_token_id")
        if bos is not None and tok.bos_token_id == bos and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def generate(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 32,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> Generation | list[Generation]:
        """Generate text for one prompt (a Generation) or several (a list, batched).

        ``stop`` strings end a sequence where they appear in the new text (they are cut off);
        the model's eos token always ends it.
        """
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not all(isinstance(p, str) for p in prompts):
            raise GenerationError("prompt must be a string or a list of strings")
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        results = self._generate([self.encode(p) for p in prompts], config, stop)
        return results[0] if single else results

    def chat(
        self,
        conversations: Sequence[Sequence[Message]],
        max_new_tokens: int = 32,
        **sampling: Any,
    ) -> list[Generation]:
        """The next assistant turn of each conversation (batched), laid out as training laid
        it out (:func:`qwthn_onnx.chat.chat_prompt_ids`: the chat template, else the plain
        ``Role: content`` layout). ``sampling``: the keyword arguments of :meth:`generate`."""
        stop = sampling.pop("stop", ())
        config = GenerationConfig(max_new_tokens=max_new_tokens, **sampling)
        encoded = [chat_prompt_ids(list(turns), self.tokenizer) for turns in conversations]
        return self._generate(encoded, config, stop)

    def _generate(
        self, encoded: list[list[int]], config: GenerationConfig, stop: Sequence[str]
    ) -> list[Generation]:
        stops = set(self.stop_config(config).stop_token_ids)
        new: list[list[int]] = [[] for _ in encoded]
        finished: list[str | None] = [None] * len(encoded)
        for step in self.stream_ids(encoded, config):
            for row, token in enumerate(step):
                if token is None or finished[row]:
                    continue
                new[row].append(token)
                if token in stops or any(s and s in self._text(new[row], stops) for s in stop):
                    finished[row] = "stop"
            if all(finished):
                break
        results = []
        for row, ids in enumerate(new):
            text = self._text(ids, stops)
            for s in stop:
                if s and s in text:
                    text = text[: text.index(s)]
            results.append(Generation(text, ids, len(encoded[row]), finished[row] or "length"))
        return results

    def _text(self, ids: list[int], stops: set[int]) -> str:
        return self.tokenizer.decode([t for t in ids if t not in stops], skip_special_tokens=True)
