"""QWTHN vs LoRA (peft) on the embedded demo task, same base, data, steps and seeds.

    python benchmarks/demo_vs_lora.py [--seeds 0 1 2] [--steps 600] [--json out.json]

For each seed: build and pre-train the tiny Llama on addition (as ``qwthn-train`` does), then
fine-tune copies of it on the unseen notation "23&58=" with LoRA r=4 and r=8 and with QWTHN
(the demo's 4-qubit, 2-layer circuit), all on the attention q/v projections, AdamW lr 1e-2,
batch 32. Reports trainable parameters, final training loss, held-out exact match (operand
pairs never trained on) and seconds per step: median and range over seeds. This is the small,
quick comparison; the full quality study (ablations, more tasks) is a separate benchmark.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import warnings

import torch
from peft import LoraConfig, get_peft_model

from qwthn_onnx import QWTHNConfig, QWTHNModel, TrainingArguments, tokenize_examples, train
from qwthn_onnx.demo import (
    DEMO_ADAPTER,
    build_char_tokenizer,
    build_tiny_model,
    exact_match,
    finetune_task,
    pretrain_base,
)

TARGETS = ["q_proj", "v_proj"]


def adapt(method: str, base: torch.nn.Module) -> torch.nn.Module:
    if method == "qwthn":
        return QWTHNModel(base, QWTHNConfig(**DEMO_ADAPTER, target_modules=TARGETS))
    rank = int(method.removeprefix("lora-r"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(base, LoraConfig(r=rank, lora_alpha=16, target_modules=TARGETS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = ["lora-r4", "lora-r8", "qwthn"]
    results: dict[str, list[dict]] = {m: [] for m in methods}
    tokenizer = build_char_tokenizer()
    for seed in args.seeds:
        base = build_tiny_model(tokenizer, "llama", seed=seed)
        _, base_accuracy = pretrain_base(base, tokenizer, seed=seed, progress=False)
        examples, test = finetune_task(seed=seed)
        data = tokenize_examples(examples, tokenizer)
        before = exact_match(base, tokenizer, test)
        print(
            f"seed {seed}: base exact match on addition {base_accuracy:.1%}, "
            f"on the fine-tuning task before fine-tuning {before:.1%}",
            flush=True,
        )
        for method in methods:
            model = adapt(method, copy.deepcopy(base))
            targs = TrainingArguments(
                steps=args.steps, batch_size=32, learning_rate=1e-2, seed=seed
            )
            run = train(model, data, targs, progress=False)
            row = {
                "seed": seed,
                "trainable": run.trainable_parameters,
                "final_loss": run.final_loss,
                "exact_match_before": before,
                "exact_match": exact_match(model, tokenizer, test),
                "seconds_per_step": run.seconds / args.steps,
            }
            results[method].append(row)
            print(f"  {method:8s} {row}", flush=True)

    def summary(rows: list[dict], key: str, fmt: str) -> str:
        values = [r[key] for r in rows]
        med, lo, hi = statistics.median(values), min(values), max(values)
        return f"{med:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"

    print(
        f"\n{len(args.seeds)} seeds, {args.steps} steps, {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}: "
        "median (min–max)"
    )
    print("| method | trainable | final train loss | held-out exact match | ms / step |")
    print("|---|---|---|---|---|")
    for method, rows in results.items():
        ms = [{"ms": 1000 * r["seconds_per_step"]} for r in rows]
        print(
            f"| {method} | {rows[0]['trainable']:,} | {summary(rows, 'final_loss', '.3f')} | "
            f"{summary(rows, 'exact_match', '.1%')} | {summary(ms, 'ms', '.1f')} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"steps": args.steps, "threads": args.threads, "results": results}, f, indent=2
            )


if __name__ == "__main__":
    main()
