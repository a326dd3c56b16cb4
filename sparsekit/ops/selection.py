"""Importance scores and keep-mask selection (True = kept)."""
from __future__ import annotations

import torch

from sparsekit import backend as _backend
from sparsekit.checks import check_same_device, check_sq_norm, check_tensor, check_weight, resolve_pattern
from sparsekit.torch_backend.selection import row_counts

SCOPES = ("row", "matrix")


def magnitude_score(weight: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """|W| in fp32, shape of `weight`."""
    check_weight(weight)
    return weight.float().abs()


def wanda_score(weight: torch.Tensor, sq_norm: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Wanda's |W_ij| * sqrt(sq_norm_j) in fp32, weight (out, in), sq_norm (in,) from ActivationStats."""
    check_weight(weight)
    check_same_device(weight=weight, sq_norm=sq_norm)
    check_sq_norm(sq_norm, weight.shape[1])
    return _backend.call("wanda_score", backend, weight.device, weight, sq_norm)


def select_mask(
    score: torch.Tensor,
    sparsity: float | torch.Tensor | None = None,
    n: int = 0,
    m: int = 0,
    *,
    scope: str = "row",
    backend: str | None = None,
) -> torch.Tensor:
    """Keep mask pruning the lowest scores.

    Unstructured: per output row, exactly int(in * sparsity) lowest scores are pruned; ties prune
    the lower column index first; `sparsity` may be a per-row float tensor (rows,) instead of a
    number. scope="matrix": one threshold for the whole matrix (exactly
    int(numel * sparsity) pruned), as magnitude pruning usually does. N:M (n, m > 0): in each
    group of m consecutive input columns the n lowest are pruned.
    """
    check_tensor(score, "score", ndim=2)
    if torch.isnan(score).any():
        raise ValueError("score contains NaN; compute it from finite weights and statistics")
    sparsity, n, m = resolve_pattern(sparsity, n, m, score.shape[1], rows=score.shape[0])
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; use one of {SCOPES}")
    if scope == "matrix" and (m or isinstance(sparsity, torch.Tensor)):
        raise ValueError("scope='matrix' takes one unstructured sparsity; N:M and per-row sparsity are per row")
    return _backend.call("select_mask", backend, score.device, score, _per_row_counts(sparsity, score.shape[1]), n, m, scope)


def wanda_mask(
    weight: torch.Tensor,
    sq_norm: torch.Tensor,
    sparsity: float | torch.Tensor | None = None,
    n: int = 0,
    m: int = 0,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """select_mask(wanda_score(weight, sq_norm), ...) in one call (fused on the Triton backend)."""
    check_weight(weight)
    check_same_device(weight=weight, sq_norm=sq_norm)
    check_sq_norm(sq_norm, weight.shape[1])
    sparsity, n, m = resolve_pattern(sparsity, n, m, weight.shape[1], rows=weight.shape[0])
    return _backend.call("wanda_mask", backend, weight.device, weight, sq_norm, _per_row_counts(sparsity, weight.shape[1]), n, m)


def _per_row_counts(sparsity, cols: int):
    """What the backends take for unstructured pruning: one fraction, or per-row prune counts (int64) computed
    here once, so every backend prunes exactly int(cols * s_r) (in float64) of row r."""
    return row_counts(sparsity, cols) if isinstance(sparsity, torch.Tensor) else sparsity
