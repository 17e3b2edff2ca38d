"""Train a :class:`QWTHNModel` with the ecosystem's trainers: transformers ``Trainer`` and TRL's
``SFTTrainer``.

Why a trainer subclass: ``Trainer`` saves a model through ``save_pretrained`` when it is a
``PreTrainedModel`` or a ``PeftModel`` and otherwise writes the module's whole state dict, which
for a QWTHN model is a full copy of the frozen base (and which safetensors refuses for models
with tied embeddings); when resuming, it loads adapter files only into a ``PeftModel``. It has no
hook for another adapter kind (``TrainerCallback.on_save`` runs after the weights are written),
so :class:`QWTHNTrainerMixin` overrides the three methods that save and load model weights.

The mixin hands the trainer the adapted transformers model (``qwthn_model.base_model``, whose
target layers now hold the adapters and whose other weights are frozen) rather than the wrapper:
that is the ``PreTrainedModel`` both trainers are written for (signature-based column
filtering, gradient checkpointing, TRL's fused LM head). Checkpoints then hold what PEFT's
hold: ``adapter_config.json`` + ``adapter_model.safetensors`` (plus the optimizer and trainer
state), which :func:`qwthn_onnx.adapter.load_adapter` attaches to a fresh base model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from qwthn_onnx.adapter import AdapterError, QWTHNModel
from qwthn_onnx.data import DataError, Example

# QWTHNSFTTrainer is built on first access (see __getattr__), so TRL stays optional.
__all__ = ["QWTHNSFTTrainer", "QWTHNTrainer", "QWTHNTrainerMixin", "sft_records"]  # noqa: F822


class QWTHNTrainerMixin:
    """Put before a ``Trainer`` subclass: ``class MyTrainer(QWTHNTrainerMixin, Trainer)``.

    Takes a :class:`QWTHNModel` as ``model``; saves and resumes its adapter, PEFT-style. The
    trained model is ``trainer.qwthn_model`` (``trainer.model`` is its adapted transformers
    model). DDP with ``torchrun`` works (on CPU with ``use_cpu=True``, without which Trainer runs
    each process as a job of its own: refused). Trainer's FSDP and DeepSpeed integrations are
    refused (their checkpoints hold whole models): see ``examples/train_distributed.py`` for
    FSDP2.
    """

    def __init__(self, model: QWTHNModel, *args: Any, **kwargs: Any) -> None:
        if not isinstance(model, QWTHNModel):
            raise TypeError(
                f"{type(self).__name__} trains a QWTHNModel, got {type(model).__name__}: wrap "
                "your model first, QWTHNModel(base_model, QWTHNConfig(...))"
            )
        if kwargs.get("peft_config") is not None:
            raise AdapterError(
                "peft_config would add PEFT adapters on top of the QWTHN ones: pass "
                "peft_config=None (the QWTHN adapters are already in the model)"
            )
        self.qwthn_model = model
        super().__init__(model.base_model, *args, **kwargs)
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.args.world_size == 1:
            raise AdapterError(
                f"launched as {launched} processes, but Trainer runs each as a separate job "
                "(each on all the data, all writing the same files): without a GPU, pass "
                "use_cpu=True in the training arguments to train them as one distributed job"
            )
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise AdapterError(
                "Trainer's FSDP and DeepSpeed integrations save whole-model checkpoints, which "
                "QWTHN models do not support; launch with torchrun (DDP) instead, or use "
                "fully_shard in your own loop (examples/train_distributed.py --strategy fsdp2)"
            )

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the adapter (not the frozen base) where Trainer would write the model."""
        if not self.args.should_save:
            return
        directory = Path(output_dir or self.args.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.qwthn_model.write_adapter_files(directory)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(directory)
        torch.save(self.args, directory / TRAINING_ARGS_NAME)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        self.qwthn_model.load_adapter_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self.qwthn_model.load_adapter_weights(self.state.best_model_checkpoint)


class QWTHNTrainer(QWTHNTrainerMixin, Trainer):
    """``transformers.Trainer`` for a :class:`QWTHNModel` (see :class:`QWTHNTrainerMixin`)."""


def _sft_trainer_class() -> type:
    try:
        from trl import SFTTrainer
    except ImportError as e:
        raise ImportError(
            "QWTHNSFTTrainer needs TRL: pip install 'qwthn-onnx[trainers]' (or pip install trl)"
        ) from e

    class QWTHNSFTTrainer(QWTHNTrainerMixin, SFTTrainer):
        """TRL's ``SFTTrainer`` for a :class:`QWTHNModel` (see :class:`QWTHNTrainerMixin`);
        pass ``peft_config=None`` (the default)."""

    QWTHNSFTTrainer.__module__ = __name__
    return QWTHNSFTTrainer


def __getattr__(name: str) -> Any:
    if name == "QWTHNSFTTrainer":
        cls = _sft_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sft_records(examples: Sequence[Example]) -> list[dict[str, Any]]:
    """Examples (from :func:`qwthn_onnx.data.load_examples`) as records in TRL's dataset formats,
    for ``datasets.Dataset.from_list``, trained on what ``qwthn-train`` trains:

    - plain records: ``{"prompt", "completion"}`` strings (TRL trains the completion);
    - conversations that train one answer (the usual one-turn chat, or earlier answers with
      OpenAI ``"weight": 0``): conversational ``{"prompt": [...], "completion": [answer]}``,
      which TRL trains with any chat template;
    - otherwise ``{"messages": [...]}``, to train with ``assistant_only_loss=True``, which needs
      a chat template with ``{% generation %}`` markers (or one TRL can patch). Every assistant
      turn is then trained, so a conversation training some answers but not others is refused.

    Turns after the last trained answer carry no loss and are left out.
    """
    conversations = [ex for ex in examples if ex.messages]
    if not conversations:
        return [{"prompt": ex.prompt, "completion": ex.completion} for ex in examples]
    if len(conversations) < len(examples):
        raise DataError(
            "the examples mix plain records and conversations; a TRL dataset takes one format, "
            "so train them separately"
        )
    one_answer = all(sum(m.trained for m in ex.messages) == 1 for ex in conversations)
    records = []
    for i, ex in enumerate(conversations):
        last = max(j for j, m in enumerate(ex.messages) if m.trained)
        turns = [{"role": m.role, "content": m.content} for m in ex.messages[: last + 1]]
        if one_answer:
            records.append({"prompt": turns[:-1], "completion": turns[-1:]})
            continue
        if any(m.role == "assistant" and not m.trained for m in ex.messages[:last]):
            raise DataError(
                f"{ex.source or f'example {i}'}: trains some assistant turns but not others "
                "(weight 0), which TRL's SFTTrainer cannot express: it trains either one answer "
                "(prompt/completion) or every assistant turn (messages); split the conversation, "
                "or train with qwthn-train, which honours the weights"
            )
        records.append({"messages": turns})
    return records
