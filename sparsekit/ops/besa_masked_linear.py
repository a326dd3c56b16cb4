"""BESA's learnable-sparsity masked linear (Xu et al., arXiv 2402.16880) as a differentiable op.

Each output row (granularity "row") or the whole layer ("layer") holds logits over K candidate
sparsities c_k = 1 - k / (K - 1) (K = 101: 1.00, 0.99, ..., 0.00). With p = softmax(sigmoid(logits))
(optionally plus a fixed log-prior inside the softmax) the expected sparsity is s = sum_k p_k c_k and
the row prunes its n = floor(s * cols) least important weights (by `ranks`, from `row_ranks(score)`).
The forward pass uses that hard mask H; the backward pass uses the straight-through soft mask
M = H + P - stopgrad(P), where P(t) = sum_k p_k [t >= tau_k] is the keep probability of rank t and
tau_k = floor(c_k * cols) (computed exactly in integers).
Weights and bias are frozen: gradients go to `x` and `logits` only.
"""
from __future__ import annotations

import functools

import torch

from sparsekit import backend as _backend
from sparsekit.checks import check_same_device, check_tensor

_FORWARD = "besa_masked_linear_forward"
_BACKWARD = "besa_masked_linear_backward"


def _check_num_candidates(num_candidates: int) -> int:
    if not isinstance(num_candidates, int) or num_candidates < 2:
        raise ValueError(f"num_candidates must be an int >= 2 (101 gives BESA's 0.01 sparsity step), got {num_candidates!r}")
    return num_candidates


def candidate_sparsities(num_candidates: int = 101, device=None) -> torch.Tensor:
    """c_k = 1 - k / (K - 1), k = 0 .. K-1, fp32 (1.00, 0.99, ..., 0.00 for K = 101)."""
    K = _check_num_candidates(num_candidates)
    k = torch.arange(K, dtype=torch.float64, device=device)
    return ((K - 1 - k) / (K - 1)).float()


def candidate_prune_counts(cols: int, num_candidates: int = 101, device=None) -> torch.Tensor:
    """tau_k = floor(c_k * cols) in exact integer arithmetic, int64, non-increasing in k."""
    K = _check_num_candidates(num_candidates)
    k = torch.arange(K, dtype=torch.int64, device=device)
    return ((K - 1 - k) * cols) // (K - 1)


def rank_buckets(cols: int, num_candidates: int = 101, device=None) -> torch.Tensor:
    """bucket[t] = min{k : tau_k <= t} for every rank t < cols (int32): the first candidate that keeps rank t."""
    tau = candidate_prune_counts(cols, num_candidates, device)
    ascending = tau.flip(0)  # tau_{K-1} .. tau_0, non-decreasing
    t = torch.arange(cols, dtype=torch.int64, device=device)
    last = torch.searchsorted(ascending, t, right=True) - 1  # largest j with tau_{K-1-j} <= t
    return (num_candidates - 1 - last).to(torch.int32)


def row_ranks(score: torch.Tensor) -> torch.Tensor:
    """Rank of each entry within its row by ascending score (0 = least important; ties: lower column first), int32."""
    check_tensor(score, "score", ndim=2)
    order = score.argsort(dim=1, stable=True)
    ranks = torch.empty(score.shape, dtype=torch.int32, device=score.device)
    ranks.scatter_(1, order, torch.arange(score.shape[1], dtype=torch.int32, device=score.device).expand_as(order).contiguous())
    return ranks


def sparsity_probabilities(logits: torch.Tensor, sigmoid: bool = True,
                           log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """p = softmax(sigmoid(logits) + log_prior) over the last dim (no sigmoid: softmax(logits + log_prior))."""
    z = logits.float().sigmoid() if sigmoid else logits.float()
    return (z if log_prior is None else z + log_prior).softmax(dim=-1)


def expected_sparsity(logits: torch.Tensor, sigmoid: bool = True,
                      log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """s = sum_k p_k c_k per logit row, differentiable in the logits."""
    return sparsity_probabilities(logits, sigmoid, log_prior) @ candidate_sparsities(logits.shape[-1], logits.device)


def target_log_prior(target: float, num_candidates: int = 101) -> torch.Tensor:
    """log_prior_k = a * c_k (K,) with a (bisection) such that zero logits give expected sparsity `target`.

    The paper starts every run from zero logits and no prior, i.e. s = 0.5; this tilt starts at the
    target instead and is exactly zero for 0.5. With the sigmoid smoothing the logits can move each
    probability by a factor of at most e around this prior, as they do around the uniform one in the paper.
    """
    c = candidate_sparsities(num_candidates).double()
    if abs(target - 0.5) < 1e-12:
        return torch.zeros(num_candidates)
    lo, hi = -200.0, 200.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if ((mid * c).softmax(0) @ c).item() < target:
            lo = mid
        else:
            hi = mid
    return (0.5 * (lo + hi) * c).float()


def reachable_sparsity(num_candidates: int = 101, sigmoid: bool = True,
                       log_prior: torch.Tensor | None = None) -> tuple[float, float]:
    """(lowest, highest) expected sparsity the logits can express. softmax(sigmoid(l) + prior) keeps each
    probability within a factor e of prior's, so with the smoothing and no prior s stays in ~[0.376, 0.624]."""
    if not sigmoid:
        return 0.0, 1.0
    c = candidate_sparsities(num_candidates).double()
    prior = torch.zeros_like(c) if log_prior is None else log_prior.double().cpu()
    # extremes: factor e on every candidate above (below) a cut, 1 on the rest
    above = c.unsqueeze(0) >= c.unsqueeze(1)
    high = prior.exp() * torch.where(above, torch.e, 1.0)
    low = prior.exp() * torch.where(above, 1.0, torch.e)
    return ((low * c).sum(1) / low.sum(1)).min().item(), ((high * c).sum(1) / high.sum(1)).max().item()


def prune_counts(logits: torch.Tensor, rows: int, cols: int, sigmoid: bool = True,
                 log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """The hard mask's per-row prune counts floor(s * cols), int32 (rows,)."""
    with torch.no_grad():
        s = expected_sparsity(logits, sigmoid, log_prior).double()
        counts = (s * cols).floor().clamp_(0, cols).to(torch.int32)
    return counts.expand(rows).contiguous() if counts.numel() == 1 else counts


@functools.lru_cache(maxsize=64)
def _cached_buckets(cols: int, num_candidates: int, device: torch.device) -> torch.Tensor:
    return rank_buckets(cols, num_candidates, device)


class _BesaMaskedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, ranks, logits, log_prior, sigmoid, forward_impl, backward_impl):
        rows, cols = weight.shape
        counts = prune_counts(logits, rows, cols, sigmoid, log_prior)
        x2 = x.reshape(-1, cols)
        y = forward_impl(x2, weight, ranks, counts)
        ctx.save_for_backward(x2, weight, ranks, counts, logits)
        ctx.log_prior, ctx.sigmoid, ctx.backward_impl, ctx.x_shape = log_prior, sigmoid, backward_impl, x.shape
        return y.reshape(*x.shape[:-1], rows)

    @staticmethod
    def backward(ctx, grad_y):
        x2, weight, ranks, counts, logits = ctx.saved_tensors
        rows, cols = weight.shape
        K = logits.shape[-1]
        grad_y2 = grad_y.reshape(-1, rows).to(x2.dtype)
        buckets = _cached_buckets(cols, K, weight.device)
        grad_x, bins = ctx.backward_impl(grad_y2, x2, weight, ranks, counts, buckets, K, ctx.needs_input_grad[0])
        grad_logits = None
        if ctx.needs_input_grad[3]:
            if logits.shape[0] == 1:
                bins = bins.sum(0, keepdim=True)
            grad_p = bins.cumsum(dim=1)  # dL/dp_k = sum over weights of rank >= tau_k
            p = sparsity_probabilities(logits, ctx.sigmoid, ctx.log_prior)
            grad_z = p * (grad_p - (grad_p * p).sum(dim=-1, keepdim=True))
            if ctx.sigmoid:
                z = logits.float().sigmoid()
                grad_z = grad_z * z * (1 - z)
            grad_logits = grad_z.to(logits.dtype)
        if grad_x is not None:
            grad_x = grad_x.reshape(ctx.x_shape)
        return grad_x, None, None, grad_logits, None, None, None, None


def _check_inputs(x, weight, ranks, logits, bias, log_prior):
    check_tensor(weight, "weight", ndim=2)
    rows, cols = weight.shape
    check_tensor(x, "x")
    if x.shape[-1] != cols:
        raise ValueError(f"x's last dim must be weight's in_features {cols}, got x of shape {tuple(x.shape)}")
    if x.dtype != weight.dtype:
        raise TypeError(f"x ({x.dtype}) and weight ({weight.dtype}) must share a dtype; cast x to the weight's dtype")
    if not isinstance(ranks, torch.Tensor) or ranks.dtype != torch.int32 or tuple(ranks.shape) != (rows, cols):
        got = f"{ranks.dtype} {tuple(ranks.shape)}" if isinstance(ranks, torch.Tensor) else type(ranks).__name__
        raise ValueError(f"ranks must be an int32 tensor of weight's shape {(rows, cols)} (use ops.row_ranks(score)), got {got}")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] not in (1, rows) \
            or logits.shape[1] < 2 or logits.dtype != torch.float32:
        got = f"{logits.dtype} {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be float32 of shape ({rows}, K) (per row) or (1, K) (per layer) with K >= 2 "
                         f"candidates, got {got}")
    if bias is not None and tuple(bias.shape) != (rows,):
        raise ValueError(f"bias must have shape ({rows},), got {tuple(bias.shape)}")
    if log_prior is not None and (not isinstance(log_prior, torch.Tensor) or tuple(log_prior.shape) != (logits.shape[1],)
                                  or log_prior.dtype != torch.float32):
        raise ValueError(f"log_prior must be a float32 tensor of shape ({logits.shape[1]},) (one entry per candidate), "
                         f"e.g. target_log_prior(target, {logits.shape[1]})")
    check_same_device(x=x, weight=weight, ranks=ranks, logits=logits, log_prior=log_prior)


def besa_masked_linear(x: torch.Tensor, weight: torch.Tensor, ranks: torch.Tensor, logits: torch.Tensor,
                       bias: torch.Tensor | None = None, *, sigmoid: bool = True, log_prior: torch.Tensor | None = None,
                       backend: str | None = None) -> torch.Tensor:
    """y = x @ (W * H)^T + bias with BESA's straight-through mask; differentiable in x and logits.

    x (..., in) in weight's dtype; weight (out, in); ranks (out, in) int32 from `row_ranks`;
    logits (out, K) per row or (1, K) per layer, float32; log_prior (K,) is added to the softmax
    input (p = softmax(sigmoid(logits) + log_prior)), e.g. `target_log_prior` to start at a target.
    """
    _check_inputs(x, weight, ranks, logits, bias, log_prior)
    name, forward_impl = _backend.resolve(_FORWARD, backend, x.device)
    _, backward_impl = _backend.resolve(_BACKWARD, name, x.device)
    y = _BesaMaskedLinear.apply(x, weight.detach(), ranks.contiguous(), logits, log_prior, sigmoid, forward_impl, backward_impl)
    return y if bias is None else y + bias.detach().to(y.dtype)
