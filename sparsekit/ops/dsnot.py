"""DSnoT (Zhang et al., arXiv 2310.08915): training-free prune-and-grow refinement of a keep mask."""
from __future__ import annotations

import torch

from sparsekit import backend as _backend
from sparsekit.checks import (check_int, check_mask, check_nm, check_nonneg_number, check_same_device, check_square,
                              check_tensor, check_vector, check_weight)
from sparsekit.torch_backend.dsnot_exact import ROW_CHUNK

MODES = ("official", "error", "exact")
DEFAULT_MODE = "exact"


def _check_stat(t, name: str, nonnegative: bool) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN/Inf; recollect the calibration statistics (ActivationStats) in float32 or bfloat16")
    if nonnegative and (t < 0).any():
        raise ValueError(f"{name} has negative entries; it must be ActivationStats.{name} (a sum of squares), not another statistic")


def _check_nm_mask(keep: torch.Tensor, n: int, m: int) -> None:
    pruned = (~keep).reshape(keep.shape[0], -1, m).sum(dim=-1)
    bad = (pruned != n).nonzero()
    if bad.numel():
        r, g = bad[0].tolist()
        raise ValueError(
            f"the initial keep mask is not {n}:{m}: row {r}, columns {g * m}..{g * m + m - 1} prune {pruned[r, g].item()} "
            f"weights instead of {n}; build it with ops.wanda_mask(..., n={n}, m={m}) or pass n=m=0 for an unstructured mask"
        )


def initial_error(weight: torch.Tensor, keep: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """eps_i = sum over pruned j of W_ij * mean_j (float64), the expected dense-minus-sparse output.

    Both backends start from this one computation, so their decisions agree exactly.
    """
    c = weight.float() * mean.float().unsqueeze(0)
    return torch.where(keep, torch.zeros_like(c), c).double().sum(dim=1)


def initial_residual(W: torch.Tensor, keep: torch.Tensor, W0: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """mode='exact''s R = (W0 - W * M) H in float32 (W, W0, H float32), in chunks of ROW_CHUNK rows.

    Both backends start from this one computation (and update it in place), so their decisions agree exactly.
    """
    R = torch.empty(W.shape, dtype=torch.float32, device=W.device)
    for start in range(0, W.shape[0], ROW_CHUNK):
        rows = slice(start, start + ROW_CHUNK)
        R[rows] = (W0[rows] - torch.where(keep[rows], W[rows], torch.zeros_like(W[rows]))) @ H
    return R


def dsnot(
    weight: torch.Tensor,
    keep: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    sq_norm: torch.Tensor,
    *,
    max_cycles: int = 50,
    threshold: float = 0.1,
    var_power: float = 1.0,
    same_sign: bool = False,
    n: int = 0,
    m: int = 0,
    mode: str = DEFAULT_MODE,
    seqlen: int | None = None,
    hessian: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    return_error: bool = False,
    backend: str | None = None,
):
    """Refine `keep` (True = kept) by DSnoT swaps; returns the new keep mask (same sparsity per row).

    weight (out, in); mean, var, sq_norm: ActivationStats.mean/.var/.sq_norm of the layer's input.
    Each swap regrows one pruned weight and prunes one kept weight of the same row (of the same
    M-group for N:M, where n, m give the pattern the initial mask must already have).
    mode="official": the official algorithm (zyxxmu/DSnoT): reduce |eps| (eps = sum over pruned of
      W*mean) until it is <= threshold or max_cycles swaps were made; `same_sign` keeps eps's sign
      (always on for N:M, as in the official code); grow candidates ranked by W*mean / var^var_power.
    mode="error": same candidate lists, but a swap is taken only if it lowers the row's expected
      squared output error  eps^2 + sum over pruned of W^2 (seqlen * sq_norm - mean^2)
      (mean part exact, fluctuations per input feature); needs `seqlen` (tokens per calibration
      sequence); threshold and same_sign are not used.
    mode="exact" (default): each swap pairs the regrowth and the pruning that lower the row's exact
      reconstruction error (W0 - W*M) H (W0 - W*M)^T the most (the pair's cross term is included
      when the swap is tested), H = sum over tokens x x^T (`hessian`, e.g. HessianStats.hessian; any
      positive scale), W0 = `reference` (the dense weight; default `weight`, which differs for
      SparseGPT's updated values); a row stops at the first swap that would not lower it.
      mean, var, sq_norm are validated but only H is used; max_cycles bounds the swaps per row.
    With return_error=True returns (keep, eps) with each row's final eps (float64; for mode='exact' the
    row's final reconstruction error d H d^T).
    """
    check_weight(weight)
    rows, cols = weight.shape
    check_mask(keep, "keep", (rows, cols))
    stats = {"mean": mean, "var": var, "sq_norm": sq_norm}
    for name, stat in stats.items():
        check_vector(stat, name, cols)
    check_same_device(weight=weight, keep=keep, **stats)
    for name, stat in stats.items():
        _check_stat(stat, name, nonnegative=name != "mean")
    if mode not in MODES:
        raise ValueError(f"unknown DSnoT mode {mode!r}; choose one of {MODES}")
    max_cycles = check_int(max_cycles, "max_cycles", 0)
    threshold = check_nonneg_number(threshold, "threshold")
    var_power = check_nonneg_number(var_power, "var_power")
    if not isinstance(same_sign, bool):
        raise TypeError(f"same_sign must be True or False, got {same_sign!r}")
    if n or m:
        check_nm(n, m, cols)
        _check_nm_mask(keep, n, m)
    if mode == "exact":
        return _dsnot_exact(weight, keep, hessian, reference, max_cycles, m, return_error, backend)
    error_rule = mode == "error"
    cost_scale = None
    if error_rule:
        if seqlen is None:
            raise ValueError("mode='error' needs seqlen= (tokens per calibration sequence the statistics were collected on)")
        seqlen = check_int(seqlen, "seqlen", 1)
        cost_scale = (seqlen * sq_norm.double() - mean.double().square()).clamp(min=0)
    # Column factors computed once here so both backends use bit-identical values.
    grow_scale = var.double().pow(var_power).reciprocal().float()
    col_norm = torch.where(sq_norm > 0, sq_norm.float().sqrt(), torch.zeros_like(sq_norm, dtype=torch.float32))
    threshold = float(torch.tensor(threshold, dtype=torch.float32))  # the official code compares in float32
    eps0 = initial_error(weight, keep, mean)
    return _backend.call(
        "dsnot", backend, weight.device, weight, keep, mean.float(), grow_scale, col_norm, eps0,
        max_cycles, threshold, same_sign, n, m, error_rule=error_rule, cost_scale=cost_scale, return_error=return_error,
    )


def choose_exact_backend(device, weight, keep, hessian, residual, max_cycles, m):
    """The Triton kernel handles unstructured and power-of-two M; other N:M patterns run in torch."""
    return "torch" if m & (m - 1) else None


def _dsnot_exact(weight, keep, hessian, reference, max_cycles, m, return_error, backend):
    cols = weight.shape[1]
    if hessian is None:
        raise ValueError("mode='exact' needs hessian= (in, in), e.g. HessianStats.hessian of the layer's input")
    check_tensor(hessian, "hessian", ndim=2, float_dtype=False)
    if not hessian.is_floating_point():
        raise TypeError(f"hessian must be a floating tensor, got {hessian.dtype}")
    check_square(hessian, "hessian", cols)
    if not torch.isfinite(hessian).all():
        raise ValueError("hessian contains NaN/Inf; recollect the calibration statistics (HessianStats)")
    if reference is None:
        reference = weight
    check_tensor(reference, "reference", ndim=2)
    if reference.shape != weight.shape:
        raise ValueError(f"reference has shape {tuple(reference.shape)}; it must be the dense weight, shape {tuple(weight.shape)}")
    check_same_device(weight=weight, hessian=hessian, reference=reference)
    residual = initial_residual(weight.float(), keep, reference.float(), hessian.to(device=weight.device, dtype=torch.float32))
    keep = _backend.call("dsnot_exact", backend, weight.device, weight, keep, hessian, residual, max_cycles, m)
    if not return_error:
        return keep
    d = reference.double() - torch.where(keep, weight.double(), torch.zeros((), dtype=torch.float64, device=weight.device))
    return keep, ((d @ hessian.double()) * d).sum(dim=1)
