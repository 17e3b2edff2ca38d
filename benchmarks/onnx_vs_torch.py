"""Generation with a KV cache: onnxruntime with our kernels against PyTorch eager, per model size.

    python benchmarks/onnx_vs_torch.py [--quick] [--threads 1] [--json out.json]

Configs: ``demo`` (the tiny Llama of ``qwthn_onnx.demo`` with the demo's 4-qubit, 2-layer
adapters) and ``gpt2-small`` (``GPT2Config()`` defaults, random weights, the paper's 10-qubit,
10-layer circuit on ``c_attn``); ``--quick`` runs ``demo`` only, with shorter prompts and fewer
repeats. Adapters start with ``init_delta="normal"``, so they change the logits.

Each config is built once; the adapted model goes through ``save_model_pt`` and ``export_model``
(timed, as a user runs them), the base without adapters (a copy of the same weights) through
``exporters.onnx_export.export_causal_lm``, the graph export ``export_model`` uses, so both
graphs have the same signature and lowering. Contenders, all float32, batch 1, the same thread
count:

- ``torch eager (adapted)``: the ``QWTHNModel`` (quantum backend "auto": our C++ kernel through
  the torch custom op), a ``DynamicCache``, under ``torch.inference_mode()``;
- ``ORT kernels (adapted)``: the exported graph, ``libqwthn_ops`` registered;
- ``ORT fallback (adapted)``: the same graph in plain onnxruntime (standard-op fallbacks);
- ``torch eager (base)`` and ``ORT (base)``: the base model alone.

Prefill: a prompt of P random tokens into an empty cache (logits for every position and the
present key/values); median of R calls after 2 warm-ups. Decode: after a prefill of C tokens,
T greedy steps of one token each, the cache fed back (ORT: ``present.*`` become the next
``past_key_values.*``); per repetition the median step time, reported as the median over R
repetitions (median of medians). Contenders take turns within each repetition, so drift on a
shared machine hits them alike. Before timing, every onnxruntime contender is checked against
its PyTorch model: prefill logits within 1e-3 (max abs) and the same greedy tokens over the
decode steps; a mismatch ends the run.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers
from system_info import log, machine_info
from torch import nn
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

import qwthn_onnx
from exporters.causal_lm import CacheGeometry
from exporters.export import ExportOptions, export_model
from exporters.onnx_export import ExportedGraph, export_causal_lm, save_onnx
from qwthn_onnx import QWTHNConfig, QWTHNModel, save_model_pt
from qwthn_onnx.demo import DEMO_ADAPTER, build_char_tokenizer, build_tiny_model
from qwthn_onnx.runtime.signature import ATTENTION_MASK, INPUT_IDS, POSITION_IDS, past_names

SEED = 0
TOLERANCE = 1e-3  # max abs difference of prefill logits, ORT vs PyTorch
OVERHEAD_TARGET = 0.25  # adapter share of ORT decode latency
WARMUPS = 2
CONFIGS = ("demo", "gpt2-small")
CONTENDERS = {
    "torch": "torch eager (adapted)",
    "ort": "ORT kernels (adapted)",
    "ort-fallback": "ORT fallback (adapted)",
    "torch-base": "torch eager (base)",
    "ort-base": "ORT (base)",
}
REFERENCE = {"ort": "torch", "ort-fallback": "torch", "ort-base": "torch-base"}

# (new token ids [1, n], cache or None for an empty one, past length) -> (logits, cache)
Step = Callable[[np.ndarray, Any, int], tuple[np.ndarray, Any]]


@dataclass(frozen=True)
class Settings:
    prompts: tuple[int, ...]  # prefill lengths P
    context: int  # prefill length C before the decode steps
    steps: int  # decode steps T
    repeats: int  # R
    threads: int


# --------------------------------------------------------------------------------------------
# Models, exports, contenders
# --------------------------------------------------------------------------------------------


def build_models(name: str) -> tuple[nn.Module, QWTHNModel]:
    """(base, adapted) with equal base weights: the base is copied before QWTHNModel injects
    the adapters into it in place."""
    if name == "demo":
        base = build_tiny_model(build_char_tokenizer(), "llama", seed=SEED)
        config = QWTHNConfig(**DEMO_ADAPTER, init_delta="normal")
    else:
        torch.manual_seed(SEED)
        base = GPT2LMHeadModel(GPT2Config())
        config = QWTHNConfig(n_qubits=10, n_layers=10, rank=8, init_delta="normal")
    plain = copy.deepcopy(base).eval()
    torch.manual_seed(SEED)
    return plain, QWTHNModel(base, config).eval()


def describe(base: nn.Module, adapted: QWTHNModel) -> dict[str, Any]:
    """What the JSON and the table title say about a config."""
    return {
        "architecture": type(base).__name__,
        "base_parameters": sum(p.numel() for p in base.parameters()),
        "adapter_parameters": adapted.trainable_parameters(),
        "adapted_modules": len(adapted.adapted_modules),
        "adapter": adapted.qwthn_config.to_dict(),
        "model_config": json.loads(base.config.to_json_string()),
    }


def export_adapted(model: QWTHNModel, directory: Path, verify: bool) -> tuple[Path, dict]:
    """``model.pt`` then ``export_model``, as a user exports; seconds per step and in total."""
    start = time.perf_counter()
    save_model_pt(directory / "model.pt", model)
    seconds = {"save model.pt": time.perf_counter() - start}
    result = export_model(
        directory / "model.pt", directory / "adapted", ExportOptions(verify=verify)
    )
    seconds.update(result.seconds)
    seconds["total"] = time.perf_counter() - start
    return result.directory / "model.onnx", seconds


def export_base(base: nn.Module, path: Path) -> float:
    """The base alone, through the exporter's own graph export (no ai.qwthn nodes); seconds."""
    start = time.perf_counter()
    proto, weights, module, _ = export_causal_lm(base)
    vocab = base.get_output_embeddings().weight.shape[0]
    save_onnx(ExportedGraph(proto, weights, module, module.geometry, vocab), path, None)
    return time.perf_counter() - start


def ort_session(path: Path, threads: int, kernels: bool) -> ort.InferenceSession:
    options = qwthn_onnx.session_options(threads) if kernels else ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torch_step(model: nn.Module) -> Step:
    """A forward pass as users of transformers run it: tensors in, the DynamicCache back."""
    config = model.config

    def step(ids: np.ndarray, cache: Any, past: int) -> tuple[np.ndarray, Any]:
        n = ids.shape[1]
        with torch.inference_mode():
            out = model(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.ones(1, past + n, dtype=torch.long),
                position_ids=torch.arange(past, past + n).unsqueeze(0),
                past_key_values=DynamicCache(config=config) if cache is None else cache,
                use_cache=True,
            )
        return out.logits.numpy(), out.past_key_values

    return step


def ort_step(session: ort.InferenceSession, geometry: CacheGeometry) -> Step:
    """One ``session.run``: the present key/values come back as the next step's past inputs."""
    outputs = geometry.output_names()
    pasts = [name for layer in range(geometry.num_layers) for name in past_names(layer)]
    shape = (1, geometry.num_kv_heads, 0, geometry.head_dim)
    empty = {name: np.zeros(shape, dtype=np.float32) for name in pasts}

    def step(ids: np.ndarray, cache: Any, past: int) -> tuple[np.ndarray, Any]:
        n = ids.shape[1]
        feed = {
            INPUT_IDS: ids,
            ATTENTION_MASK: np.ones((1, past + n), dtype=np.int64),
            POSITION_IDS: np.arange(past, past + n, dtype=np.int64)[None],
            **(empty if cache is None else cache),
        }
        logits, *present = session.run(outputs, feed)
        return logits, dict(zip(pasts, present, strict=True))

    return step


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode(step: Step, prompt: np.ndarray, steps: int) -> tuple[list[int], list[float]]:
    """Greedy tokens (the prefill's, then each step's) and the seconds of each one-token step."""
    logits, cache = step(prompt, None, 0)
    length = prompt.shape[1]
    tokens = [int(logits[0, -1].argmax())]
    times = []
    for _ in range(steps):
        ids = np.array([[tokens[-1]]], dtype=np.int64)
        start = time.perf_counter()
        logits, cache = step(ids, cache, length)
        times.append(time.perf_counter() - start)
        length += 1
        tokens.append(int(logits[0, -1].argmax()))
    return tokens, times


def check(
    name: str, steps: dict[str, Step], prompt: np.ndarray, decode_prompt: np.ndarray, n_steps: int
) -> dict[str, Any]:
    """ORT must compute what PyTorch does before its speed means anything: prefill logits within
    TOLERANCE and the same greedy tokens. Also the decode warm-up of every contender."""
    logits = {key: step(prompt, None, 0)[0] for key, step in steps.items()}
    tokens = {key: decode(step, decode_prompt, n_steps)[0] for key, step in steps.items()}
    errors = {}
    for key, ref in REFERENCE.items():
        errors[key] = float(np.abs(logits[key] - logits[ref]).max())
        if not errors[key] < TOLERANCE:
            raise SystemExit(
                f"FAILED {name}: {CONTENDERS[key]} prefill logits differ from "
                f"{CONTENDERS[ref]} by {errors[key]:.3g} (tolerance {TOLERANCE})"
            )
        if tokens[key] != tokens[ref]:
            at = next(
                i for i, (a, b) in enumerate(zip(tokens[key], tokens[ref], strict=True)) if a != b
            )
            raise SystemExit(
                f"FAILED {name}: {CONTENDERS[key]} greedy tokens diverge from {CONTENDERS[ref]} "
                f"at step {at}: {tokens[key]} vs {tokens[ref]}"
            )
    return {"prefill_max_abs_error": errors, "greedy_tokens": tokens}


def measure_prefill(steps: dict[str, Step], prompt: np.ndarray, repeats: int) -> dict[str, Any]:
    """Seconds per prefill call of every contender, taking turns, after WARMUPS rounds."""
    samples: dict[str, list[float]] = {key: [] for key in steps}
    for r in range(WARMUPS + repeats):
        for key, step in steps.items():
            seconds = timed(lambda step=step: step(prompt, None, 0))
            if r >= WARMUPS:
                samples[key].append(seconds)
    return {
        key: {"median_ms": 1e3 * statistics.median(s), "samples_ms": [1e3 * t for t in s]}
        for key, s in samples.items()
    }


def measure_decode(
    steps: dict[str, Step], prompt: np.ndarray, n_steps: int, repeats: int
) -> dict[str, Any]:
    """Per-token decode seconds: per repetition the median step, then the median over
    repetitions (the correctness check was the warm-up)."""
    runs: dict[str, list[list[float]]] = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            runs[key].append(decode(step, prompt, n_steps)[1])
    out = {}
    for key, times in runs.items():
        medians = [1e3 * statistics.median(t) for t in times]
        out[key] = {
            "median_ms": statistics.median(medians),
            "repetition_medians_ms": medians,
            "steps_ms": [[1e3 * t for t in run] for run in times],
        }
    return out


def run_config(name: str, settings: Settings, workdir: Path) -> dict[str, Any]:
    """Build, export, check and time one config; all raw numbers."""
    log(f"{name}: building the models")
    base, adapted = build_models(name)
    geometry = CacheGeometry.probe(base)
    log(f"{name}: exporting the adapted model (save_model_pt + export_model)")
    adapted_path, export_seconds = export_adapted(adapted, workdir, verify=name == "demo")
    log(f"{name}: exporting the base model")
    base_path = workdir / "base.onnx"
    base_seconds = export_base(base, base_path)
    log(f"{name}: creating sessions")
    steps: dict[str, Step] = {
        "torch": torch_step(adapted),
        "ort": ort_step(ort_session(adapted_path, settings.threads, True), geometry),
        "ort-fallback": ort_step(ort_session(adapted_path, settings.threads, False), geometry),
        "torch-base": torch_step(base),
        "ort-base": ort_step(ort_session(base_path, settings.threads, False), geometry),
    }
    vocab = base.get_output_embeddings().weight.shape[0]
    longest = max(*settings.prompts, settings.context)
    ids = np.random.default_rng(SEED).integers(0, vocab, (1, longest), dtype=np.int64)
    log(f"{name}: checking onnxruntime against PyTorch")
    longest_prompt, decode_prompt = ids[:, : max(settings.prompts)], ids[:, : settings.context]
    checks = check(name, steps, longest_prompt, decode_prompt, settings.steps)
    prefill = {}
    for length in settings.prompts:
        log(f"{name}: timing prefill P={length}")
        prefill[length] = measure_prefill(steps, ids[:, :length], settings.repeats)
    log(f"{name}: timing decode ({settings.steps} steps after {settings.context} tokens)")
    decoding = measure_decode(steps, ids[:, : settings.context], settings.steps, settings.repeats)
    return {
        "config": describe(base, adapted),
        "export_seconds": {"adapted": export_seconds, "base": base_seconds},
        "check": checks,
        "prefill": prefill,
        "decode": decoding,
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def ms(value: float) -> str:
    """2-3 significant digits; whole milliseconds from 100 up."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def overhead(adapted: float, base: float) -> float:
    """The adapters' share of the adapted model's latency."""
    return (adapted - base) / adapted


def table(name: str, result: dict[str, Any]) -> list[str]:
    """The markdown table of one config, with its export times above it."""
    c, e = result["config"], result["export_seconds"]
    steps = ", ".join(f"{k} {v:.1f}" for k, v in e["adapted"].items() if k != "total")
    lines = [
        f"### {name}: {c['architecture']}, {c['base_parameters']:,} base parameters, "
        f"{c['adapter_parameters']:,} adapter parameters in {c['adapted_modules']} layers "
        f"({c['adapter']['n_qubits']} qubits, {c['adapter']['n_layers']} layers, "
        f"rank {c['adapter']['rank']})",
        "",
        f"Export: adapted {e['adapted']['total']:.1f} s ({steps}), base {e['base']:.1f} s.",
        "",
    ]
    header = [
        "ms, median",
        *CONTENDERS.values(),
        "torch / ORT (adapted)",
        "adapter overhead ORT",
        "adapter overhead torch",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [(f"prefill P={p}", cells) for p, cells in result["prefill"].items()]
    rows.append(("decode/token", result["decode"]))
    for label, cells in rows:
        t = {key: cells[key]["median_ms"] for key in CONTENDERS}
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    *(ms(t[key]) for key in CONTENDERS),
                    f"{t['torch'] / t['ort']:.2f}x",
                    f"{100 * overhead(t['ort'], t['ort-base']):.1f}%",
                    f"{100 * overhead(t['torch'], t['torch-base']):.1f}%",
                ]
            )
            + " |"
        )
    return lines


def target_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """ORT at least as fast as torch eager (adapted), and the adapters' share of ORT decode."""
    lines = ["Targets:"]
    for name, result in results.items():
        rows = [(f"prefill P={p}", cells) for p, cells in result["prefill"].items()]
        rows.append(("decode", result["decode"]))
        for label, cells in rows:
            ratio = cells["torch"]["median_ms"] / cells["ort"]["median_ms"]
            met = "met" if ratio >= 1 else "NOT MET"
            lines.append(
                f"- {name}, {label}: torch / ORT kernels (adapted) = {ratio:.2f}x "
                f"(target >= 1x: {met})"
            )
        d = result["decode"]
        share = overhead(d["ort"]["median_ms"], d["ort-base"]["median_ms"])
        met = "met" if share < OVERHEAD_TARGET else "NOT MET"
        lines.append(
            f"- {name}, adapter overhead in ORT decode = {100 * share:.1f}% "
            f"(target < {100 * OVERHEAD_TARGET:.0f}%: {met})"
        )
    return lines


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "transformers": transformers.__version__,
        "qwthn_onnx": qwthn_onnx.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="demo only, short, fewer repeats")
    parser.add_argument("--threads", type=int, default=1, help="threads for every contender")
    parser.add_argument("--json", help="also write all raw numbers, machine and versions here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = (
        Settings(prompts=(16,), context=16, steps=8, repeats=3, threads=args.threads)
        if args.quick
        else Settings(prompts=(32, 128), context=32, steps=32, repeats=10, threads=args.threads)
    )
    names = CONFIGS[:1] if args.quick else CONFIGS
    machine = machine_info(threads=args.threads)
    start = time.perf_counter()
    results = {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"onnx_vs_torch_{name}_") as workdir:
            results[name] = run_config(name, settings, Path(workdir))
    elapsed = time.perf_counter() - start

    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores; {args.threads} thread(s) "
        f"(torch and onnxruntime intra-op; onnxruntime inter-op 1)\n"
        f"versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + "\n"
        f"float32, batch 1. Prefill: median of {settings.repeats} after {WARMUPS} warm-ups. "
        f"Decode/token: median over {settings.repeats} repetitions of the median of "
        f"{settings.steps} steps after a {settings.context}-token prefill. Checked before "
        f"timing: prefill logits within {TOLERANCE} and equal greedy tokens, ORT vs PyTorch."
    )
    for name, result in results.items():
        print("\n" + "\n".join(table(name, result)))
    targets = target_lines(results)
    print("\n" + "\n".join(targets))
    print(f"\nTotal {elapsed:.0f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine,
                    "versions": versions(),
                    "settings": asdict(settings) | {"warmups": WARMUPS, "tolerance": TOLERANCE},
                    "results": results,
                    "targets": targets,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
