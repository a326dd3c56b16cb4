"""Turn real-valued sparsity allocations into integer prune counts that meet a budget exactly.

A learned or outlier-weighted allocation says "prune about s_j of unit j"; a mask prunes whole
weights. These helpers pick integer counts closest to the allocation whose total equals the
budget (the number of weights the requested overall sparsity prunes), so the final model reaches
the requested sparsity exactly instead of being off by the allocation's rounding or penalty error.
"""
from __future__ import annotations

import torch


def budget_count(sizes, sparsities) -> int:
    """round(sum_j size_j * sparsity_j): the number of weights a target prunes over several layers."""
    return int(round(sum(float(n) * float(s) for n, s in zip(sizes, sparsities))))


def exact_fraction(count, cols: int, rows: int = 1):
    """A sparsity s with int(cols * s) == count (per-row selection) and int(rows * cols * s) == rows * count
    (one threshold per matrix): count / cols plus a margin of 0.1 / rows weights against float rounding.
    `count` may be a float64 tensor of per-row counts: then s is the per-row sparsity tensor."""
    return (count + 0.1 / rows) / cols


def apportion(real: torch.Tensor, unit: torch.Tensor, budget: int, cap: torch.Tensor) -> torch.Tensor:
    """Integers n_j in [0, cap_j] near `real` with sum(unit_j * n_j) == budget when the units allow it.

    Starts from floor(real) and adds (or removes) one per entry in order of the largest (smallest)
    fractional part while the change fits the remaining difference. With unit 1 (rows) the total is
    exact; with larger units (a count per row of a whole layer) it ends within min(unit) of the budget.
    """
    real = real.double()
    cap = cap.long()
    n = real.floor().long().clamp(min=0).minimum(cap)
    unit = unit.long()
    diff = int(budget - (unit * n).sum().item())
    frac = real - real.floor()
    if diff == 0:
        return n
    grow = diff > 0
    movable = (n < cap) if grow else (n > 0)
    order = torch.argsort(frac, descending=grow, stable=True)
    order = order[movable[order]]
    if bool((unit == 1).all()):
        take = order[:abs(diff)]
        n[take] += 1 if grow else -1
        return n
    remaining = abs(diff)
    for j in order.tolist():
        u = int(unit[j])
        if u <= remaining:
            n[j] += 1 if grow else -1
            remaining -= u
            if remaining == 0:
                break
    return n


def project_row_counts(row_sparsity: list[torch.Tensor], cols: list[int], budget: int) -> list[torch.Tensor]:
    """Per-row prune counts for several layers: the learned row sparsities shifted by one common offset
    (found by bisection) so they sum to `budget` weights, then rounded by largest remainder.

    row_sparsity[l] is (rows_l,) in [0, 1]; every row keeps at least one weight. Returns int64 counts.
    """
    s = torch.cat([r.detach().double().cpu().reshape(-1) for r in row_sparsity])
    width = torch.cat([torch.full((r.numel(),), float(c), dtype=torch.float64) for r, c in zip(row_sparsity, cols)])
    cap = width - 1
    if budget < 0 or budget > cap.sum().item():
        raise ValueError(
            f"cannot prune {budget} weights while keeping one weight in each of the {width.numel()} rows "
            f"(at most {int(cap.sum().item())}); lower the sparsity"
        )

    def real(shift: float) -> torch.Tensor:
        return ((s + shift).clamp(0.0, 1.0) * width).minimum(cap)

    lo, hi = -1.0, 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if real(mid).sum().item() < budget:
            lo = mid
        else:
            hi = mid
    counts = apportion(real(hi), torch.ones_like(cap, dtype=torch.long), budget, cap.long())
    return list(counts.split([r.numel() for r in row_sparsity]))
