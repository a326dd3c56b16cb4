"""transformers' Conv1D (GPT-2 family) is a Linear whose weight is stored (in, out): the one place that knows it.

It lives in `nn`, the lowest layer that handles modules (`SparseLinear24.from_linear` converts a Conv1D);
`hf/layers.py`, `hf/blocks.py` and `hf/compressed_tensors.py` sit above `nn` (architecture.md §1) and
import it from here. Matched by class name, so transformers is never imported for the check.
"""
from __future__ import annotations

import torch
from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_linear_like(module: nn.Module) -> bool:
    """An nn.Linear or a transformers Conv1D: a layer y = x W^T + b whatever its storage."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The module's weight as (out, in), without autograd history; a view, so in-place writes reach the module."""
    weight = module.weight.data
    return weight.t() if is_conv1d(module) else weight
