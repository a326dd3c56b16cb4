"""Models the benchmarks build without downloads: LLaMA-shaped random models.

The tiny model and byte tokenizer of the --quick runs are the tests' (`tests.helpers`), as in Liger-Kernel,
whose benchmarks import their baselines from the tests; run the suite from the repository root.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from tests.helpers import byte_tokenizer  # noqa: F401  (bench_accuracy's import; new code imports tests.helpers)

LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)
TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_llama(shape: dict, *, device, dtype=torch.bfloat16, layers: int | None = None, seed: int = 0) -> nn.Module:
    """A LlamaForCausalLM with random weights (HF init), built directly on `device` in `dtype`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**shape, **({"num_hidden_layers": layers} if layers else {})})
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        model = LlamaForCausalLM(config)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def prune_24_magnitude_(model: nn.Module) -> int:
    """2:4-prune by magnitude, in place (no calibration), the layers `sparsekit.sparsify` converts; returns how many."""
    from benchmarks.common import prune_24_by_magnitude
    from sparsekit.hf.layers import select_layers

    layers = select_layers(model, "")
    for view in layers:
        view.set_weight(prune_24_by_magnitude(view.weight))
    return len(layers)


def parameter_bytes(model: nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
