"""Check an exported model against PyTorch, like Optimum's atol validation, on every export.

The written ``model.onnx`` runs in onnxruntime twice, with the ``ai.qwthn`` kernels and with
the fallback functions only, on generated inputs of several batch sizes, lengths and past
lengths (prefill with an empty cache, and decode steps); every output is compared with the
PyTorch module the graph came from. An element passes when ``|onnx - torch| <= atol + rtol *
|torch|`` (``numpy.allclose``); the report keeps the worst absolute and relative errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from exporters.causal_lm import CacheGeometry, CausalLMWithCache, sample_inputs
from qwthn_onnx.runtime.library import session_options

__all__ = ["CASES", "OutputCheck", "VerifyReport", "verify_export"]

# (batch, new tokens, past tokens): prefills with an empty cache, a decode step, a chunk.
CASES: tuple[tuple[int, int, int], ...] = ((1, 7, 0), (3, 4, 0), (2, 1, 6), (3, 3, 5))


@dataclass
class OutputCheck:
    runtime: str  # "kernels" or "fallback"
    case: str  # "batch=2 sequence=1 past=6"
    output: str
    max_abs_error: float
    max_rel_error: float
    passed: bool


@dataclass
class VerifyReport:
    atol: float
    rtol: float
    runtimes: list[str]
    checks: list[OutputCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[OutputCheck]:
        return [c for c in self.checks if not c.passed]

    def worst(self, runtime: str) -> OutputCheck:
        return max((c for c in self.checks if c.runtime == runtime), key=lambda c: c.max_abs_error)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "criterion": "|onnx - torch| <= atol + rtol * |torch| elementwise",
            "runtimes": self.runtimes,
            "cases": [{"batch": b, "sequence": s, "past": p} for b, s, p in CASES],
            "checks": [asdict(c) for c in self.checks],
        }


def _compare(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float):
    actual = actual.astype(np.float64)
    expected = expected.astype(np.float64)
    if actual.shape != expected.shape:
        return float("inf"), float("inf"), False
    diff = np.abs(actual - expected)
    finite = bool(np.isfinite(actual).all())
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(expected), 1e-12)).max()) if diff.size else 0.0
    passed = finite and bool((diff <= atol + rtol * np.abs(expected)).all())
    return max_abs, max_rel, passed


def _session(path: Path, kernels: bool) -> ort.InferenceSession:
    options = session_options() if kernels else ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_export(
    path: str | Path,
    module: CausalLMWithCache,
    geometry: CacheGeometry,
    vocab_size: int,
    atol: float,
    rtol: float,
    runtimes: Sequence[str] = ("kernels", "fallback"),
) -> VerifyReport:
    """Run ``path`` in each runtime on :data:`CASES` and compare with ``module``."""
    report = VerifyReport(atol=atol, rtol=rtol, runtimes=list(runtimes))
    dtype = next(p.dtype for n, p in module.named_parameters() if ".qwthn." not in n)
    sessions = {name: _session(Path(path), kernels=name == "kernels") for name in runtimes}
    names = geometry.output_names()
    for seed, (batch, sequence, past) in enumerate(CASES):
        inputs = sample_inputs(geometry, batch, sequence, past, vocab_size, dtype, seed=seed)
        with torch.no_grad():
            expected = [t.float().numpy() for t in module(*inputs.values())]
        feed = {k: v.numpy() for k, v in inputs.items()}
        case = f"batch={batch} sequence={sequence} past={past}"
        for runtime, session in sessions.items():
            actual = session.run(names, feed)
            for name, a, e in zip(names, actual, expected, strict=True):
                max_abs, max_rel, ok = _compare(a, e, atol, rtol)
                report.checks.append(OutputCheck(runtime, case, name, max_abs, max_rel, ok))
    return report
