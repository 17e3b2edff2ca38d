"""Check an exported model against PyTorch on every export, in a way that holds at any scale.

An elementwise ``|onnx - torch| <= atol + rtol * |torch|`` test fails real models on float32
noise alone: a 30-layer LM differs from itself by ~1e-3 in its logits when the summation order
changes, and near-zero logits make any relative bound meaningless. What a user needs to know is
whether the file computes the same model, so verification compares what the model is used for:

- **Inputs are real:** a few prompts tokenised by the model's own tokenizer (one through its chat
  template when it has one), batched with left padding as generation does, then greedy decode
  steps whose past is the real KV cache PyTorch produced — not random ids and random caches.
- **Replay:** every PyTorch step's exact inputs are fed to onnxruntime (with our kernels, and with
  the fallback functions only). Logits and every ``present`` tensor must lie within
  ``atol + rtol * scale``, where ``scale`` is the largest magnitude of that output in PyTorch:
  errors are judged against the output's own size, on the positions the mask keeps.
- **Next tokens:** how many positions pick PyTorch's token is reported. A flip needs PyTorch's top
  two logits closer than twice the logits error, so where the logits hold their bound only
  near-ties can flip. Log-probability error and the KL divergence are reported too.
- **Generation:** each runtime then generates greedily from the same prompts with its own cache;
  the tokens must equal PyTorch's, unless they part at a near-tie.

PyTorch runs first and its outputs are kept (a few MB), so the PyTorch model can be freed before
any onnxruntime session is built, one at a time: verification never holds two copies of the
weights. ``verify.json`` records the prompts, every step, each metric and its bound.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from exporters.causal_lm import CacheGeometry, CausalLMWithCache
from qwthn_onnx.runtime.generation import GenerationConfig, generate_tokens
from qwthn_onnx.runtime.library import session_options
from qwthn_onnx.runtime.signature import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    empty_cache,
    position_ids,
)

__all__ = [
    "CRITERIA",
    "PROMPTS",
    "GenerationCheck",
    "OutputCheck",
    "Reference",
    "VerifyReport",
    "release_memory",
    "torch_reference",
    "verify_export",
    "verify_reference",
]

# Plain prompts (any tokenizer encodes them); a chat prompt is added when there is a template.
PROMPTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog. Then it",
    "Q: What is 23+58? A:",
    "def add(a, b):\n    return",
)
CHAT_PROMPT = "Hello! In one sentence, what can you do?"
MAX_PROMPT_TOKENS = 48
NEW_TOKENS = 8  # greedy steps per prompt, in the replay and in each runtime's own generation
CHUNK = 3  # tokens fed at once with a past (the chunked-prefill case)
TOP_K_LOGPROB = 10  # log-probability errors are measured on PyTorch's 10 most likely tokens
CRITERIA = {
    "logits": "max |onnx - torch| over kept positions <= atol + rtol * max |torch logits|",
    "present": "per present tensor: max |onnx - torch| over kept positions <= atol + rtol * "
    "max |torch present|",
    "next_token": "reported, not gated: kept positions whose argmax differs from torch's "
    "(flips); a flip needs torch's top-2 margin < 2 * the logits error, so the logits bound "
    "decides",
    "generation": "greedy tokens equal torch's, or part only where torch's top-2 margin <= 2 * "
    "the largest logit error seen in the replay (a near-tie)",
    "reported": "logprob_error: max |log p_onnx - log p_torch| on torch's top-10 tokens; "
    "kl: max KL(p_torch || p_onnx) per position, in nats (information, not gated)",
}


def _ratio(error: float, bound: float) -> float:
    """How far ``error`` is into its ``bound`` (a zero bound allows only a zero error)."""
    if bound > 0:
        return error / bound
    return 0.0 if error == 0 else float("inf")


@dataclass
class Step:
    """One forward pass PyTorch ran: its exact inputs and outputs (numpy, by ONNX name)."""

    name: str  # e.g. "prefill batch=4 sequence=19 past=0"
    feed: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]


@dataclass
class Reference:
    """Everything verification needs from PyTorch, so the PyTorch model can be freed."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    steps: list[Step]
    generated: list[list[int]]  # per prompt, PyTorch's greedy tokens
    generation_logits: list[np.ndarray]  # per generation step, PyTorch's last logits [batch, V]
    geometry: CacheGeometry
    cache_dtype: np.dtype
    pad_token_id: int


@dataclass
class OutputCheck:
    runtime: str  # "kernels" or "fallback"
    case: str
    output: str  # "logits" or "present" (the worst of all present tensors)
    max_abs_error: float
    scale: float
    bound: float
    passed: bool
    positions: int = 0  # logits: kept positions compared
    flips: int = 0  # logits: positions whose argmax differs from PyTorch's
    logprob_error: float = 0.0
    kl: float = 0.0


@dataclass
class GenerationCheck:
    runtime: str
    prompt: int
    expected: list[int]
    tokens: list[int]
    diverged_at: int | None  # first differing step, or None
    near_tie: bool  # the divergence is at a near-tie
    passed: bool


@dataclass
class VerifyReport:
    atol: float
    rtol: float
    runtimes: list[str]
    prompts: list[str] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    checks: list[OutputCheck] = field(default_factory=list)
    generation: list[GenerationCheck] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and all(g.passed for g in self.generation)

    def failures(self) -> list[str]:
        """One line per failed check, worst first for outputs."""
        lines = []
        for c in sorted(self.checks, key=lambda c: -_ratio(c.max_abs_error, c.bound)):
            if c.passed:
                continue
            lines.append(
                f"output {c.output} ({c.runtime}, {c.case}) differs from PyTorch by "
                f"{c.max_abs_error:.3g}, above the bound {c.bound:.3g} (atol {self.atol} + "
                f"rtol {self.rtol} x scale {c.scale:.3g})"
            )
        for g in self.generation:
            if not g.passed:
                lines.append(
                    f"generation ({g.runtime}, prompt {g.prompt}): token {g.diverged_at} is "
                    f"{g.tokens[g.diverged_at]} where PyTorch generates "
                    f"{g.expected[g.diverged_at]}, and PyTorch's choice was not a near-tie"
                )
        return lines

    def worst(self, runtime: str, output: str = "logits") -> OutputCheck:
        return max(
            (c for c in self.checks if c.runtime == runtime and c.output == output),
            key=lambda c: _ratio(c.max_abs_error, c.bound),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "criteria": CRITERIA,
            "runtimes": self.runtimes,
            "prompts": self.prompts,
            "cases": self.cases,
            "checks": [asdict(c) for c in self.checks],
            "generation": [asdict(g) for g in self.generation],
            "seconds": self.seconds,
        }


def _prompt_ids(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[list[int]]]:
    """The verification prompts as token ids: ``[bos] text`` as training lays them out, and
    the chat template's rendering of one user turn when the tokenizer has a template."""
    if tokenizer is None:  # a model.pt without tokenizer: fixed id patterns stand in
        ids = [[(7 * i + 3 * k + 1) % vocab_size for i in range(n)] for k, n in enumerate((9, 5))]
        return ["(no tokenizer: token ids)"] * len(ids), ids
    texts, ids = [], []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for text in PROMPTS:
        texts.append(text)
        ids.append(bos + tokenizer.encode(text, add_special_tokens=False))
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": CHAT_PROMPT}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        texts.append(text)
        ids.append(tokenizer.encode(text, add_special_tokens=False))
    return texts, [row[:MAX_PROMPT_TOKENS] for row in ids]


def _torch_step(module: CausalLMWithCache) -> Callable[[dict[str, np.ndarray]], dict]:
    inputs, outputs = module.geometry.input_names(), module.geometry.output_names()

    def step(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            result = module(*(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in inputs))
        return {name: t.numpy() for name, t in zip(outputs, result, strict=True)}

    return step


def _recording(step: Callable, steps: list[Step], label: Callable[[dict], str]) -> Callable:
    def record(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = step(feed)
        steps.append(Step(label(feed), dict(feed), out))
        return out

    return record


def _case(feed: dict[str, np.ndarray]) -> str:
    batch, sequence = feed[INPUT_IDS].shape
    past = feed[ATTENTION_MASK].shape[1] - sequence
    kind = "prefill" if past == 0 else ("decode" if sequence == 1 else "chunk")
    return f"{kind} batch={batch} sequence={sequence} past={past}"


def _generate(step: Callable, prompts: list[list[int]], reference: Reference) -> list[list[int]]:
    """Greedy tokens per prompt (NEW_TOKENS each, no early stop) through the runtime's own
    generation loop, so verification runs what qwthn-run and the server run."""
    geometry = reference.geometry
    rows: list[list[int]] = [[] for _ in prompts]
    for tokens in generate_tokens(
        step,
        prompts,
        GenerationConfig(max_new_tokens=NEW_TOKENS),
        num_layers=geometry.num_layers,
        num_kv_heads=geometry.num_kv_heads,
        head_dim=geometry.head_dim,
        cache_dtype=reference.cache_dtype,
        pad_token_id=reference.pad_token_id,
    ):
        for row, token in zip(rows, tokens, strict=True):
            row.append(int(token))
    return rows


def torch_reference(module: CausalLMWithCache, tokenizer: Any, vocab_size: int) -> Reference:
    """Run PyTorch on the verification inputs and keep every step's inputs and outputs.

    Steps: batched greedy generation from all prompts (a left-padded prefill, then decode
    steps with the real cache), a chunk of ``CHUNK`` tokens fed at once after the prefill, and
    the first prompt alone (batch 1, no padding).
    """
    module.eval()
    texts, prompts = _prompt_ids(tokenizer, vocab_size)
    dtype = next(p.dtype for n, p in module.named_parameters() if ".qwthn." not in n)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None) or 0
    reference = Reference(
        prompts=texts,
        prompt_ids=prompts,
        steps=[],
        generated=[],
        generation_logits=[],
        geometry=module.geometry,
        cache_dtype=np.dtype(str(dtype).removeprefix("torch.")),
        pad_token_id=int(pad),
    )
    step = _torch_step(module)
    reference.generated = _generate(_recording(step, reference.steps, _case), prompts, reference)
    reference.generation_logits = [s.expected[LOGITS][:, -1, :] for s in reference.steps]
    prefill = reference.steps[0]
    chunk = np.asarray([row[:CHUNK] for row in reference.generated], dtype=np.int64)
    pasts, presents = module.geometry.input_names()[3:], module.geometry.output_names()[1:]
    feed = {past: prefill.expected[present] for past, present in zip(pasts, presents, strict=True)}
    mask = np.concatenate(
        [prefill.feed[ATTENTION_MASK], np.ones((len(prompts), CHUNK), dtype=np.int64)], axis=1
    )
    feed.update({INPUT_IDS: chunk, ATTENTION_MASK: mask, POSITION_IDS: position_ids(mask, CHUNK)})
    _recording(step, reference.steps, _case)(feed)
    single = np.asarray([prompts[0]], dtype=np.int64)
    ones = np.ones_like(single)
    _recording(step, reference.steps, _case)(
        {
            INPUT_IDS: single,
            ATTENTION_MASK: ones,
            POSITION_IDS: position_ids(ones, single.shape[1]),
            **empty_cache(asdict(module.geometry), 1, reference.cache_dtype),
        }
    )
    return reference


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _kept_positions(feed: dict[str, np.ndarray]) -> np.ndarray:
    """[batch, sequence] booleans: the new positions that are real tokens (not left padding)."""
    sequence = feed[INPUT_IDS].shape[1]
    return feed[ATTENTION_MASK][:, -sequence:].astype(bool)


def _check_logits(
    runtime: str, step: Step, actual: np.ndarray, atol: float, rtol: float
) -> OutputCheck:
    keep = _kept_positions(step.feed)
    expected = step.expected[LOGITS].astype(np.float64)[keep]  # [positions, vocab]
    got = actual.astype(np.float64)[keep]
    finite = bool(np.isfinite(got).all())
    error = float(np.abs(got - expected).max()) if finite else float("inf")
    scale = float(np.abs(expected).max())
    bound = atol + rtol * scale
    log_p, log_q = _log_softmax(expected), _log_softmax(got)
    top = np.argsort(-expected, axis=-1)[:, :TOP_K_LOGPROB]
    logprob_error = np.abs(
        np.take_along_axis(log_p, top, axis=-1) - np.take_along_axis(log_q, top, axis=-1)
    )
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    return OutputCheck(
        runtime=runtime,
        case=step.name,
        output="logits",
        max_abs_error=error,
        scale=scale,
        bound=bound,
        passed=finite and error <= bound,
        positions=int(keep.sum()),
        flips=int((got.argmax(axis=-1) != expected.argmax(axis=-1)).sum()),
        logprob_error=float(logprob_error.max()) if finite else float("inf"),
        kl=float(kl.max()) if finite else float("inf"),
    )


def _check_presents(
    runtime: str, step: Step, actual: dict[str, np.ndarray], atol: float, rtol: float
) -> OutputCheck:
    """The worst present tensor (by error / bound); padded positions along the length axis are
    left out (their keys and values come from pad tokens and are never attended to)."""
    keep = step.feed[ATTENTION_MASK].astype(bool)  # [batch, total length]
    worst: tuple[float, float, float, float] | None = None  # (ratio, error, scale, bound)
    for name, expected in step.expected.items():
        if name == LOGITS:
            continue
        e = np.moveaxis(expected.astype(np.float64), 2, 1)[keep]  # [kept, heads, dim]
        a = np.moveaxis(actual[name].astype(np.float64), 2, 1)[keep]
        error = float(np.abs(a - e).max()) if np.isfinite(a).all() else float("inf")
        scale = float(np.abs(e).max()) if e.size else 0.0
        bound = atol + rtol * scale
        ratio = _ratio(error, bound)
        if worst is None or ratio > worst[0]:
            worst = (ratio, error, scale, bound)
    assert worst is not None  # every export has at least one layer
    _, error, scale, bound = worst
    return OutputCheck(runtime, step.name, "present", error, scale, bound, error <= bound)


def release_memory() -> None:
    """Give freed memory back to the system before a large allocation: collect reference cycles
    (an exported program's graphs hold the module's tensors), then return glibc's free heap
    (it keeps freed blocks below 32 MiB, and most weight tensors are smaller) — else the next
    copy of the weights comes on top of the last one in the process's footprint."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _session(path: Path, runtime: str) -> ort.InferenceSession:
    options = session_options() if runtime == "kernels" else ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check_generation(
    report: VerifyReport, runtime: str, reference: Reference, tokens: list[list[int]]
) -> None:
    error = max(
        c.max_abs_error for c in report.checks if (c.runtime, c.output) == (runtime, "logits")
    )
    for prompt, (expected, got) in enumerate(zip(reference.generated, tokens, strict=True)):
        diverged = next(
            (i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b), None
        )
        near_tie = False
        if diverged is not None:
            logits = np.sort(reference.generation_logits[diverged][prompt].astype(np.float64))
            near_tie = bool(logits[-1] - logits[-2] <= 2 * error)
        report.generation.append(
            GenerationCheck(
                runtime, prompt, expected, got, diverged, near_tie, diverged is None or near_tie
            )
        )


def verify_reference(
    path: str | Path,
    reference: Reference,
    atol: float,
    rtol: float,
    runtimes: Sequence[str] = ("kernels", "fallback"),
) -> VerifyReport:
    """Replay ``reference`` in each runtime (one session at a time), then generate with it."""
    report = VerifyReport(
        atol=atol,
        rtol=rtol,
        runtimes=list(runtimes),
        prompts=list(reference.prompts),
        cases=[s.name for s in reference.steps],
    )
    for runtime in runtimes:
        release_memory()  # the previous session is gone: one copy of the weights at a time
        _verify_runtime(report, Path(path), runtime, reference)
    return report


def _verify_runtime(report: VerifyReport, path: Path, runtime: str, reference: Reference) -> None:
    """One runtime's replay and generation; its session dies with this frame."""
    names = reference.geometry.output_names()
    start = time.perf_counter()
    session = _session(path, runtime)
    report.seconds[f"{runtime} session"] = time.perf_counter() - start
    start = time.perf_counter()

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feed), strict=True))

    for step in reference.steps:
        outputs = run(step.feed)
        report.checks.append(
            _check_logits(runtime, step, outputs[LOGITS], report.atol, report.rtol)
        )
        report.checks.append(_check_presents(runtime, step, outputs, report.atol, report.rtol))
    _check_generation(report, runtime, reference, _generate(run, reference.prompt_ids, reference))
    report.seconds[f"{runtime} runs"] = time.perf_counter() - start


def verify_export(
    path: str | Path,
    module: CausalLMWithCache,
    tokenizer: Any,
    vocab_size: int,
    atol: float,
    rtol: float,
    runtimes: Sequence[str] = ("kernels", "fallback"),
) -> VerifyReport:
    """:func:`torch_reference` then :func:`verify_reference` (keeps the PyTorch model alive;
    ``qwthn-export`` frees it in between)."""
    return verify_reference(
        path, torch_reference(module, tokenizer, vocab_size), atol, rtol, runtimes
    )
