"""DSnoT mask refinement in plain torch, vectorised over rows (the reference for the Triton kernel).

Per row i, with C_ij = W_ij * mean_j (signed expected contribution) and eps_i = sum over pruned
C_ij (expected dense-minus-sparse output difference), every cycle each active row grows one pruned
weight g and prunes one kept weight q: eps > 0 grows the pruned weight with the largest positive
v = C / var^p and prunes the lowest-Wanda kept weight with C < 0; eps < 0 is the mirror image.
The four candidate lists are built once, from the initial mask, and walked with pointers:

  grow_up    pruned, v > 0, by (v descending, column descending)  -- the official sort's end
  grow_down  pruned, v < 0, by (v ascending,  column ascending)   -- the official sort's start
  prune_neg  kept,   C < 0, by (Wanda ascending, column ascending)
  prune_pos  kept,   C > 0, by (Wanda ascending, column ascending)

Official rule: a row stays active while |eps| > threshold (and, with same_sign, while the new eps
keeps eps0's sign); the first failed check freezes it for good. Error rule ("error" modes): a swap
is taken only if it lowers the row's expected squared output error (see `ops.dsnot`), otherwise the
row freezes. A row whose needed list is exhausted freezes too (the official code would then
regrow an already kept weight while still pruning one, changing the row's sparsity).
N:M: only the grow lists are used; the pruned weight is the lowest-Wanda weight of g's own group
that was kept initially and is still kept, so every group keeps exactly n zeros.
Only the first `max_cycles` entries of each list can ever be used, so only those are selected.
eps and the squared-error terms are carried in float64; ties go to the lower column except on
grow_up, which mirrors the official ascending sort walked from its end.
"""
from __future__ import annotations

import torch


def _first_k(key: torch.Tensor, candidate: torch.Tensor, k: int, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns of the k best candidates per row (ordered) and the number of candidates per row."""
    if descending:  # (key desc, column desc) = a stable ascending sort read backwards
        order = torch.where(candidate, key, -torch.inf).argsort(dim=1, stable=True).flip(1)
    else:
        order = torch.where(candidate, key, torch.inf).argsort(dim=1, stable=True)
    return order[:, :k], candidate.sum(dim=1)


def _take(lists: torch.Tensor, pointer: torch.Tensor) -> torch.Tensor:
    return lists.gather(1, pointer.clamp(max=lists.shape[1] - 1).unsqueeze(1)).squeeze(1)


def dsnot(weight, keep, mean, grow_scale, col_norm, eps0, max_cycles, threshold, same_sign, n, m,
          error_rule=False, cost_scale=None, return_error=False):
    """See the module docstring; inputs are prepared and validated by `sparsekit.ops.dsnot`.

    grow_scale = var^-p, col_norm = sqrt(sq_norm), eps0 = initial error (float64), and for the error
    rule cost_scale = seqlen * sq_norm - mean^2 (each weight's variance cost, W^2 * cost_scale).
    """
    rows, cols = weight.shape
    keep = keep.clone()
    W = weight.float()
    C = W * mean.unsqueeze(0)
    eps = eps0.clone()
    if max_cycles == 0 or rows == 0:
        return (keep, eps) if return_error else keep
    v = C * torch.where(C == 0, 1.0, grow_scale.unsqueeze(0))  # var = 0 gives +-inf, but 0 * inf -> 0
    wanda = W.abs() * col_norm.unsqueeze(0)
    k = min(max_cycles, cols)
    pruned0 = ~keep
    grow_up, n_up = _first_k(v, pruned0 & (v > 0), k, descending=True)
    grow_down, n_down = _first_k(v, pruned0 & (v < 0), k, descending=False)
    if not m:
        prune_neg, n_neg = _first_k(wanda, keep & (C < 0), k, descending=False)
        prune_pos, n_pos = _first_k(wanda, keep & (C > 0), k, descending=False)
    else:
        prunable = keep.clone()  # kept initially and not pruned by a swap yet
        offsets = torch.arange(m, device=keep.device)

    sign0 = torch.sign(eps0)
    active = torch.ones(rows, dtype=torch.bool, device=keep.device)
    p_up = torch.zeros(rows, dtype=torch.long, device=keep.device)
    p_down, p_neg, p_pos = p_up.clone(), p_up.clone(), p_up.clone()
    row_ids = torch.arange(rows, device=keep.device)
    for _ in range(max_cycles):
        if not active.any():
            break
        up = eps > 0
        g = torch.where(up, _take(grow_up, p_up), _take(grow_down, p_down))
        exhausted = torch.where(up, p_up >= n_up, p_down >= n_down)
        if not m:
            q = torch.where(up, _take(prune_neg, p_neg), _take(prune_pos, p_pos))
            exhausted |= torch.where(up, p_neg >= n_neg, p_pos >= n_pos)
        else:
            group = (g // m * m).unsqueeze(1) + offsets
            in_group = prunable.gather(1, group)
            score = torch.where(in_group, wanda.gather(1, group), torch.inf)
            q = group.gather(1, score.argmin(dim=1, keepdim=True)).squeeze(1)  # argmin: first of ties
            exhausted |= ~in_group.any(dim=1)
        c_g = C[row_ids, g].double()
        c_q = C[row_ids, q].double()
        eps_new = (eps + c_q) - c_g
        if error_rule:  # each weight's variance cost W^2 * cost_scale, in the kernel's operation order
            cost_g = W[row_ids, g].double().square() * cost_scale[g]
            cost_q = W[row_ids, q].double().square() * cost_scale[q]
            gain = ((eps.square() - eps_new.square()) + cost_g) - cost_q
            ok = active & ~exhausted & (gain > 0)
        else:
            ok = active & ~exhausted & (eps.abs() > threshold)
            if same_sign or m:
                ok &= torch.sign(eps_new) == sign0
        active = ok
        keep[row_ids[ok], q[ok]] = False
        keep[row_ids[ok], g[ok]] = True
        if m:
            prunable[row_ids[ok], q[ok]] = False
        eps = torch.where(ok, eps_new, eps)
        p_up += up
        p_down += ~up
        if not m:
            p_neg += up
            p_pos += ~up
    return (keep, eps) if return_error else keep
