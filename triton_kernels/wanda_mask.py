"""Fused Wanda score + keep-mask selection (True = kept).

score[i, j] = |W[i, j]| * sqrt(sq_norm[j]) in fp32, formed on the fly inside the selection kernels of
`select_mask.py` (never written to memory). Unstructured: each row prunes its int(in * s) lowest
scores (or floor(float64(s_r) * in) with per-row sparsity), ties lowest column first, found by a
per-row radix select; N:M: the n lowest of every m consecutive columns. sqrt(sq_norm) is one
length-`in` vector, taken with torch so it is bit-identical to the torch backend's score.
"""
from __future__ import annotations

import torch

from sparsekit.triton_kernels.select_mask import select_rows


def wanda_mask(weight: torch.Tensor, sq_norm: torch.Tensor, sparsity, n: int, m: int) -> torch.Tensor:
    """Triton backend of sparsekit.ops.wanda_mask (inputs already validated)."""
    norm = sq_norm.float().sqrt().contiguous()
    return select_rows(weight, sparsity, n, m, norm=norm)
