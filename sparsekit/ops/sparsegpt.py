"""SparseGPT's OBS prune-and-update, and its saliency w^2 / diag(H^-1), as ops."""
from __future__ import annotations

import torch

from sparsekit import backend as _backend
from sparsekit.checks import check_same_device, check_square, check_tensor, check_weight, resolve_pattern


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float | torch.Tensor | None = None,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    *,
    keep_pruned_values: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's OBS prune-and-update. Returns (updated weight in weight's dtype, keep mask).

    hessian is (in, in), e.g. HessianStats.hessian. `sparsity` may be a per-row tensor (out,): row r
    then prunes exactly int(in * sparsity[r]), spread over the column blocks in proportion (each block
    picks that row's lowest saliencies), instead of one threshold per column block.
    With keep_pruned_values=True the returned weight still holds, at pruned positions, the value each
    weight had when it was pruned (so `weight * keep` is the pruned result and a later mask change can
    regrow a weight).
    """
    check_weight(weight)
    check_tensor(hessian, "hessian", ndim=2)
    cols = weight.shape[1]
    check_square(hessian, "hessian", cols)
    check_same_device(weight=weight, hessian=hessian)
    sparsity, n, m = resolve_pattern(sparsity, n, m, cols, rows=weight.shape[0])
    if blocksize < 1 or (m and blocksize % m):
        raise ValueError(f"blocksize must be a positive multiple of m, got blocksize={blocksize}, m={m}")
    if not percdamp > 0:
        raise ValueError(f"percdamp must be > 0, got {percdamp}")
    return _backend.call(
        "sparsegpt", backend, weight.device, weight, hessian, sparsity, n, m, blocksize, percdamp, keep_pruned_values
    )


def sparsegpt_saliency(weight: torch.Tensor, hessian: torch.Tensor, percdamp: float = 0.01, *,
                       backend: str | None = None) -> torch.Tensor:
    """SparseGPT's saliency of each weight, w_ij^2 / [H^-1]_jj (float32, weight's shape): the OBS error of
    pruning it alone. H is damped as in `sparsegpt` (percdamp * mean(diag H) on the diagonal; never-active
    inputs, diag 0, get 1); a low saliency prunes first."""
    check_weight(weight)
    check_tensor(hessian, "hessian", ndim=2)
    check_square(hessian, "hessian", weight.shape[1])
    check_same_device(weight=weight, hessian=hessian)
    if not percdamp > 0:
        raise ValueError(f"percdamp must be > 0, got {percdamp}")
    return _backend.call("sparsegpt_saliency", backend, weight.device, weight, hessian, percdamp)
