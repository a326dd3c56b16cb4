"""sparsekit's functional contract: the ops other pruning tools can call.

Masks are bool tensors with True = kept; sparsity is the fraction pruned. Every op takes
`backend=None|"torch"|"triton"|"cuda"`; None lets `sparsekit.backend` pick the best available.
Inputs are checked here once, so each backend implementation can assume valid arguments.
"""
from __future__ import annotations

import torch

from sparsekit import backend as _backend
from sparsekit._validate import check_same_device, check_tensor, check_vector, resolve_pattern
from sparsekit.stats import ActivationStats, HessianStats

__all__ = [
    "ActivationStats",
    "HessianStats",
    "magnitude_score",
    "wanda_score",
    "select_mask",
    "wanda_mask",
    "sparsegpt",
]

SCOPES = ("row", "matrix")


def _check_weight(weight, name="weight"):
    check_tensor(weight, name, ndim=2)
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name} contains NaN/Inf; the checkpoint is broken or was loaded in a dtype that overflows")


def magnitude_score(weight: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """|W| in fp32, shape of `weight`."""
    _check_weight(weight)
    return weight.float().abs()


def wanda_score(weight: torch.Tensor, sq_norm: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Wanda's |W_ij| * sqrt(sq_norm_j) in fp32, weight (out, in), sq_norm (in,) from ActivationStats."""
    _check_weight(weight)
    check_vector(sq_norm, "sq_norm", weight.shape[1])
    check_same_device(weight=weight, sq_norm=sq_norm)
    return _backend.call("wanda_score", backend, weight.device, weight, sq_norm)


def select_mask(
    score: torch.Tensor,
    sparsity: float | None = None,
    n: int = 0,
    m: int = 0,
    *,
    scope: str = "row",
    backend: str | None = None,
) -> torch.Tensor:
    """Keep mask pruning the lowest scores.

    Unstructured: per output row, exactly int(in * sparsity) lowest scores are pruned; ties prune
    the lower column index first. scope="matrix": one threshold for the whole matrix (exactly
    int(numel * sparsity) pruned), as magnitude pruning usually does. N:M (n, m > 0): in each
    group of m consecutive input columns the n lowest are pruned.
    """
    check_tensor(score, "score", ndim=2)
    if torch.isnan(score).any():
        raise ValueError("score contains NaN; compute it from finite weights and statistics")
    sparsity, n, m = resolve_pattern(sparsity, n, m, score.shape[1])
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; use one of {SCOPES}")
    if scope == "matrix" and m:
        raise ValueError("scope='matrix' applies to unstructured sparsity only; N:M is always per group")
    return _backend.call("select_mask", backend, score.device, score, sparsity, n, m, scope)


def wanda_mask(
    weight: torch.Tensor,
    sq_norm: torch.Tensor,
    sparsity: float | None = None,
    n: int = 0,
    m: int = 0,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """select_mask(wanda_score(weight, sq_norm), ...) in one call (fused on the Triton backend)."""
    _check_weight(weight)
    check_vector(sq_norm, "sq_norm", weight.shape[1])
    check_same_device(weight=weight, sq_norm=sq_norm)
    sparsity, n, m = resolve_pattern(sparsity, n, m, weight.shape[1])
    return _backend.call("wanda_mask", backend, weight.device, weight, sq_norm, sparsity, n, m)


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float | None = None,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    *,
    keep_pruned_values: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's OBS prune-and-update. Returns (updated weight in weight's dtype, keep mask).

    hessian is (in, in), e.g. HessianStats.hessian. With keep_pruned_values=True the returned
    weight still holds, at pruned positions, the value each weight had when it was pruned (so
    `weight * keep` is the pruned result and a later mask change can regrow a weight).
    """
    _check_weight(weight)
    check_tensor(hessian, "hessian", ndim=2)
    cols = weight.shape[1]
    if tuple(hessian.shape) != (cols, cols):
        raise ValueError(f"hessian must be ({cols}, {cols}) for a weight with {cols} input features, got {tuple(hessian.shape)}")
    check_same_device(weight=weight, hessian=hessian)
    sparsity, n, m = resolve_pattern(sparsity, n, m, cols)
    if blocksize < 1 or (m and blocksize % m):
        raise ValueError(f"blocksize must be a positive multiple of m, got blocksize={blocksize}, m={m}")
    if not percdamp > 0:
        raise ValueError(f"percdamp must be > 0, got {percdamp}")
    return _backend.call(
        "sparsegpt", backend, weight.device, weight, hessian, sparsity, n, m, blocksize, percdamp, keep_pruned_values
    )
