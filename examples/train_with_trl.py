"""Fine-tune QWTHN adapters on chat data with TRL's ``SFTTrainer``.

    python examples/train_with_trl.py                            # tiny demo model, no downloads
    python examples/train_with_trl.py --model DIR --data chat.jsonl --output out

The data become records in TRL's formats (``qwthn_onnx.integrations.sft_records``): one-answer
conversations as conversational prompt/completion, conversations with several trained answers
as ``{"messages": [...]}`` (assistant turns only), plain records as prompt/completion strings;
conversations are rendered with the model's chat template. The loss falls where qwthn-train
puts it. OUTPUT/ holds the adapter, as in the Trainer example.
"""

from __future__ import annotations

import argparse
import sys

from datasets import Dataset
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
from trl import SFTConfig

from qwthn_onnx.data import Example, Message
from qwthn_onnx.integrations import QWTHNSFTTrainer, sft_records

# The demo tokenizer has one token per character and no chat template: this one renders a
# conversation as "<bos>23&58=81<eos>" and marks the assistant's reply (with its end-of-turn
# token) with TRL's {% generation %} tags, so that only the reply is trained.
DEMO_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + eos_token }}"
    "{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}"
    "{% endfor %}"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    add_trainer_arguments(parser, "qwthn-sft")
    return parser


def chat_examples(args: argparse.Namespace) -> list[Example]:
    """The ``--data`` file, or the demo task as one-turn conversations."""
    loaded = examples(args)
    if args.data is not None:
        return loaded
    return [
        Example(messages=(Message("user", ex.prompt), Message("assistant", ex.completion, True)))
        for ex in loaded
    ]


def run(argv: list[str] | None = None) -> QWTHNSFTTrainer:
    args = build_parser().parse_args(argv)
    base, tokenizer = load_base(args.model, args.seed)
    if args.model is None:
        tokenizer.chat_template = DEMO_CHAT_TEMPLATE
    model = adapt(base, args)

    records = sft_records(chat_examples(args))
    chat = "messages" in records[0] or isinstance(records[0]["prompt"], list)
    if chat and tokenizer.chat_template is None:
        raise UsageError(
            f"the tokenizer of {args.model} has no chat template, which conversations need; "
            "use an instruct model, or plain prompt/completion records"
        )
    config = SFTConfig(
        **trainer_options(args),
        max_length=args.max_length,
        # {"messages"} records (several answers per conversation) train the assistant turns
        # only; prompt/completion records always train the completion only.
        assistant_only_loss="messages" in records[0],
        bf16=False,  # float32, as in the Trainer example (TRL's default is bf16 autocast)
    )
    try:
        # peft_config stays None: the model already carries its (QWTHN) adapters.
        trainer = QWTHNSFTTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(records),
            processing_class=tokenizer,
        )
    except ValueError as e:  # TRL's word on the data or the chat template
        raise UsageError(
            f"{e}\n(conversations that train several answers need a chat template that marks "
            "them with {% generation %}, or one TRL can patch; one-answer conversations work "
            "with any template)"
        ) from e
    trainer.train()
    trainer.save_model()

    report(trainer, args.output)
    return trainer


if __name__ == "__main__":
    sys.exit(run_main(run))
