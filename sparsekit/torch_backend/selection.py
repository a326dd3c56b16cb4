"""Importance scores and mask selection (True = kept).

Unstructured ("row" scope): every output row prunes exactly k = int(in * sparsity) of its lowest
scores; ties prune the lower column index first (the order of a stable ascending sort). Instead of one
sparsity, select_mask/wanda_mask may get per-row prune counts (an int tensor: row r prunes k[r]), which
sparsekit.ops.selection computes with `row_counts` (int(in * sparsity[r]) in float64) for every backend.
"matrix" scope: one threshold for the whole matrix, exactly int(numel * sparsity) pruned, same ties.
N:M: in each group of m consecutive input columns the n lowest are pruned, same ties.
"""
import torch


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    return weight.float().abs()


def wanda_score(weight: torch.Tensor, sq_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 (up to the 1/sqrt(N_seq) constant, which leaves each row's ranking unchanged)."""
    return weight.float().abs() * sq_norm.float().sqrt().unsqueeze(0)


def row_counts(sparsity: torch.Tensor, cols: int) -> torch.Tensor:
    """int(cols * s) per row, as int64 (float64 so it matches Python's int(cols * s) for float32 s)."""
    return (sparsity.double() * cols).floor().long()


def _prune_lowest_per_row(score: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    order = score.argsort(dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return ranks >= k.to(score.device).unsqueeze(1)


def _prune_lowest_k(score: torch.Tensor, k) -> torch.Tensor:
    """Keep mask pruning the k lowest entries of every row (stable ties) without a full sort."""
    rows, cols = score.shape
    if isinstance(k, torch.Tensor):
        return _prune_lowest_per_row(score, k)
    if k <= 0:
        return torch.ones_like(score, dtype=torch.bool)
    if k >= cols:
        return torch.zeros_like(score, dtype=torch.bool)
    kth = score.kthvalue(k, dim=1, keepdim=True).values
    below = score < kth
    tied = score == kth
    needed = k - below.sum(dim=1, keepdim=True)
    pruned = below | (tied & (tied.cumsum(dim=1) <= needed))
    return ~pruned


def _prune_nm(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    order = groups.argsort(dim=-1, stable=True)
    pruned = torch.zeros_like(groups, dtype=torch.bool)
    pruned.scatter_(-1, order[..., :n], True)
    return ~pruned.reshape(rows, cols)


def select_mask(score: torch.Tensor, sparsity: float | None, n: int, m: int, scope: str = "row") -> torch.Tensor:
    if m:
        return _prune_nm(score, n, m)
    if scope == "matrix":
        flat = score.reshape(1, -1)
        return _prune_lowest_k(flat, int(flat.shape[1] * sparsity)).reshape(score.shape)
    if isinstance(sparsity, torch.Tensor):  # per-row prune counts
        return _prune_lowest_k(score, sparsity)
    return _prune_lowest_k(score, int(score.shape[1] * sparsity))


def wanda_mask(weight: torch.Tensor, sq_norm: torch.Tensor, sparsity: float | None, n: int, m: int) -> torch.Tensor:
    return select_mask(wanda_score(weight, sq_norm), sparsity, n, m)
