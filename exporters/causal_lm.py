"""A causal LM as one exportable function of flat tensors: prefill and decode in one graph.

``CausalLMWithCache`` takes the inputs named in :mod:`qwthn_onnx.runtime.signature` and returns
logits plus the updated cache, building the transformers ``DynamicCache`` inside ``forward`` so
the exporter only ever sees tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from qwthn_onnx.runtime.signature import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    past_names,
    present_names,
)

__all__ = ["SUPPORTED_ARCHITECTURES", "CacheGeometry", "CausalLMWithCache", "sample_inputs"]

# Architectures whose export, fallback run and generation are tested end to end. Others may
# work, but the exporter refuses them rather than risk a silently wrong graph. (Mistral is not
# among them: its sliding-window cache makes torch.export bound the past length by the window.)
SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    "GPT2LMHeadModel",
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
)


@dataclass(frozen=True)
class CacheGeometry:
    """Shape of one layer's cached keys/values: ``[batch, num_kv_heads, length, head_dim]``."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    @torch.no_grad()
    def probe(cls, model: nn.Module) -> CacheGeometry:
        """Read the geometry from one real forward pass (no per-architecture config reading)."""
        ids = torch.zeros(1, 1, dtype=torch.long)
        cache = model(input_ids=ids, use_cache=True).cache
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        key = layers[0][0]
        return cls(num_layers=len(layers), num_kv_heads=key.shape[1], head_dim=key.shape[3])

    def input_names(self) -> list[str]:
        names = [INPUT_IDS, ATTENTION_MASK, POSITION_IDS]
        for layer in range(self.num_layers):
            names += past_names(layer)
        return names

    def output_names(self) -> list[str]:
        names = [LOGITS]
        for layer in range(self.num_layers):
            names += present_names(layer)
        return names


class CausalLMWithCache(nn.Module):
    """``(input_ids, attention_mask, position_ids, *past) -> (logits, *present)``."""

    def __init__(self, model: nn.Module, geometry: CacheGeometry) -> None:
        super().__init__()
        self.model = model
        self.geometry = geometry

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        pairs = list(zip(past[0::2], past[1::2], strict=True))
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def sample_inputs(
    geometry: CacheGeometry,
    batch: int,
    sequence: int,
    past: int,
    vocab_size: int,
    dtype: torch.dtype,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random inputs in the export signature: token ids, a full mask, positions after the past."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        INPUT_IDS: torch.randint(0, vocab_size, (batch, sequence), generator=g),
        ATTENTION_MASK: torch.ones(batch, past + sequence, dtype=torch.long),
        POSITION_IDS: torch.arange(past, past + sequence).expand(batch, sequence).contiguous(),
    }
    shape = (batch, geometry.num_kv_heads, past, geometry.head_dim)
    for layer in range(geometry.num_layers):
        for name in past_names(layer):
            inputs[name] = torch.randn(shape, generator=g).to(dtype)
    return inputs
