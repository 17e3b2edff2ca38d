"""A small, deterministic causal-LM training loop: whatever requires grad is trained.

Used for QWTHN fine-tuning (only adapter parameters require grad) and, in the demo, for briefly
pre-training the tiny base. Same seed, same data, same thread count -> identical runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from qwthn_onnx.data import TokenizedData

__all__ = ["TrainingArguments", "TrainingResult", "train"]


@dataclass
class TrainingArguments:
    steps: int = 200
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass
class TrainingResult:
    """Loss per step and timing; ``to_dict`` is the ``training`` metadata stored in model.pt."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trainable_parameters: int = 0
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """Mean loss of the last ``log_every`` steps (a less noisy figure than the last step)."""
        tail = self.losses[-self.args.get("log_every", 10) :]
        return sum(tail) / len(tail)

    def to_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "seconds": self.seconds,
            "trainable_parameters": self.trainable_parameters,
            "args": dict(self.args),
        }


def _lr_lambda(args: TrainingArguments):
    def factor(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train(
    model: nn.Module,
    data: TokenizedData,
    args: TrainingArguments,
    description: str = "train",
    progress: bool = True,
) -> TrainingResult:
    """Train ``model``'s trainable parameters on ``data`` for ``args.steps`` AdamW steps.

    Batches are drawn from a seeded permutation, epoch after epoch. The loss is the model's own
    causal-LM loss (labels -100 ignored). A non-finite loss stops training with an error.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (did you attach adapters?)")
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(args))
    result = TrainingResult(trainable_parameters=sum(p.numel() for p in params), args=asdict(args))
    order = torch.empty(0, dtype=torch.long)
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(args.steps), desc=description, disable=not progress, dynamic_ncols=True)
    for step in bar:
        if len(order) < args.batch_size:
            order = torch.cat([order, torch.randperm(len(data), generator=generator)])
        index, order = order[: args.batch_size], order[args.batch_size :]
        loss = model(**data.batch(index)).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at step {step}; lower the learning rate"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        result.losses.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            window = result.losses[-args.log_every :]
            bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
