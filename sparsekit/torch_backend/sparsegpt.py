"""SparseGPT (Frantar & Alistarh, arXiv 2301.00774): prune with OBS weight reconstruction.

H = (2/N) sum x x^T (+ percdamp * mean(diag H) on the diagonal); U = chol(H^-1) upper.
Columns are processed in blocks of `blocksize`: unstructured selects, per block, the
int(rows * block * sparsity) lowest w^2 / U_jj^2 (N:M: the n lowest per group of m in each row);
with a per-row sparsity tensor, row r prunes k_r = int(cols * s_r) in all, floor(k_r * i2 / cols) of
them within columns [0, i2), choosing its lowest w^2 / U_jj^2 in each block (an extension for
per-row allocations such as BESA's);
each pruned weight's error (w - q) / U_jj is propagated to the not-yet-processed columns.
Follows IST-DASLab/sparsegpt `fasterprune`, except that the per-block count is exact (the official
`<= thresh` prunes one extra weight per block) and never-active input columns are left as they are
(the official code zeroes them; their value cannot change the calibration loss either way).
"""
import warnings

import torch

from sparsekit.torch_backend.selection import _prune_lowest_k, _prune_nm, row_counts


def _inverse_cholesky(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    H = hessian.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    damp = percdamp * torch.mean(torch.diag(H))
    for attempt in range(4):
        Hd = H.clone()
        Hd.diagonal().add_(damp * (10**attempt))
        L, info = torch.linalg.cholesky_ex(Hd)
        if info.item() == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info.item() == 0:
                if attempt:
                    warnings.warn(f"SparseGPT: Hessian not positive definite with percdamp={percdamp}; used {percdamp * 10**attempt}")
                return U
    raise ValueError(
        "SparseGPT: the Hessian is not positive definite even with 1000x damping; the calibration "
        "activations are degenerate (too few tokens?) - use more calibration samples or a larger percdamp"
    )


def sparsegpt_saliency(weight, hessian, percdamp):
    """w^2 / diag(H^-1), with diag(H^-1)_j = sum_i U_ij^2 for H^-1 = U^T U."""
    upper = _inverse_cholesky(hessian, percdamp)
    return weight.float().square() / upper.square().sum(dim=0).unsqueeze(0)


def sparsegpt(weight, hessian, sparsity, n, m, blocksize=128, percdamp=0.01, keep_pruned_values=False):
    rows, cols = weight.shape
    W = weight.float().clone()
    Hinv = _inverse_cholesky(hessian, percdamp)
    keep = torch.ones(rows, cols, dtype=torch.bool, device=W.device)
    per_row = row_counts(sparsity, cols).to(W.device) if isinstance(sparsity, torch.Tensor) else None
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if m:
            pruned1 = torch.zeros_like(W1, dtype=torch.bool)
        elif per_row is not None:
            in_block = (per_row * i2) // cols - (per_row * i1) // cols
            pruned1 = ~_prune_lowest_k(W1.square() / d.square(), in_block)
        else:
            pruned1 = ~_prune_lowest_k((W1.square() / d.square()).reshape(1, -1), int(W1.numel() * sparsity)).reshape(W1.shape)
        for i in range(i2 - i1):
            if m and i % m == 0:
                group = W1[:, i:i + m].square() / d[i:i + m].square()
                pruned1[:, i:i + m] = ~_prune_nm(group, n, m)
            w = W1[:, i].clone()
            q = torch.where(pruned1[:, i], torch.zeros_like(w), w)
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            W1[:, i] = w if keep_pruned_values else q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        keep[:, i1:i2] = ~pruned1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.to(weight.dtype), keep
