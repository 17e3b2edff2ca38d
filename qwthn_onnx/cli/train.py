"""``qwthn-train``: fine-tune a causal LM with QWTHN adapters and write ``model.pt``.

With no ``--model`` it runs the embedded default (no downloads): a tiny base is built from a
config and briefly pre-trained on generated addition, then QWTHN adapters are fine-tuned on a
phrasing the base has not seen, and held-out exact-match accuracy is shown before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from qwthn_onnx import __version__
from qwthn_onnx._io import file_sha256
from qwthn_onnx.adapter import (
    AdapterError,
    ConfigError,
    QWTHNConfig,
    QWTHNModel,
    check_adapter_directory,
    default_target_modules,
    find_target_modules,
)
from qwthn_onnx.checkpoint import ModelFileError, check_output_file, save_model_pt
from qwthn_onnx.circuit import CircuitError
from qwthn_onnx.data import (
    CHAT_TEMPLATE_MODES,
    DataError,
    Example,
    load_examples,
    split_examples,
    tokenize_examples,
)
from qwthn_onnx.demo import (
    DEMO_ADAPTER,
    DEMO_ARCHITECTURES,
    DEMO_TRAINING,
    build_char_tokenizer,
    build_tiny_model,
    exact_match,
    finetune_task,
    pretrain_base,
)
from qwthn_onnx.mpo import MPOError
from qwthn_onnx.pretrained import PACKAGED_MODELS, load_pretrained, locate_model
from qwthn_onnx.training import (
    LR_SCHEDULERS,
    MIXED_PRECISION_MODES,
    OPTION_HELP,
    TrainingArguments,
    TrainingError,
    check_checkpoint_dir,
    check_resume_options,
    resolve_checkpoint,
    train,
)

# Circuit IR per module is set with `qwthn-qasm load` (or replace_circuit), not on a command line.
CONFIG_FIELDS_WITHOUT_FLAGS = frozenset({"circuits"})
USER_ERRORS = (
    AdapterError,
    ConfigError,
    DataError,
    ModelFileError,
    CircuitError,
    MPOError,
    TrainingError,
)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line ``error:`` (exit 2), like every other bad input here, instead
    of the usage text of some sixty options."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per QWTHNConfig field, with the field's help (the config is the single truth)."""
    group = parser.add_argument_group("adapter (QWTHNConfig fields; defaults as in the config)")
    for f in dataclasses.fields(QWTHNConfig):
        if f.name in CONFIG_FIELDS_WITHOUT_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {
            "dest": f"cfg_{f.name}",
            "default": None,
            "help": f.metadata["help"],
        }
        if f.name == "target_modules":
            kwargs.update(nargs="+", metavar="NAME")
        elif f.name == "mpo_modes":
            kwargs.update(type=json.loads, metavar="JSON")
        else:
            kwargs.update(type=type(f.default), metavar=type(f.default).__name__.upper())
        group.add_argument(flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="qwthn-train",
        description="Fine-tune a causal LM with QWTHN adapters and write model.pt. "
        "Without --model: the embedded demo (tiny model, generated data, no downloads).",
    )
    p.add_argument(
        "--model",
        type=Path,
        help="base model: a Hugging Face model directory (with tokenizer), a .gguf file or a "
        "directory holding one (converted once into a cache), or a packaged model name: "
        + ", ".join(PACKAGED_MODELS),
    )
    p.add_argument("--data", type=Path, help=".txt (one example per line) or .jsonl dataset")
    p.add_argument("-o", "--output", type=Path, default=Path("model.pt"), help="model.pt to write")
    p.add_argument("--adapter-dir", type=Path, help="also save the adapter alone (PEFT layout)")
    p.add_argument(
        "--base-weights",
        choices=("embed", "reference"),
        default="embed",
        help="embed the base weights in model.pt, or reference the --model directory (for a "
        "GGUF: its converted folder in the cache)",
    )
    demo = p.add_argument_group("embedded demo (without --model)")
    demo.add_argument("--arch", choices=sorted(DEMO_ARCHITECTURES), default="llama")
    demo.add_argument("--pretrain-steps", type=int, default=1500, help="base pre-training steps")
    demo.add_argument("--train-examples", type=int, default=2000)
    demo.add_argument("--test-examples", type=int, default=200)
    t = p.add_argument_group("training")
    defaults = TrainingArguments()
    t.add_argument(
        "--steps", type=int, help=f"default {defaults.steps} (demo: {DEMO_TRAINING['steps']})"
    )
    t.add_argument("--epochs", type=float, help=OPTION_HELP["epochs"] + " (instead of --steps)")
    t.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help=OPTION_HELP["batch_size"]
    )
    t.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        default=defaults.gradient_accumulation_steps,
        metavar="N",
        help=OPTION_HELP["gradient_accumulation_steps"],
    )
    t.add_argument(
        "--lr",
        type=float,
        dest="learning_rate",
        help=f"default {defaults.learning_rate} (demo: {DEMO_TRAINING['learning_rate']})",
    )
    t.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    t.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    t.add_argument(
        "--lr-scheduler",
        choices=LR_SCHEDULERS,
        default=defaults.lr_scheduler,
        metavar="NAME",
        help=OPTION_HELP["lr_scheduler"],
    )
    t.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION_MODES,
        default=defaults.mixed_precision,
        help=OPTION_HELP["mixed_precision"],
    )
    t.add_argument("--seed", type=int, default=defaults.seed)
    t.add_argument(
        "--max-length", type=int, default=256, help="truncate examples to this many tokens"
    )
    t.add_argument(
        "--chat-template",
        choices=CHAT_TEMPLATE_MODES,
        default="auto",
        help="conversations: the tokenizer's chat template when it has one (auto), always (on, "
        "an error without one) or never (off: a plain 'Role: text' layout)",
    )
    e = p.add_argument_group("evaluation")
    e.add_argument(
        "--validation-data", type=Path, metavar="FILE", help="validation set (formats as --data)"
    )
    e.add_argument(
        "--validation-split",
        type=float,
        metavar="FRACTION",
        help="hold out this fraction of the training examples (shuffled with --seed) instead",
    )
    e.add_argument(
        "--eval-every",
        type=int,
        metavar="N",
        help=OPTION_HELP["eval_every"] + "; the demo's default validation set is its held-out set",
    )
    c = p.add_argument_group("checkpoints")
    c.add_argument(
        "--checkpoint-every", type=int, metavar="N", help=OPTION_HELP["checkpoint_every"]
    )
    c.add_argument(
        "--checkpoint-dir",
        type=Path,
        metavar="DIR",
        help="where checkpoint-<step>/ directories go (default: beside --output, named after it: "
        "model.pt -> model-checkpoints/)",
    )
    c.add_argument(
        "--save-total-limit", type=int, metavar="N", help=OPTION_HELP["save_total_limit"]
    )
    c.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="PATH",
        help="continue an interrupted run from a checkpoint: PATH (checkpoint-<step>/ or a "
        "directory of them), or the latest in --checkpoint-dir; give the run's other options "
        "unchanged",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or tables")
    p.add_argument("--version", action="version", version=f"qwthn-onnx {__version__}")
    _add_config_arguments(p)
    return p


def _adapter_config(args: argparse.Namespace, demo: bool) -> QWTHNConfig:
    values = dict(DEMO_ADAPTER) if demo else {}
    for f in dataclasses.fields(QWTHNConfig):
        value = getattr(args, f"cfg_{f.name}", None)  # fields without a flag stay default
        if value is not None:
            values[f.name] = value
    return QWTHNConfig(**values)


def _demo_base(args: argparse.Namespace, config: QWTHNConfig, console: Console, training: dict):
    """The tiny base, pre-trained on addition, and its tokenizer."""
    tokenizer = build_char_tokenizer()
    base = build_tiny_model(tokenizer, args.arch, seed=args.seed)
    find_target_modules(base, config.target_modules or default_target_modules(base))
    console.print(
        f"[bold]demo[/]: tiny {args.arch} ({sum(p.numel() for p in base.parameters()):,} "
        f"parameters), char tokenizer ({len(tokenizer)} tokens)"
    )
    console.print(
        f"pre-training the base on addition ('23+58=' -> '81'), {args.pretrain_steps} steps"
    )
    n, n_test = args.train_examples, args.test_examples
    pre, accuracy = pretrain_base(
        base, tokenizer, args.pretrain_steps, n, n_test, args.seed, progress=not args.quiet
    )
    console.print(f"base model exact match on held-out addition: [bold]{accuracy:.1%}[/]")
    training["base_pretraining"] = {
        "task": "add",
        "steps": args.pretrain_steps,
        "final_loss": pre.final_loss,
        "eval": accuracy,
    }
    return base, tokenizer


def _training_arguments(args: argparse.Namespace, demo: bool) -> TrainingArguments:
    """The loop's options from the flags (the demo has its own steps and learning rate);
    built before any work, so that every bad option fails at once."""
    if args.steps is not None and args.epochs is not None:
        raise TrainingError("--steps and --epochs are alternatives: give one of them")
    wants_dir = args.checkpoint_every is not None or args.resume is not None
    if args.checkpoint_dir is not None and not wants_dir:
        raise TrainingError("--checkpoint-dir needs --checkpoint-every (or --resume)")
    chosen = {
        k: v for k in ("steps", "epochs", "learning_rate") if (v := getattr(args, k)) is not None
    }
    defaults = dict(DEMO_TRAINING) if demo else {}
    if args.epochs is not None:
        defaults.pop("steps", None)
    checkpoint_dir = args.checkpoint_dir or args.output.with_name(f"{args.output.stem}-checkpoints")
    return TrainingArguments(
        **{**defaults, **chosen},
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        lr_scheduler=args.lr_scheduler,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        checkpoint_dir=checkpoint_dir if wants_dir else None,
        save_total_limit=args.save_total_limit,
        mixed_precision=args.mixed_precision,
    )


def _validation_split(
    args: argparse.Namespace, examples: list[Example], test: list[Example], training: dict
) -> tuple[list[Example], list[Example]]:
    """(training examples, validation examples): a file, a seeded split, the demo's held-out
    set when only --eval-every asks for one, or none."""
    if args.validation_data is not None and args.validation_split is not None:
        raise DataError("--validation-data and --validation-split are alternatives: give one")
    if args.validation_data is not None:
        validation = load_examples(args.validation_data)
        path = args.validation_data
        training["validation"] = {"path": str(path), "sha256": file_sha256(path)}
        return examples, validation
    if args.validation_split is not None:
        training["validation"] = {"split": args.validation_split, "seed": args.seed}
        return split_examples(examples, args.validation_split, args.seed)
    if args.eval_every is None:
        return examples, []
    if not test:
        raise DataError(
            "--eval-every needs a validation set: --validation-data or --validation-split"
        )
    training["validation"] = "generated:and_add:held-out"
    return examples, test


def run(args: argparse.Namespace, console: Console) -> Path:
    demo = args.model is None
    training: dict[str, Any] = {"seed": args.seed, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    # Every check that can fail on the user's input runs before any work.
    check_output_file(args.output)
    if args.adapter_dir:
        check_adapter_directory(args.adapter_dir)
    if demo and args.base_weights == "reference":
        raise ConfigError("--base-weights reference needs --model DIR (the demo base has none)")
    if not demo and args.data is None:
        raise DataError("--data is required with --model (a .txt or .jsonl dataset)")
    source = None if demo else locate_model(args.model)
    config = _adapter_config(args, demo)
    targs = _training_arguments(args, demo)
    resume = resolve_checkpoint(args.resume, targs.checkpoint_dir) if args.resume else None
    if resume is not None:
        check_resume_options(resume, targs)
    if targs.checkpoint_every is not None:
        check_checkpoint_dir(targs.checkpoint_dir, resuming=resume is not None)
    test: list[Example] = []
    if args.data is not None:
        examples = load_examples(args.data)
        training["dataset"] = {"path": str(args.data), "sha256": file_sha256(args.data)}
    else:  # the demo's task: held-out examples to score exact match on
        examples, test = finetune_task(args.train_examples, args.test_examples, args.seed)
        training["dataset"] = f"generated:and_add:n={len(examples)}:seed={args.seed}"
    examples, validation = _validation_split(args, examples, test, training)

    if demo:
        base, tokenizer = _demo_base(args, config, console, training)
        if test:
            console.print("fine-tuning task: a notation the base never saw, '23&58=' -> '81'")
    else:
        base, tokenizer, base_dir = load_pretrained(source, console=console)
        training["base_model_path"] = str(base_dir)
        training["base_model_source"] = source.to_dict()
        # the adapters' initial weights come from torch's RNG: --seed fixes them, as
        # build_tiny_model(seed) and the pre-training fix them in the demo
        torch.manual_seed(args.seed)

    model = QWTHNModel(base, config)
    if not args.quiet:
        console.print(model.parameter_report().render())
    if test:
        before = exact_match(model, tokenizer, test)
        console.print(
            f"held-out exact match before fine-tuning: [bold]{before:.1%}[/] ({len(test)} examples)"
        )
        training["eval_before"] = before
    tokenize = functools.partial(
        tokenize_examples,
        tokenizer=tokenizer,
        max_length=args.max_length,
        chat_template=args.chat_template,
    )
    data = tokenize(examples)
    eval_data = tokenize(validation) if validation else None
    if resume is not None:
        console.print(f"resuming from {resume}")
    if targs.checkpoint_every is not None:
        console.print(
            f"checkpoints every {targs.checkpoint_every} steps in {targs.checkpoint_dir}/"
        )
    result = train(
        model,
        data,
        targs,
        description="fine-tune QWTHN",
        progress=not args.quiet,
        eval_data=eval_data,
        resume_from=resume,
    )
    training.update(result.to_dict())
    console.print(
        f"fine-tuned {result.trainable_parameters:,} parameters for {len(result.losses)} steps "
        f"in {result.seconds:.1f} s: loss {result.losses[0]:.4f} -> {result.final_loss:.4f}"
    )
    if result.evaluations:
        last = result.evaluations[-1]
        console.print(
            f"validation loss {last['loss']:.4f}, perplexity {last['perplexity']:.3f} "
            f"({last['tokens']:,} tokens, {len(eval_data)} examples)"
        )
    if test:
        after = exact_match(model, tokenizer, test)
        console.print(f"held-out exact match after fine-tuning:  [bold]{after:.1%}[/]")
        training["eval_after"] = after
    reference = training["base_model_path"] if args.base_weights == "reference" else None
    path = save_model_pt(args.output, model, tokenizer, training, base_reference=reference)
    console.print(f"wrote [bold]{path}[/] ({path.stat().st_size / 2**20:.1f} MiB)")
    if args.adapter_dir:
        model.save_adapter(args.adapter_dir)
        console.print(
            f"wrote adapter to {args.adapter_dir}/ (adapter_config.json, adapter_model.safetensors)"
        )
    return path


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through atomic writes, which remove their temp files


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    console = Console(quiet=args.quiet, highlight=False, soft_wrap=True)
    try:
        run(args, console)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: an output not finished was not written (any earlier one is intact)",
            file=sys.stderr,
        )
        if args.checkpoint_every is not None:
            print(
                "continue from the last checkpoint: the same command with --resume", file=sys.stderr
            )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
