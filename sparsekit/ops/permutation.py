"""Input-channel permutation before an N:M mask (RIA's channel reallocation + linear sum assignment).

    perm = ops.nm_permutation(score, n, m)               # (in,) int64
    keep = ops.permuted_nm_mask(score, perm, n, m)       # N:M along the permuted columns, original order

`keep[:, perm]` is N:M; the weight stays in its original order, so the pruned dense model needs nothing
else. A 2:4 kernel computes y = compressed(W[:, perm]) @ x[..., perm] (SparseLinear24's `perm`).
Layers reading the same input (q/k/v, gate/up) share one permutation: pass the sum of their scores.
"""
from __future__ import annotations

import torch

from sparsekit import backend as _backend
from sparsekit.checks import check_tensor, resolve_pattern


def check_permutation(perm, size: int, name: str = "perm") -> None:
    """Raise unless `perm` is a 1-D integer tensor holding each of 0..size-1 once."""
    if not isinstance(perm, torch.Tensor) or perm.dtype not in (torch.int64, torch.int32):
        got = perm.dtype if isinstance(perm, torch.Tensor) else type(perm).__name__
        raise TypeError(f"{name} must be an int64 tensor (a permutation of the input features), got {got}")
    if perm.dim() != 1 or perm.numel() != size:
        raise ValueError(f"{name} must be 1-D with {size} entries (one per input feature), got shape {tuple(perm.shape)}")
    if not torch.equal(perm.sort().values.cpu(), torch.arange(size)):
        raise ValueError(f"{name} is not a permutation of 0..{size - 1} (some index repeats or is out of range)")


def _check_nm(score, n, m, blocks=1):
    check_tensor(score, "score", ndim=2)
    if not torch.isfinite(score).all():
        raise ValueError("score contains NaN/Inf; compute it from finite weights and statistics")
    if not (isinstance(n, int) and isinstance(m, int) and m > 0):
        raise ValueError(f"channel permutation is for N:M patterns; got n={n!r}, m={m!r} (use e.g. n=2, m=4 for 2:4)")
    resolve_pattern(None, n, m, score.shape[1], rows=score.shape[0])
    if not isinstance(blocks, int) or blocks < 1 or score.shape[1] % (m * blocks):
        raise ValueError(f"blocks must be an int >= 1 dividing in_features / m = {score.shape[1] // m}, got {blocks!r}")


def nm_permutation(score: torch.Tensor, n: int, m: int, *, lsa: bool = True, blocks: int = 1,
                   backend: str | None = None) -> torch.Tensor:
    """Input-column permutation raising the score an N:M mask keeps (n lowest of every m pruned).

    score (out, in), any positive importance (Wanda's, |W|, ...). RIA's reallocation, then (lsa=True) m
    linear-sum-assignment rounds over `blocks` equal parts of the columns (RIA's --fast uses 4-16). The kept
    score of the result is never below the identity's (the identity is returned when RIA's would be).
    """
    _check_nm(score, n, m, blocks)
    return _backend.call("nm_permutation", backend, score.device, score, n, m, bool(lsa), blocks)


def permuted_nm_mask(score: torch.Tensor, perm: torch.Tensor, n: int, m: int, *, backend: str | None = None) -> torch.Tensor:
    """Keep mask in the original column order whose columns `perm` form an N:M mask of `score[:, perm]`."""
    from sparsekit.ops.selection import select_mask

    _check_nm(score, n, m)
    check_permutation(perm, score.shape[1])
    keep = torch.empty(score.shape, dtype=torch.bool, device=score.device)
    keep[:, perm.to(score.device)] = select_mask(score[:, perm.to(score.device)], None, n, m, backend=backend)
    return keep
