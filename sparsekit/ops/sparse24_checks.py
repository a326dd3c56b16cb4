"""Argument checks of the 2:4 ops, on metadata only (no host sync): dtypes, the CUTLASS shape rules,
a compressed (values, meta) pair and sparse24_matmul's operands. Shared by the op (`ops/sparse24.py`)
and its launch plans (`ops/sparse24_launch.py`), which sit below the op and so cannot import it.
"""
from __future__ import annotations

import torch

from sparsekit.checks import KERNEL_DTYPES, check_float_tensor

DTYPES = KERNEL_DTYPES
ROW_MULTIPLE = 32   # N: one CUTLASS meta tile covers 32 rows
COL_MULTIPLE = 64   # K: torch's semi-structured minimum for 16-bit types


def check_shape_24(rows: int, cols: int, name: str = "weight") -> None:
    """N % 32 == 0 and K % 64 == 0, or an error telling how much to pad."""
    bad = []
    if rows % ROW_MULTIPLE:
        bad.append(f"out_features N={rows} is not a multiple of {ROW_MULTIPLE} (pad {-rows % ROW_MULTIPLE} zero rows)")
    if cols % COL_MULTIPLE:
        bad.append(f"in_features K={cols} is not a multiple of {COL_MULTIPLE} (pad {-cols % COL_MULTIPLE} zero columns)")
    if bad:
        raise ValueError(
            f"{name} of shape ({rows}, {cols}) does not fit the 2:4 CUTLASS layout: " + "; ".join(bad) + ". "
            "Pad with torch.nn.functional.pad(weight, (0, pad_cols, 0, pad_rows)), pad x's last dim with zeros "
            "the same way and slice the extra output columns off, or keep this layer dense"
        )


def check_compressed(values: torch.Tensor, meta: torch.Tensor) -> tuple[int, int]:
    """Validate a (values, meta) pair; returns the dense (N, K)."""
    check_float_tensor(values, "values", "for 2:4")
    if not isinstance(meta, torch.Tensor):
        raise TypeError(f"meta must be a torch.Tensor, got {type(meta).__name__}")
    if values.dim() != 2:
        raise ValueError(f"values must be 2-D (N, K/2), got shape {tuple(values.shape)}")
    if meta.dtype != torch.int16:
        raise TypeError(f"meta must be int16 (torch's CUTLASS layout for 16-bit values), got {meta.dtype}; build it with compress_24")
    n, k = values.shape[0], values.shape[1] * 2
    if tuple(meta.shape) != (n, k // 16):
        raise ValueError(f"meta must have shape (N, K/16) = ({n}, {k // 16}) for values of shape {tuple(values.shape)}, got {tuple(meta.shape)}")
    if meta.device != values.device:
        raise ValueError(f"values is on {values.device} but meta is on {meta.device}; move both with .to(device)")
    check_shape_24(n, k, name="the dense weight")
    return n, k


def check_matmul_operands(x, values, meta, bias) -> tuple[int, int]:
    """Validate sparse24_matmul's operands without touching their data (no host sync); returns (N, K)."""
    n, k = check_compressed(values, meta)
    check_float_tensor(x, "x", "for 2:4")
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x must have shape (..., K) with K={k} (in_features of the weight), got {tuple(x.shape)}")
    if x.dtype != values.dtype:
        raise TypeError(f"x is {x.dtype} but the weight values are {values.dtype}; cast x with .to({values.dtype})")
    if x.device != values.device:
        raise ValueError(f"x is on {x.device} but the weight is on {values.device}; move them to one device")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dim() != 1 or bias.shape[0] != n:
            raise ValueError(f"bias must be a 1-D tensor of {n} entries (out_features), got {getattr(bias, 'shape', type(bias).__name__)}")
        if bias.dtype != x.dtype or bias.device != x.device:
            raise TypeError(f"bias must match x ({x.dtype} on {x.device}), got {bias.dtype} on {bias.device}")
    return n, k
