"""A small, deterministic causal-LM training loop: whatever requires grad is trained.

Used for QWTHN fine-tuning (only adapter parameters require grad) and, in the demo, for briefly
pre-training the tiny base. Same seed, same data, same thread count -> identical runs; a run
resumed from one of its checkpoints is the uninterrupted run, bit for bit.

Options follow transformers' Trainer where they overlap: steps or epochs, gradient
accumulation normalised by trained tokens (as ``num_items_in_batch``), ``get_scheduler``'s
schedules, evaluation every N steps, ``checkpoint-<step>/`` directories with
``save_total_limit``, bf16 autocast. ``docs/training.md`` is the user guide.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from qwthn_onnx import __version__
from qwthn_onnx._io import atomic_directory, atomic_path
from qwthn_onnx.adapter import QWTHNModel
from qwthn_onnx.data import TokenizedData

__all__ = [
    "CHECKPOINT_FILE",
    "LR_SCHEDULERS",
    "MIXED_PRECISION_MODES",
    "OPTION_HELP",
    "STATE_FILE",
    "TRAINABLE_FILE",
    "TrainingArguments",
    "TrainingError",
    "TrainingResult",
    "check_checkpoint_dir",
    "check_resume_options",
    "evaluate",
    "latest_checkpoint",
    "resolve_checkpoint",
    "train",
]

DEFAULT_STEPS = 200
# "warmup_cosine" (the default) trains at lr/warmup_steps from the first step; transformers'
# schedules start warmup at lr 0. The others are transformers.get_scheduler names that need
# nothing but the warmup and total steps.
LR_SCHEDULERS: tuple[str, ...] = (
    "warmup_cosine",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
MIXED_PRECISION_MODES: tuple[str, ...] = ("no", "bf16")

CHECKPOINT_FILE = "checkpoint.json"  # step, options, identity of model and data (readable)
TRAINABLE_FILE = "trainable.safetensors"  # every trained parameter, by its name in the model
STATE_FILE = "training_state.pt"  # optimizer, scheduler, RNG and data order, history
_CHECKPOINT_FORMAT = "qwthn-onnx training checkpoint"
_CHECKPOINT_VERSION = 1
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
# The options that decide what a run computes: a resumed run must keep them to equal the
# uninterrupted one (logging, evaluation and checkpointing options may change).
_RUN_DEFINING = (
    "steps",
    "epochs",
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler",
    "weight_decay",
    "warmup_steps",
    "max_grad_norm",
    "seed",
    "mixed_precision",
)
_INTEGER_MINIMUMS = {
    "steps": 1,
    "batch_size": 1,
    "warmup_steps": 0,
    "log_every": 1,
    "gradient_accumulation_steps": 1,
    "eval_every": 1,
    "checkpoint_every": 1,
    "save_total_limit": 1,
}
_OPTIONAL_INTEGERS = ("steps", "eval_every", "checkpoint_every", "save_total_limit")


class TrainingError(ValueError):
    """Training options, checkpoints or a run that cannot work; the message says what to do."""


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainingArguments:
    """Options of :func:`train`; ``qwthn-train`` has a flag for each (``docs/training.md``)."""

    steps: int | None = _option(
        None, f"optimizer steps (default {DEFAULT_STEPS} when epochs is not given either)"
    )
    batch_size: int = _option(32, "examples per forward pass (one micro-batch)")
    learning_rate: float = _option(3e-3, "peak learning rate of AdamW")
    weight_decay: float = _option(0.0, "AdamW's decoupled weight decay")
    warmup_steps: int = _option(10, "optimizer steps of linear learning-rate warmup")
    max_grad_norm: float = _option(1.0, "clip the gradient norm to this (0: no clipping)")
    seed: int = _option(0, "seeds the data order and torch's RNG (dropout)")
    log_every: int = _option(10, "the progress bar shows the mean loss of this many steps")
    epochs: float | None = _option(
        None,
        "passes over the training data instead of steps: steps = ceil(epochs x examples / "
        "(batch_size x gradient_accumulation_steps)); batches run on across epoch ends",
    )
    gradient_accumulation_steps: int = _option(
        1,
        "micro-batches per optimizer step; the loss is normalised by the trained tokens of "
        "all of them, so a step equals one batch of batch_size x this many examples",
    )
    lr_scheduler: str = _option(
        "warmup_cosine",
        "learning-rate schedule: warmup_cosine (warmup from lr/warmup_steps at the first step, "
        "then cosine to 0) or a transformers.get_scheduler name: " + ", ".join(LR_SCHEDULERS[1:]),
    )
    eval_every: int | None = _option(
        None, "evaluate on the validation set every N optimizer steps (and always at the end)"
    )
    checkpoint_every: int | None = _option(
        None, "write checkpoint_dir/checkpoint-<step>/ every N optimizer steps and at the end"
    )
    checkpoint_dir: str | None = _option(None, "where checkpoint-<step>/ directories go")
    save_total_limit: int | None = _option(None, "keep only the newest N checkpoints")
    mixed_precision: str = _option(
        "no", "'bf16': autocast the base model to bfloat16 (adapters stay float32); 'no'"
    )

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise TrainingError(
                f"give steps or epochs, not both (got steps={self.steps}, epochs={self.epochs})"
            )
        if self.steps is None and self.epochs is None:
            self.steps = DEFAULT_STEPS
        for name, minimum in _INTEGER_MINIMUMS.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_INTEGERS:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TrainingError(f"{name} must be an integer, got {value!r}")
            if value < minimum:
                raise TrainingError(f"{name} must be >= {minimum}, got {value}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TrainingError(f"seed must be an integer, got {self.seed!r}")
        self._check_number("learning_rate", positive=True)
        self._check_number("weight_decay", positive=False)
        self._check_number("max_grad_norm", positive=False)
        if self.epochs is not None:
            self._check_number("epochs", positive=True)
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise TrainingError(
                f"lr_scheduler {self.lr_scheduler!r} is not one of {', '.join(LR_SCHEDULERS)}"
            )
        if self.mixed_precision not in MIXED_PRECISION_MODES:
            raise TrainingError(
                f"mixed_precision {self.mixed_precision!r} is not one of "
                f"{', '.join(MIXED_PRECISION_MODES)}"
            )
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = os.fspath(self.checkpoint_dir)  # a Path is not plain metadata
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            raise TrainingError("checkpoint_every needs checkpoint_dir (where checkpoints go)")
        if self.save_total_limit is not None and self.checkpoint_every is None:
            raise TrainingError("save_total_limit needs checkpoint_every (no checkpoints to keep)")

    def _check_number(self, name: str, positive: bool) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TrainingError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise TrainingError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps of the run: ``steps``, or what ``epochs`` of ``n_examples`` take."""
        if self.steps is not None:
            return self.steps
        per_step = self.batch_size * self.gradient_accumulation_steps
        return max(1, math.ceil(self.epochs * n_examples / per_step))


@dataclass
class TrainingResult:
    """The run's history; ``to_dict`` is the ``training`` metadata stored in model.pt.

    ``losses`` and ``learning_rates`` have one entry per optimizer step (the loss is the mean
    over the step's trained tokens); ``evaluations`` one ``{"step", "loss", "perplexity",
    "tokens"}`` per evaluation on the validation set.
    """

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trainable_parameters: int = 0
    args: dict[str, Any] = field(default_factory=dict)
    learning_rates: list[float] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    resumed_from: str | None = None

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
            "learning_rates": list(self.learning_rates),
            "evaluations": [dict(e) for e in self.evaluations],
            "resumed_from": self.resumed_from,
        }


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _scheduler(
    args: TrainingArguments, optimizer: torch.optim.Optimizer, total: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if args.lr_scheduler == "warmup_cosine":
        factor = functools.partial(_warmup_cosine, warmup=args.warmup_steps, total=total)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    from transformers import get_scheduler

    return get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=total
    )


def _autocast(mode: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    """A factory of the forward pass's autocast context (a no-op for ``"no"``)."""
    if mode == "no":
        return contextlib.nullcontext
    if mode not in MIXED_PRECISION_MODES:
        raise TrainingError(f"mixed_precision {mode!r} is not one of {MIXED_PRECISION_MODES}")
    supported = torch.amp.is_autocast_available(device.type) and (
        device.type != "cuda" or torch.cuda.is_bf16_supported()
    )
    if not supported:
        raise TrainingError(
            f"mixed_precision='bf16' is not supported on this {device.type} device; "
            "train with mixed_precision='no' (qwthn-train --mixed-precision no)"
        )
    return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)


def _trained_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the causal-LM loss counts: labels shifted by one, -100 ignored (as transformers)."""
    return int((batch["labels"][:, 1:] != -100).sum())


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: TokenizedData,
    batch_size: int = 32,
    mixed_precision: str = "no",
) -> dict[str, float]:
    """Mean loss over every trained token of ``data`` and its perplexity (``exp(loss)``).

    Runs in eval mode (no dropout) and restores the model's mode. Each batch's mean loss is
    weighted by its trained tokens, so the figure does not depend on the batching. Returns
    ``{"loss", "perplexity", "tokens"}``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TrainingError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = _device(model)
    autocast = _autocast(mixed_precision, device)
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for start in range(0, len(data), batch_size):
            batch = data.batch(torch.arange(start, min(start + batch_size, len(data))))
            n = _trained_tokens(batch)
            if n == 0:
                continue
            with autocast():
                loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            total += loss.item() * n
            tokens += n
    finally:
        model.train(was_training)
    if tokens == 0:
        raise TrainingError("the validation data hold no trained token to evaluate")
    loss = total / tokens
    return {"loss": loss, "perplexity": _perplexity(loss), "tokens": tokens}


@dataclass
class _RunState:
    """Everything besides the weights that the next step depends on: what a checkpoint keeps
    so that a resumed run is the uninterrupted one."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # draws the data order
    result: TrainingResult  # the history so far
    device: torch.device
    order: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    step: int = 0  # optimizer steps done

    def next_rows(self, n_examples: int, batch_size: int) -> torch.Tensor:
        """The next batch's rows: a seeded permutation per epoch, batches running across."""
        if len(self.order) < batch_size:
            permutation = torch.randperm(n_examples, generator=self.generator)
            self.order = torch.cat([self.order, permutation])
        rows, self.order = self.order[:batch_size], self.order[batch_size:]
        return rows

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "order": self.order.clone(),  # only the rows left, not the storage it views
            "losses": self.result.losses,
            "learning_rates": self.result.learning_rates,
            "evaluations": self.result.evaluations,
            "seconds": self.result.seconds,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.order, self.step = state["order"], state["step"]
        self.result.losses, self.result.learning_rates = state["losses"], state["learning_rates"]
        self.result.evaluations, self.result.seconds = state["evaluations"], state["seconds"]


def train(
    model: nn.Module,
    data: TokenizedData,
    args: TrainingArguments,
    description: str = "train",
    progress: bool = True,
    *,
    eval_data: TokenizedData | None = None,
    resume_from: str | Path | None = None,
) -> TrainingResult:
    """Train ``model``'s trainable parameters on ``data`` with AdamW.

    Batches are drawn from a seeded permutation, epoch after epoch; each optimizer step
    accumulates ``args.gradient_accumulation_steps`` micro-batches. The loss is the model's own
    causal-LM loss (labels -100 ignored). With ``eval_data``, the validation loss is computed
    every ``args.eval_every`` steps and at the end. ``resume_from`` (a checkpoint directory, a
    directory of checkpoints, or ``"latest"`` in ``args.checkpoint_dir``) continues a run
    exactly where its checkpoint left it. A non-finite loss stops training with an error.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise TrainingError("the model has no trainable parameters (did you attach adapters?)")
    if args.eval_every is not None and eval_data is None:
        raise TrainingError("eval_every needs eval_data (a validation set to evaluate on)")
    device = _device(model)
    autocast = _autocast(args.mixed_precision, device)
    checkpoint = resolve_checkpoint(resume_from, args.checkpoint_dir) if resume_from else None
    if args.checkpoint_every is not None:
        check_checkpoint_dir(args.checkpoint_dir, resuming=checkpoint is not None)
    total = args.total_steps(len(data))
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(
        list(params.values()), lr=args.learning_rate, weight_decay=args.weight_decay
    )
    scheduler = _scheduler(args, optimizer, total)
    result = TrainingResult(
        trainable_parameters=sum(p.numel() for p in params.values()), args=asdict(args)
    )
    run = _RunState(optimizer, scheduler, generator, result, device)
    identity = None
    if checkpoint is not None or args.checkpoint_every is not None:
        identity = _identity(model, params, data)
    if checkpoint is not None:
        run.restore(_load_checkpoint(checkpoint, identity, args, params))
        result.resumed_from = str(checkpoint)
    model.train()
    started = time.perf_counter() - result.seconds
    bar = tqdm(
        range(run.step, total),
        initial=run.step,
        total=total,
        desc=description,
        disable=not progress,
        dynamic_ncols=True,
    )
    shown: dict[str, str] = {}  # the progress bar's postfix
    for step in bar:
        batches = [
            data.batch(run.next_rows(len(data), args.batch_size))
            for _ in range(args.gradient_accumulation_steps)
        ]
        counts = [_trained_tokens(b) for b in batches]
        tokens = sum(counts)
        if tokens == 0:
            raise TrainingError(f"the batches of step {step} hold no trained token")
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for batch, n in zip(batches, counts, strict=True):
            if n == 0:
                continue
            with autocast():
                loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss.item()} at step {step}; lower the learning rate"
                )
            # Sum of token losses over the whole step / its trained tokens, as one big batch.
            weight = n / tokens
            (loss * weight).backward()
            step_loss += loss.item() * weight
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), args.max_grad_norm)
        result.learning_rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        result.losses.append(step_loss)
        done = run.step = step + 1
        if (done % args.log_every == 0) or done == total:
            window = result.losses[-args.log_every :]
            shown["loss"] = f"{sum(window) / len(window):.4f}"
            bar.set_postfix(shown)
        if eval_data is not None and (
            done == total or (args.eval_every is not None and done % args.eval_every == 0)
        ):
            metrics = evaluate(model, eval_data, args.batch_size, args.mixed_precision)
            result.evaluations.append({"step": done, **metrics})
            shown["eval_loss"] = f"{metrics['loss']:.4f}"
            bar.set_postfix(shown)
            if progress:
                bar.write(
                    f"{description} step {done}: validation loss {metrics['loss']:.4f}, "
                    f"perplexity {metrics['perplexity']:.3f} ({metrics['tokens']} tokens)"
                )
        result.seconds = time.perf_counter() - started
        if args.checkpoint_every is not None and (
            done % args.checkpoint_every == 0 or done == total
        ):
            _save_checkpoint(model, params, run.state(), args, identity, total)
    result.seconds = time.perf_counter() - started
    model.eval()
    return result


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _checkpoints(directory: Path) -> list[Path]:
    """Complete ``checkpoint-<step>`` directories in ``directory``, oldest step first."""
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if (m := _CHECKPOINT_NAME.fullmatch(p.name)) and (p / CHECKPOINT_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The ``checkpoint-<step>`` directory with the highest step in ``directory``, or None."""
    found = _checkpoints(Path(directory))
    return found[-1] if found else None


def resolve_checkpoint(resume_from: str | Path, checkpoint_dir: str | Path | None) -> Path:
    """The checkpoint ``resume_from`` names: ``"latest"`` (in ``checkpoint_dir``), a
    ``checkpoint-<step>`` directory, or a directory holding them (its latest)."""
    if str(resume_from) == "latest":
        if checkpoint_dir is None:
            raise TrainingError("resuming from 'latest' needs checkpoint_dir (where to look)")
        found = latest_checkpoint(checkpoint_dir)
        if found is None:
            raise TrainingError(
                f"no checkpoint to resume from in {checkpoint_dir} (no checkpoint-<step> "
                "directory); give the checkpoint's path, or start without resuming"
            )
        return found
    path = Path(resume_from)
    if (path / CHECKPOINT_FILE).is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise TrainingError(
            f"{path} is not a checkpoint (no {CHECKPOINT_FILE}) nor a directory holding "
            "checkpoint-<step> directories"
        )
    return found


def check_checkpoint_dir(directory: str | Path, resuming: bool) -> None:
    """Fail before any work when checkpoints cannot go to ``directory``: it is a file, or, for
    a new run, it holds an earlier run's checkpoints (resuming and rotation would mix them)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise TrainingError(f"checkpoint directory {directory} is a file; choose a directory")
    latest = latest_checkpoint(directory)
    if latest is not None and not resuming:
        raise TrainingError(
            f"{directory} already holds checkpoints of an earlier run (latest: {latest.name}); "
            "resume it (qwthn-train --resume, train(resume_from='latest')), remove them, or "
            "choose another checkpoint directory"
        )


def _tensors_sha256(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """One digest of named tensors' names, dtypes, shapes and bytes (a checkpoint's identity)."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{list(tensor.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy())
    return digest.hexdigest()


def _identity(model: nn.Module, params: dict[str, nn.Parameter], data: TokenizedData) -> dict:
    """What a checkpoint must match to be resumed: trained parameters, frozen weights, adapter
    configuration and training data (as plain JSON data)."""
    identity: dict[str, Any] = {
        "model": type(model).__name__,
        "trainable": {name: list(p.shape) for name, p in params.items()},
        "frozen_sha256": _tensors_sha256(
            (name, t) for name, t in model.state_dict().items() if name not in params
        ),
        "data_rows": len(data),
        "data_sha256": _tensors_sha256(
            (name, getattr(data, name)) for name in ("input_ids", "attention_mask", "labels")
        ),
    }
    if isinstance(model, QWTHNModel):  # the simulator may change: it computes the same circuit
        config = model.qwthn_config.to_dict()
        identity["adapter_config"] = {k: v for k, v in config.items() if k != "quantum_backend"}
    return json.loads(json.dumps(identity))


def _save_checkpoint(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    state: dict[str, Any],
    args: TrainingArguments,
    identity: dict[str, Any],
    total: int,
) -> Path:
    """Write ``checkpoint-<step>/`` atomically, then drop the oldest beyond the limit."""
    root = Path(args.checkpoint_dir)
    path = root / f"checkpoint-{state['step']}"
    meta = {
        "format": _CHECKPOINT_FORMAT,
        "format_version": _CHECKPOINT_VERSION,
        "step": state["step"],
        "total_steps": total,
        "loss": state["losses"][-1],
        "args": asdict(args),
        "identity": identity,
        "producer": {"qwthn-onnx": __version__, "torch": str(torch.__version__)},
    }
    with atomic_directory(path) as tmp:
        weights = {name: p.detach().cpu().contiguous() for name, p in params.items()}
        with atomic_path(tmp / TRAINABLE_FILE) as file:  # for the mode: safetensors makes 0600
            save_file(weights, file, metadata={"format": "pt"})
        if isinstance(model, QWTHNModel):  # the checkpoint is also a loadable adapter
            model.write_adapter_files(tmp)
        torch.save(state, tmp / STATE_FILE)
        (tmp / CHECKPOINT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if args.save_total_limit is not None:
        for stale in root.glob(".checkpoint-*.deleting"):  # left by a kill mid-deletion
            shutil.rmtree(stale, ignore_errors=True)
        for old in _checkpoints(root)[: -args.save_total_limit]:
            doomed = old.with_name(f".{old.name}.deleting")  # no half-deleted checkpoint-<step>
            os.replace(old, doomed)
            shutil.rmtree(doomed)
    return path


def _load_checkpoint(
    path: Path,
    identity: dict[str, Any],
    args: TrainingArguments,
    params: dict[str, nn.Parameter],
) -> dict[str, Any]:
    """Check that ``path`` continues this very run, load its weights, return its state."""
    meta = check_resume_options(path, args)
    _check_same_model_and_data(path, meta.get("identity", {}), identity)
    try:
        weights = load_file(path / TRAINABLE_FILE)
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except (OSError, SafetensorError) as e:
        raise TrainingError(f"{path}: a checkpoint file is missing or damaged: {e}") from e
    except pickle.UnpicklingError as e:
        raise TrainingError(
            f"{path / STATE_FILE} is refused: it needs arbitrary unpickling to load (it may run "
            "code); training checkpoints hold plain data only"
        ) from e
    except Exception as e:  # torch.load raises many types on damaged input
        raise TrainingError(f"{path / STATE_FILE} is damaged (truncated?): {e}") from e
    if set(weights) != set(params):
        raise TrainingError(f"{path / TRAINABLE_FILE} does not hold this model's parameters")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    return state


def check_resume_options(checkpoint: str | Path, args: TrainingArguments) -> dict[str, Any]:
    """Fail unless ``args`` keep the options of the run that wrote ``checkpoint`` (only
    logging, evaluation and checkpointing may change). Reads ``checkpoint.json`` alone, so a
    caller can check before loading any model; returns its content."""
    path = Path(checkpoint)
    try:
        meta = json.loads((path / CHECKPOINT_FILE).read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"{path / CHECKPOINT_FILE} is not readable: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != _CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a qwthn-onnx training checkpoint")
    saved_args = meta.get("args", {})
    changed = [
        f"{name}={saved_args.get(name)!r} (now {getattr(args, name)!r})"
        for name in _RUN_DEFINING
        if saved_args.get(name) != getattr(args, name)
    ]
    if changed:
        raise TrainingError(
            f"{path} was written with other training options: {', '.join(changed)}; resume "
            "with the same options (only logging, evaluation and checkpointing may change)"
        )
    return meta


def _check_same_model_and_data(path: Path, saved: dict[str, Any], identity: dict[str, Any]) -> None:
    if saved.get("trainable") != identity["trainable"]:
        ours, theirs = identity["trainable"], saved.get("trainable") or {}
        differ = sorted(set(ours) ^ set(theirs)) + [
            n for n in ours if n in theirs and ours[n] != theirs[n]
        ]
        raise TrainingError(
            f"{path} trained other parameters than this model's ({', '.join(differ[:3])}"
            f"{', ...' if len(differ) > 3 else ''}): resume with the model and adapter "
            "configuration it was written with"
        )
    if saved.get("adapter_config") != identity.get("adapter_config"):
        ours, theirs = identity.get("adapter_config") or {}, saved.get("adapter_config") or {}
        differ = sorted(k for k in {*ours, *theirs} if ours.get(k) != theirs.get(k))
        raise TrainingError(
            f"{path} was written for an adapter configured differently (fields "
            f"{', '.join(differ)}): resume with the configuration it was written with"
        )
    if saved.get("frozen_sha256") != identity["frozen_sha256"]:
        raise TrainingError(
            f"{path} was trained on other frozen (base model) weights than this model's: "
            "resume onto the same base model"
        )
    if saved.get("data_sha256") != identity["data_sha256"]:
        raise TrainingError(
            f"{path} was trained on other data ({saved.get('data_rows')} rows; now "
            f"{identity['data_rows']}): resume with the same dataset and tokenisation"
        )


# One line of help per option, for the CLI (the dataclass is the single truth).
OPTION_HELP: dict[str, str] = {f.name: f.metadata["help"] for f in fields(TrainingArguments)}
