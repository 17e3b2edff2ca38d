"""Fine-tune QWTHN adapters with transformers' ``Trainer``.

    python examples/train_with_trainer.py                        # tiny demo model, no downloads
    python examples/train_with_trainer.py --model DIR --data train.jsonl --output out
    python examples/train_with_trainer.py --resume               # from the last checkpoint

OUTPUT/checkpoint-N/ and OUTPUT/ hold the adapter, as PEFT's do: adapter_config.json and
adapter_model.safetensors (no copy of the frozen base). Attach it to a base model with
``qwthn_onnx.load_adapter(base, "OUTPUT")``.
"""

from __future__ import annotations

import argparse
import sys

from example_common import (
    UsageError,
    adapt,
    add_common_arguments,
    add_trainer_arguments,
    examples,
    load_base,
    report,
    run_main,
    trainer_options,
)
from torch.utils.data import StackDataset
from transformers import TrainingArguments

from qwthn_onnx.data import tokenize_examples
from qwthn_onnx.integrations import QWTHNTrainer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    add_trainer_arguments(parser, "qwthn-trainer")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="CHECKPOINT",
        help="continue from OUTPUT's last checkpoint, or from CHECKPOINT",
    )
    return parser


def run(argv: list[str] | None = None) -> QWTHNTrainer:
    args = build_parser().parse_args(argv)
    if args.resume is True and not args.output.is_dir():
        raise UsageError(f"--resume: {args.output} holds no checkpoint yet; train without it first")
    base, tokenizer = load_base(args.model, args.seed)
    model = adapt(base, args)  # the base is frozen; only adapter parameters train

    # Right-padded rows with labels -100 where no loss falls (the prompt, the padding).
    data = tokenize_examples(examples(args), tokenizer, args.max_length)
    dataset = StackDataset(
        input_ids=data.input_ids, attention_mask=data.attention_mask, labels=data.labels
    )

    training_args = TrainingArguments(**trainer_options(args))
    # QWTHNTrainer is Trainer, except that checkpoints hold the adapter, not the frozen base.
    trainer = QWTHNTrainer(model=model, args=training_args, train_dataset=dataset)
    trainer.train(resume_from_checkpoint=args.resume)
    trainer.save_model()  # the final adapter, in OUTPUT/

    report(trainer, args.output)
    return trainer


if __name__ == "__main__":
    sys.exit(run_main(run))
