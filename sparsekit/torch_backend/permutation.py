"""Input-channel permutation for N:M masks: RIA's channel reallocation + linear-sum-assignment rounds.

RIA (Zhang et al., ICLR'24, `lib/prune.py::prune_ria`, `--reallocation --lsa`), restated without its
per-row Python loop:
1. sort the input columns by ascending column sum of the score, cut that order into m chunks of
   K = in/m, and let group g take element g of each chunk (odd chunks reversed: a snake);
2. for each slot c of the m slots (one round each), and each block of `blocks` equal parts of the
   order: S[g, r] = kept score of group g if its slot-c column is replaced by group r's slot-c
   column; scipy's linear_sum_assignment(S, maximize=True) moves the slot-c columns.
A round can only keep or raise the kept score (the identity assignment is feasible). The heuristic
step can lower it, so the identity is returned when it ends below the identity's kept score.
"""
from __future__ import annotations

import torch

# elements of the (groups, candidates, rows) block scored at once in an LSA round
_CHUNK_ELEMENTS = 1 << 24


def kept_score(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Sum of the scores an N:M mask keeps (n lowest of each m consecutive columns pruned), fp64 scalar."""
    groups = score.float().reshape(score.shape[0], -1, m)
    return groups.topk(m - n, dim=-1).values.double().sum()


def reallocation(score: torch.Tensor, m: int) -> torch.Tensor:
    """RIA's heuristic channel reallocation: the snake over column-sum bands (step 1 above)."""
    cols = score.shape[1]
    order = torch.sort(score.sum(dim=0))[1]
    k = cols // m
    index = torch.empty_like(order)
    for slot in range(m):
        chunk = order[slot * k:(slot + 1) * k]
        index[slot::m] = chunk if slot % 2 == 0 else chunk.flip(0)
    return index


def assignment_scores(score: torch.Tensor, slot: int, n: int, m: int) -> torch.Tensor:
    """S[g, r]: kept score of group g of `score` (columns already in group order) with its slot column from group r.

    RIA sorts every (group, candidate, row) quadruple; here, with t_g the (m-n)-th largest of group g's other
    m-1 values in a row and A_g the sum of the larger ones, the kept score is A_g + max(candidate, t_g): the
    same number (up to fp32 summation order) for rows x groups^2 max-adds instead of sorts.
    """
    rows, cols = score.shape
    groups, keep = cols // m, m - n
    grouped = score.reshape(rows, groups, m)
    others = torch.cat([grouped[:, :, :slot], grouped[:, :, slot + 1:]], dim=2).sort(dim=-1, descending=True).values
    larger = others[:, :, :keep - 1].sum(dim=-1).sum(dim=0)  # (groups,): sum over rows of A_g
    threshold = others[:, :, keep - 1].t().contiguous()  # (groups, rows)
    candidates = grouped[:, :, slot].t().contiguous()  # (groups, rows)
    out = torch.empty(groups, groups, dtype=torch.float32, device=score.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, rows * groups))
    for start in range(0, groups, step):
        stop = min(groups, start + step)
        out[start:stop] = torch.maximum(candidates[None], threshold[start:stop, None]).sum(dim=-1)
    return out + larger[:, None]


def lsa_round(score: torch.Tensor, index: torch.Tensor, slot: int, n: int, m: int, blocks: int) -> torch.Tensor:
    """One RIA LSA round on slot `slot`: the new index (step 2 above)."""
    from scipy.optimize import linear_sum_assignment

    index = index.clone()
    part = index.numel() // blocks
    for b in range(blocks):
        sub = index[b * part:(b + 1) * part]
        matrix = assignment_scores(score[:, sub], slot, n, m)
        _, chosen = linear_sum_assignment(matrix.cpu().numpy(), maximize=True)
        local = torch.arange(part, device=index.device)
        local[slot::m] = torch.as_tensor(chosen, device=index.device, dtype=torch.long) * m + slot
        index[b * part:(b + 1) * part] = sub[local]
    return index


def nm_permutation(score: torch.Tensor, n: int, m: int, lsa: bool, blocks: int) -> torch.Tensor:
    score = score.detach().float()
    identity = torch.arange(score.shape[1], device=score.device)
    if n == 0:
        return identity
    index = reallocation(score, m)
    if lsa:
        for slot in range(m):
            index = lsa_round(score, index, slot, n, m, blocks)
    if kept_score(score[:, index], n, m) < kept_score(score, n, m):
        return identity
    return index
