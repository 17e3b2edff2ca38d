"""Data-parallel QWTHN fine-tuning on CPU processes (gloo): DDP or FSDP2 (``fully_shard``).

    torchrun --nproc-per-node 2 examples/train_distributed.py --strategy ddp
    torchrun --nproc-per-node 2 examples/train_distributed.py --strategy fsdp2
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no examples/train_distributed.py --strategy ddp
    python examples/train_distributed.py --strategy none   # one process: the same global batches

Every step trains on the same global batch whatever the number of processes: each process takes
its slice, and the loss is normalised by the global count of trained tokens, so N processes
compute the gradients of one process (up to float32 summation order). The adapter is written
to OUTPUT/ (adapter_config.json + adapter_model.safetensors) by the first process.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from example_common import (
    UsageError,
    adapt,
    add_common_arguments,
    examples,
    load_base,
    positive_int,
    run_main,
)
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from qwthn_onnx.adapter import QWTHNModel, check_adapter_directory
from qwthn_onnx.data import TokenizedData, tokenize_examples
from qwthn_onnx.pretrained import locate_model, resolve_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--strategy",
        choices=("ddp", "fsdp2", "none"),
        default="ddp",
        help="ddp: replicate the model; fsdp2: shard parameters (fully_shard per decoder layer "
        "and the whole model); none: plain training, one process only",
    )
    parser.add_argument("--output", type=Path, default=Path("qwthn-distributed"))
    parser.add_argument("--steps", type=positive_int, default=30)
    parser.add_argument(
        "--global-batch-size",
        type=positive_int,
        default=8,
        help="examples per step, over all processes",
    )
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--max-length", type=positive_int, default=256)
    return parser


def launch() -> tuple[int, int]:
    """``(rank, world_size)`` from the launcher's environment; a plain ``python`` run is 1."""
    if "WORLD_SIZE" not in os.environ and "MASTER_ADDR" in os.environ:
        # accelerate's --cpu launcher starts a single process (more need mpirun) and sets
        # MASTER_ADDR only when asked for several.
        raise UsageError(
            "this was launched as one process, not the several asked for (accelerate launch "
            "--cpu starts more only through mpirun); use accelerate launch --multi_gpu "
            "--num_processes N, which starts N processes through torchrun, on CPU too"
        )
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard(model: torch.nn.Module, strategy: str) -> torch.nn.Module:
    """Wrap for data parallelism; the returned module is the one to call."""
    if strategy == "ddp":
        return DistributedDataParallel(model)
    if strategy == "fsdp2":
        # Each decoder layer is its own FSDP unit (gathered just before use); the root holds
        # the rest (embeddings, tied output layer, final norm).
        layer_classes = tuple(model.base_model._no_split_modules or ())
        for module in model.modules():
            if type(module).__name__ in layer_classes:
                fully_shard(module)
        fully_shard(model)
    return model


def run(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rank, world = launch()
    # Every check runs in every process before the first collective, so that a mistake stops
    # them all instead of leaving the others waiting.
    if args.strategy == "none" and world > 1:
        raise UsageError("--strategy none trains one process; choose ddp or fsdp2 to launch more")
    if args.global_batch_size % world:
        raise UsageError(
            f"--global-batch-size {args.global_batch_size} does not split evenly over {world} "
            "processes; use a multiple of the process count"
        )
    check_adapter_directory(args.output)
    if args.model is not None:
        locate_model(args.model)  # a wrong --model fails here, in every process alike

    if world > 1 or args.strategy != "none":
        if "MASTER_ADDR" not in os.environ:  # plain python: a process group of one
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group("gloo")
    try:
        if args.model is not None and world > 1:
            if rank == 0:
                resolve_model(args.model)  # a GGUF is converted once, by one process
            dist.barrier()
        base, tokenizer = load_base(args.model, args.seed)
        model = adapt(base, args)  # identical in every process: same weights, same seed
        data = tokenize_examples(examples(args), tokenizer, args.max_length)
        if args.global_batch_size > len(data):
            raise UsageError(f"--global-batch-size {args.global_batch_size} > {len(data)} examples")
        train(model, data, args, rank, world)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train(
    model: QWTHNModel, data: TokenizedData, args: argparse.Namespace, rank: int, world: int
) -> None:
    wrapped = shard(model, args.strategy)
    # Created after sharding: FSDP2 replaces the parameters with their shards.
    trainable = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(trainable, lr=args.lr)
    else:
        optimizer = torch.optim.SGD(trainable, lr=args.lr)

    # The same shuffled order in every process (same seed): epoch after epoch, as needed.
    size, local = args.global_batch_size, args.global_batch_size // world
    generator = torch.Generator().manual_seed(args.seed)
    epochs = -(-args.steps * size // len(data))
    order = torch.cat([torch.randperm(len(data), generator=generator) for _ in range(epochs)])
    for step in range(args.steps):
        first = step * size + rank * local  # this process's slice of the global batch
        batch = data.batch(order[first : first + local])
        # Normalise by the trained tokens of the whole global batch (labels shift by one), and
        # undo the mean over processes that DDP and FSDP2 apply to gradients.
        trained = (batch["labels"][:, 1:] != -100).sum()
        if dist.is_initialized():
            dist.all_reduce(trained)
        loss = wrapped(**batch, num_items_in_batch=trained).loss
        (loss * world).backward()
        optimizer.step()
        optimizer.zero_grad()
        loss = loss.detach()
        if dist.is_initialized():
            dist.all_reduce(loss)  # the global batch's mean token loss
        if rank == 0:
            print(f"step {step + 1} loss {loss.item():.6f}", flush=True)

    # Every process takes part (FSDP2 gathers the shards); the first one writes.
    model.save_adapter(args.output, is_main_process=rank == 0)
    if rank == 0:
        print(f"adapter saved in {args.output}/ ({world} process(es), {args.strategy})")


if __name__ == "__main__":
    sys.exit(run_main(run))
