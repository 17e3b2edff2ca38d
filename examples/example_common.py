"""What the examples share: the base model (the tiny demo model, or your Hugging Face folder),
the adapter flags, the demo data and how a mistake is reported (a message and exit status 2,
no traceback)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from qwthn_onnx import (
    AdapterError,
    ConfigError,
    DataError,
    ModelFileError,
    QWTHNConfig,
    QWTHNModel,
)
from qwthn_onnx.data import Example, load_examples
from qwthn_onnx.demo import build_char_tokenizer, build_tiny_model, finetune_task
from qwthn_onnx.pretrained import PACKAGED_MODELS, load_pretrained

USER_ERRORS = (AdapterError, ConfigError, DataError, ModelFileError, OSError)


class UsageError(Exception):
    """A flag combination or launch that cannot work; the message says what to do instead."""


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="a Hugging Face model folder (config.json, weights, tokenizer), a .gguf file (or "
        "a folder holding one; converted once into a cache) or a packaged model name ("
        + ", ".join(PACKAGED_MODELS)
        + "); default: a tiny randomly initialised Llama, built offline",
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="a .jsonl/.json/.txt dataset (alpaca, messages, prompt/completion, text; see "
        "docs/data.md); default: generated arithmetic ('23&58=' -> '81')",
    )
    parser.add_argument("--seed", type=int, default=0)
    adapter = parser.add_argument_group("adapter (QWTHNConfig; smaller than the paper's)")
    adapter.add_argument("--rank", type=positive_int, default=8)
    adapter.add_argument("--n-qubits", type=positive_int, default=4)
    adapter.add_argument("--n-layers", type=positive_int, default=2)


def add_trainer_arguments(parser: argparse.ArgumentParser, output: str) -> None:
    """The options the Trainer and SFTTrainer examples share (``output``: default folder)."""
    parser.add_argument("--output", type=Path, default=Path(output))
    parser.add_argument("--steps", type=positive_int, default=60)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--save-steps", type=positive_int, default=20)
    parser.add_argument("--max-length", type=positive_int, default=256)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def trainer_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``TrainingArguments`` (or TRL ``SFTConfig``) options both trainer examples set."""
    return {
        "output_dir": str(args.output),
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": args.lr,
        "save_steps": args.save_steps,
        "logging_steps": 1,
        "seed": args.seed,
        "report_to": "none",
        # Trainer runs the processes of torchrun on CPU as one distributed job only when told
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": args.quiet,
    }


def report(trainer: Any, output: Path) -> None:
    """The loss's first and last logged values, printed by one process under torchrun."""
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; adapter saved in {output}/")


def load_base(model: str | None, seed: int) -> tuple[Any, Any]:
    """``(base_model, tokenizer)``: the tiny demo pair, or ``--model``'s, in float32."""
    if model is None:
        tokenizer = build_char_tokenizer()
        return build_tiny_model(tokenizer, "llama", seed=seed), tokenizer
    # a Hugging Face folder, or a GGUF (converted once into a cached folder)
    base, tokenizer, _ = load_pretrained(model, dtype=torch.float32)
    return base, tokenizer


def adapt(base: Any, args: argparse.Namespace) -> QWTHNModel:
    """Wrap the base in QWTHN adapters (default targets, e.g. q_proj/v_proj); the base freezes."""
    torch.manual_seed(args.seed)  # the same adapter initialisation in every process
    config = QWTHNConfig(rank=args.rank, n_qubits=args.n_qubits, n_layers=args.n_layers)
    return QWTHNModel(base, config)


def examples(args: argparse.Namespace, n_demo: int = 256) -> list[Example]:
    """The ``--data`` file's examples, or ``n_demo`` generated ones."""
    if args.data is not None:
        return load_examples(args.data)
    return finetune_task(n_train=n_demo, n_test=0, seed=args.seed)[0]


def run_main(run: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Run ``run(argv)``; a user's mistake prints ``error: ...`` and gives exit status 2."""
    try:
        run(argv)
    except (UsageError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
