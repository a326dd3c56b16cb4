"""Models the benchmarks build without downloads: LLaMA-shaped random models and a tiny byte tokenizer."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

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


def byte_tokenizer():
    """A 256-token byte-level tokenizer for the tiny models (a real HF PreTrainedTokenizerFast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=alphabet[0])


def block_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The nn.Linear layers inside the transformer blocks (what pruning targets; lm_head excluded)."""
    from sparsekit.hf.blocks import find_blocks

    path, blocks = find_blocks(model)
    return [(f"{path}.{i}.{name}", module) for i, block in enumerate(blocks)
            for name, module in block.named_modules() if isinstance(module, nn.Linear)]


@torch.no_grad()
def prune_24_magnitude_(model: nn.Module) -> int:
    """2:4-prune every block Linear by magnitude, in place (no calibration); returns how many."""
    from benchmarks.common import prune_24_by_magnitude

    layers = block_linears(model)
    for _, linear in layers:
        linear.weight.copy_(prune_24_by_magnitude(linear.weight))
    return len(layers)


def count_sparse24_modules(model: nn.Module) -> int:
    try:
        from sparsekit.nn import SparseLinear24
    except ImportError:
        return 0
    return sum(isinstance(m, SparseLinear24) for m in model.modules())


def parameter_bytes(model: nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
