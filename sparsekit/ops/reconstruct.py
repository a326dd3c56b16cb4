"""Optimal weight updates on a mask (ADMM / ALPS) and the two mask-selecting methods built on them.

All minimise ||(W - W')X||^2 = tr((W - W') H (W - W')^T) with W' = 0 where the mask is False, H the
input Hessian (any positive multiple of X^T X, e.g. HessianStats.hessian). See
sparsekit.torch_backend.reconstruct for the algorithms and the official code each one follows.

- `reconstruct(weight, keep, hessian, method="alps"|"admm")`: update the kept weights of any mask
  (Wanda, magnitude, SparseGPT, DSnoT, ...). "alps": ALPS's CG on the support (cg_iters=10 as the
  official code; more iterations converge to the exact least-squares solution); "admm": admm-pruning's
  fixed-mask ADMM (20 iterations at rho = 1, damping 0.1 * mean(diag H~)).
- `admm_prune`: admm-pruning's ADMM that chooses the mask while it updates (the paper's defaults).
- `alps_prune`: ALPS's ADMM with the adaptive rho schedule, then CG on the support.
"""
from __future__ import annotations

import torch

from sparsekit import backend as _backend
from sparsekit.checks import check_mask, check_same_device, check_square, check_tensor, check_weight, resolve_pattern

RECONSTRUCT_METHODS = ("alps", "admm")
# each method's options and their defaults (the official codes' values)
RECONSTRUCT_DEFAULTS = {
    "admm": {"percdamp": 0.1, "rho": 1.0, "iters": 20},
    "alps": {"damp": 0.01, "cg_iters": 10, "rtol": 1e-4},
}


def _check_hessian(weight, hessian):
    check_tensor(hessian, "hessian", ndim=2)
    check_square(hessian, "hessian", weight.shape[1])
    check_same_device(weight=weight, hessian=hessian)
    if not torch.isfinite(hessian).all():
        raise ValueError("hessian contains NaN/Inf; the calibration activations overflowed (load the model in float32 or bfloat16)")
    if not (torch.diagonal(hessian) > 0).any():
        raise ValueError("hessian has no positive diagonal entry (no calibration tokens reached this layer); accumulate X^T X first")


def _positive(name, value, integer=False, allow_zero=False):
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not (value >= 0 if allow_zero else value > 0):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _scalar_sparsity(sparsity, n, m, cols, rows):
    sparsity, n, m = resolve_pattern(sparsity, n, m, cols, rows=rows)
    if isinstance(sparsity, torch.Tensor):
        raise ValueError("per-row sparsity tensors are not supported here: pass one float (the whole layer) or n:m")
    return sparsity, n, m


def reconstruct(weight: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor, *, method: str = "alps",
                init: torch.Tensor | None = None, backend: str | None = None, **options) -> torch.Tensor:
    """The weights on `keep` (bool, True = kept, shape of weight) that minimise the layer's output error
    ||(weight - W')X||^2 on the calibration inputs; exactly zero off the mask. Returns weight's dtype.

    `init` (alps only): where CG starts, masked to `keep` (default: weight * keep), e.g. SparseGPT's
    updated weights; the objective stays relative to `weight`.

    options, by method (defaults = the official code's): admm: percdamp=0.1, rho=1.0, iters=20;
    alps: damp=0.01, cg_iters=10, rtol=1e-4.
    """
    check_weight(weight)
    check_mask(keep, "keep", tuple(weight.shape))
    _check_hessian(weight, hessian)
    check_same_device(weight=weight, keep=keep)
    if method not in RECONSTRUCT_METHODS:
        raise ValueError(f"unknown reconstruct method {method!r}; choose one of {RECONSTRUCT_METHODS}")
    defaults = RECONSTRUCT_DEFAULTS[method]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"reconstruct(method={method!r}) has no option(s) {unknown}; its options are {sorted(defaults)}")
    values = {**defaults, **options}
    for name, value in values.items():
        integer = name in ("iters", "cg_iters")
        _positive(name, value, integer=integer, allow_zero=integer or name == "damp")
    if init is not None:
        if method != "alps":
            raise ValueError("init= applies to method='alps' (CG's start); ADMM starts from the dense weight")
        check_weight(init, "init")
        if init.shape != weight.shape:
            raise ValueError(f"init must have weight's shape {tuple(weight.shape)}, got {tuple(init.shape)}")
        check_same_device(weight=weight, init=init)
        values["init"] = init
    return _backend.call("reconstruct_" + method, backend, weight.device, weight, keep, hessian, **values)


def admm_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float | None = None, n: int = 0, m: int = 0, *,
               percdamp: float = 0.1, rho: float = 1.0, iterative_prune: int = 15, iters: int = 20, per_out: bool = False,
               backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """admm-pruning's ADMM, choosing the mask from |B + U| in the first `iterative_prune` of `iters`
    iterations (iterative_prune=0: one mask from the Wanda score, then fixed-mask ADMM). Unstructured
    `sparsity` is over the whole layer (per output column with per_out=True); n:m keeps m - n of every m
    consecutive inputs per output row. Returns (updated weight in weight's dtype, keep mask)."""
    check_weight(weight)
    _check_hessian(weight, hessian)
    sparsity, n, m = _scalar_sparsity(sparsity, n, m, weight.shape[1], weight.shape[0])
    _positive("percdamp", percdamp)
    _positive("rho", rho)
    _positive("iterative_prune", iterative_prune, integer=True, allow_zero=True)
    _positive("iters", iters, integer=True, allow_zero=True)
    if iterative_prune > iters:
        raise ValueError(f"iterative_prune ({iterative_prune}) must be <= iters ({iters}): the mask is chosen during the first iterative_prune iterations")
    if iterative_prune and not iters:
        raise ValueError("iters=0 (mask only) needs iterative_prune=0")
    return _backend.call("admm_prune", backend, weight.device, weight, hessian, sparsity, n, m,
                         percdamp=percdamp, rho=rho, iterative_prune=iterative_prune, iters=iters, per_out=bool(per_out))


def alps_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float | None = None, n: int = 0, m: int = 0, *,
               damp: float = 0.01, rho: float = 0.1, max_iter: int = 300, update_iter: int = 3, switch_iter: int = 30,
               cg_iters: int = 10, rtol: float = 1e-4, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ALPS: ADMM on W = D with D projected to the sparsity set (top |B| of the whole layer, or m - n kept of
    every m inputs per output row), rho raised while the support changes, then CG on the final support.
    Returns (updated weight in weight's dtype, keep mask)."""
    check_weight(weight)
    _check_hessian(weight, hessian)
    sparsity, n, m = _scalar_sparsity(sparsity, n, m, weight.shape[1], weight.shape[0])
    _positive("damp", damp, allow_zero=True)
    _positive("rho", rho)
    for name, value in (("max_iter", max_iter), ("update_iter", update_iter)):
        _positive(name, value, integer=True)
    _positive("switch_iter", switch_iter, integer=True, allow_zero=True)
    _positive("cg_iters", cg_iters, integer=True, allow_zero=True)
    _positive("rtol", rtol)
    return _backend.call("alps_prune", backend, weight.device, weight, hessian, sparsity, n, m, damp=damp, rho=rho,
                         max_iter=max_iter, update_iter=update_iter, switch_iter=switch_iter, cg_iters=cg_iters, rtol=rtol)
