"""Input checks shared by the ops, the pruning config and the pruners: each error says what is wrong and how to fix it."""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(t, name: str, *, ndim: int | None = None, float_dtype: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if float_dtype and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float32/float16/bfloat16), got {t.dtype}; cast it with .float()")


KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what the fused kernels compute in


def check_float_tensor(t, name: str, purpose: str = "") -> None:
    """A float16/bfloat16/float32 tensor, or an error naming the cast; `purpose` ends the message ("for 2:4")."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32{' ' + purpose if purpose else ''}, got {t.dtype}; "
                        "cast it with .to(torch.bfloat16)")


def check_weight(weight, name="weight") -> None:
    """A finite 2-D float weight (out, in)."""
    check_tensor(weight, name, ndim=2)
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name} contains NaN/Inf; the checkpoint is broken or was loaded in a dtype that overflows")


def check_sq_norm(sq_norm, in_features) -> None:
    """Wanda's per-input-feature sum of squares: finite and >= 0, one entry per input feature."""
    check_vector(sq_norm, "sq_norm", in_features)
    if not torch.isfinite(sq_norm).all() or (sq_norm < 0).any():
        raise ValueError("sq_norm must be finite and >= 0 (a sum of squares, e.g. ActivationStats.sq_norm)")


def check_int(value, name: str, minimum: int) -> int:
    """A Python int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_nonneg_number(value, name: str) -> float:
    """A finite real number >= 0 (not a bool), returned as a float."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_square(matrix: torch.Tensor, name: str, size: int) -> None:
    """A (size, size) matrix over a weight's input features, e.g. a Hessian."""
    if tuple(matrix.shape) != (size, size):
        raise ValueError(f"{name} has shape {tuple(matrix.shape)}; expected ({size}, {size}) for a weight with {size} input features")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{k} on {v}" for k, v in devices.items())
        raise ValueError(f"tensors must be on one device, got {desc}; move them with .to(device)")


def check_vector(t, name: str, length: int) -> None:
    check_tensor(t, name, ndim=1)
    if t.numel() != length:
        raise ValueError(f"{name} must have {length} entries (one per input feature), got {t.numel()}")


def check_mask(keep, name: str, shape: tuple[int, ...]) -> None:
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
        got = keep.dtype if isinstance(keep, torch.Tensor) else type(keep).__name__
        raise TypeError(f"{name} must be a bool tensor (True = kept), got {got}")
    if tuple(keep.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(keep.shape)}")


def check_sparsity(sparsity) -> float:
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise TypeError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (fraction of weights pruned), got {value}")
    return value


def check_nm(n: int, m: int, in_features: int | None = None) -> None:
    if m <= 0 or n <= 0:
        raise ValueError(f"N:M needs n >= 1 and m >= 1, got {n}:{m}")
    if n >= m:
        raise ValueError(f"N:M needs n < m (n weights pruned out of every m), got {n}:{m}")
    if in_features is not None and in_features % m:
        raise ValueError(
            f"N:M with m={m} needs in_features divisible by {m}, got {in_features}; "
            f"use a pattern whose m divides {in_features} or prune this layer unstructured"
        )


def check_row_sparsity(sparsity: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-row sparsity: a 1-D float tensor of `rows` fractions in [0, 1)."""
    if sparsity.dim() != 1 or sparsity.numel() != rows or not sparsity.is_floating_point():
        raise ValueError(f"per-row sparsity must be a 1-D float tensor with one entry per output row ({rows}), got {sparsity.dtype} {tuple(sparsity.shape)}")
    if not ((sparsity >= 0) & (sparsity < 1)).all():
        raise ValueError("per-row sparsity values must be in [0, 1)")
    return sparsity


def resolve_pattern(sparsity, n: int, m: int, in_features: int, rows: int | None = None):
    """Validate an (unstructured sparsity) xor (n:m) request; returns the normalised triple.

    With `rows`, unstructured sparsity may also be a per-row tensor of fractions.
    """
    if isinstance(sparsity, torch.Tensor) and sparsity.dim() == 1 and rows is not None:
        if n or m:
            raise ValueError("per-row sparsity applies to unstructured pruning only, not N:M")
        return check_row_sparsity(sparsity, rows), 0, 0
    if n or m:
        check_nm(n, m, in_features)
        if sparsity is not None and abs(float(sparsity) - n / m) > 1e-9:
            raise ValueError(f"sparsity={sparsity} contradicts the {n}:{m} pattern (which prunes {n / m:.4g}); pass one of them")
        return None, n, m
    if sparsity is None:
        raise ValueError("pass either sparsity= (unstructured) or n= and m= (N:M)")
    return check_sparsity(sparsity), 0, 0


def parse_pattern(pattern: str) -> tuple[int, int]:
    """'unstructured' (or '0:0') -> (0, 0); 'N:M' -> (n, m)."""
    text = str(pattern).strip().lower()
    if text in ("unstructured", "0:0"):
        return 0, 0
    parts = text.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        check_nm(n, m)
        return n, m
    raise ValueError(f"unknown sparsity pattern {pattern!r}: use 'unstructured' or 'N:M' such as '2:4' or '4:8'")


def check_finite(x: torch.Tensor, where: str) -> None:
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(
            f"{bad} NaN/Inf values in calibration activations entering {where}; the model overflows in its "
            f"dtype ({x.dtype}) or its weights are broken: load it in float32 or bfloat16 (--dtype) and check the checkpoint"
        )
