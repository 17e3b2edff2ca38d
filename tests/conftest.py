import os

# The suite runs tiny models that gain nothing from a second thread, while OpenMP threads that
# spin-wait on a shared, busy machine were measured 70x slower per step. Set before torch loads;
# subprocesses (CLI tests) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from qwthn_onnx.demo import build_char_tokenizer, build_tiny_model


@pytest.fixture(scope="session")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    """Factory for a fresh tiny causal LM of a demo architecture (random weights)."""

    def make(arch: str = "llama", seed: int = 0):
        return build_tiny_model(tokenizer, arch, seed=seed)

    return make


@pytest.fixture
def batch(tokenizer):
    ids = torch.tensor([tokenizer.encode("12+34=46 and more text", add_special_tokens=False)] * 2)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
