"""DSnoT swaps chosen by the exact change of each row's reconstruction error (mode="exact").

Row i of the layer has error E_i = d H d^T with d = W0_i - W_i * M_i (W0 the dense reference,
W the values a kept weight takes, M the keep mask) and H = sum over tokens x x^T. Keeping
R = d H, regrowing a pruned weight g and pruning a kept weight q change E by

  grow_g  = -2 W_g R_g + W_g^2 H_gg          (d_g -= W_g)
  prune_q = +2 W_q R_q + W_q^2 H_qq          (d_q += W_q)
  delta   = grow_g + prune_q - 2 W_g W_q H_gq

Each cycle every active row takes its best grow and best prune (for N:M: the best pair inside one
M-group, so every group keeps its n zeros) and makes the swap if delta < 0; otherwise the row
freezes. E never increases, and the per-row (per-group) sparsity never changes.
"""
from __future__ import annotations

import torch


def _best_pair(grow, prune, m):
    """Per row: (g, q, grow_g + prune_q) of the best pair (inf marks non-candidates), inside one M-group when m > 0."""
    if not m:
        best_grow, g = grow.min(dim=1)
        best_prune, q = prune.min(dim=1)
        return g, q, best_grow + best_prune
    rows, cols = grow.shape
    best_grow, g = grow.view(rows, cols // m, m).min(dim=2)
    best_prune, q = prune.view(rows, cols // m, m).min(dim=2)
    score, group = (best_grow + best_prune).min(dim=1)
    base = group * m
    return base + g.gather(1, group[:, None]).squeeze(1), base + q.gather(1, group[:, None]).squeeze(1), score


ROW_CHUNK = 4096  # rows refined together (bounds the (rows, in) work tensors)


def dsnot_exact(weight, keep, hessian, residual, max_cycles, m=0):
    """keep after at most max_cycles exact-error swaps per row; see the module docstring. `residual` is the
    initial R = (W0 - W * M) H in float32 (sparsekit.ops.dsnot.initial_residual), updated in place."""
    keep = keep.clone()
    if max_cycles == 0:
        return keep
    H = hessian.to(device=weight.device, dtype=torch.float32)
    diag = H.diagonal()
    for start in range(0, weight.shape[0], ROW_CHUNK):
        rows = slice(start, start + ROW_CHUNK)
        W = weight[rows].float()
        R = residual[rows]
        keep[rows] = _refine_rows(W, keep[rows], R, H, diag, max_cycles, m)
    return keep


def _refine_rows(W, keep, R, H, diag, max_cycles, m):
    W2diag = W.square() * diag
    twice_W = 2 * W  # exact, so twice_W * R equals 2 * W * R bit for bit (the kernel's order)
    rows = torch.arange(W.shape[0], device=W.device)
    active = torch.ones(W.shape[0], dtype=torch.bool, device=W.device)
    for _ in range(max_cycles):
        cross = twice_W * R
        grow = (W2diag - cross).masked_fill_(keep, torch.inf)
        prune = (W2diag + cross).masked_fill_(~keep, torch.inf)
        g, q, score = _best_pair(grow, prune, m)
        delta = score - 2 * W[rows, g] * W[rows, q] * H[g, q]
        active &= torch.isfinite(delta) & (delta < 0)
        if not active.any():
            break
        if active.all():
            keep[rows, g] = True
            keep[rows, q] = False
            R += W[rows, q, None] * H[q] - W[rows, g, None] * H[g]
            continue
        r, g, q = rows[active], g[active], q[active]
        keep[r, g] = True
        keep[r, q] = False
        R[r] += W[r, q, None] * H[q] - W[r, g, None] * H[g]
    return keep
