"""Weight updates that minimise ||(W - W')X||^2 = tr((W - W') H (W - W')^T) with W' = 0 off a mask.

Both official codes work in the Jacobi-normalised space: d = sqrt(diag H) + 1e-8, H~ = H / d / d^T,
B = (W * d)^T (in x out, one column per output row; |B| is the Wanda score), and solve
min (B - B0)^T H~ (B - B0) column by column, on the whole matrix at once (batched GEMMs).

- ADMM (Boza, fmfi-compbio/admm-pruning@8039208, lib/admm.py `AdmmPruner.fasterprune`): damping
  percdamp * mean(diag H~) added after normalising (and inside the target H~ B0), fixed rho = 1, one
  explicit fp32 inverse, 20 iterations, returns the projected Z = (B + U) * mask. `admm_prune` also
  chooses the mask during the first `iterative_prune` iterations from |B + U| (unstructured over the
  whole layer at the final sparsity, as the code does; per output with the cubic schedule when
  per_out=True; N:M keeps the top m - n of every group and prunes the rest on the cubic schedule,
  the official code's 2:4 generalised to any n:m).
- ALPS (Meng et al., mazumder-lab/ALPS@8af9e6b, alps.py `ALPS_prune.ALPS_admm` + `cg_batch`): damping
  0.01 * mean(diag H) added before normalising, (H~ + rho I)^-1 from one fp64 eigendecomposition,
  rho from 0.1 raised by 1.1-1.3x while the support still changes, stop once it is frozen; then
  conjugate gradients restricted to the support (the residual masked to it) from the projected B.
  On a fixed mask (`reconstruct(method="alps")`) only that CG step runs, from the masked weights.

Both follow the official operation order (so that masks agree exactly with literal ports); dead code
and the unused diagnostics (ALPS's error printouts) are left out, and CG computes H~ P once per step.
"""
from __future__ import annotations

import torch

EPS_NORM = 1e-8  # both codes add it to sqrt(diag H)


def _work_dtype(weight: torch.Tensor) -> torch.dtype:
    """fp32 as both official codes (fp64 when the weight is fp64, e.g. to check convergence)."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _normalised(hessian: torch.Tensor, dtype: torch.dtype, damp_before: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(H~, d): H~ = H / d / d^T with d = sqrt(diag H) + 1e-8, after adding damp_before * mean(diag H)."""
    H = hessian.to(dtype=dtype, copy=True)
    if damp_before:
        diag = torch.arange(H.shape[0], device=H.device)
        H[diag, diag] += damp_before * torch.mean(torch.diag(H)).item()
    d = torch.diag(H).sqrt() + EPS_NORM
    H = H / d
    H = (H.T / d).T
    return H, d


# ---------------------------------------------------------------------------------------------- ADMM

def _admm_setup(weight, hessian, percdamp):
    """(H~ + lambda I, d, B0) as AdmmPruner.fasterprune before its mask step."""
    H, d = _normalised(hessian, _work_dtype(weight))
    B = (weight.to(H.dtype) * d).T
    diag = torch.arange(H.shape[0], device=H.device)
    H[diag, diag] += percdamp * torch.diag(H).mean()
    return H, d, B


def _admm_iterate(H, B, mask, rho, iters, choose_mask=None):
    """The ADMM loop of AdmmPruner.fasterprune; `choose_mask(t, B + U)` re-selects the mask while it returns one."""
    diag = torch.arange(H.shape[0], device=H.device)
    XY = H.matmul(B)
    H[diag, diag] += rho
    Hinv = torch.inverse(H)
    del H
    U = torch.zeros_like(B)
    for t in range(iters):
        if choose_mask is not None:
            chosen = choose_mask(t, B + U)
            if chosen is not None:
                mask = chosen
        Z = (B + U) * mask
        U = U + (B - Z)
        B = Hinv.matmul(XY + rho * (Z - U))
    return (B + U) * mask, mask


def _admm_output(Z, d, dtype):
    return (Z.T / d).to(dtype)


def admm_reconstruct(weight, keep, hessian, percdamp=0.1, rho=1.0, iters=20):
    """Fixed-mask ADMM: admm-pruning's iterative_prune=0 branch with the given mask instead of |B|'s."""
    H, d, B = _admm_setup(weight, hessian, percdamp)
    mask = keep.T
    if iters == 0:
        return _admm_output(B * mask, d, weight.dtype)
    Z, _ = _admm_iterate(H, B, mask, rho, iters)
    return _admm_output(Z, d, weight.dtype)


def _cubic(sparsity: float, t: int, steps: int) -> float:
    return sparsity - sparsity * (1 - (t + 1) / steps) ** 3


def _lowest_k(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k smallest entries of a 1-D tensor: the set the official torch.topk(largest=False)
    picks, found by kthvalue (several times faster on CPU); ties at the k-th value go to the lowest indices
    (topk leaves their order unspecified)."""
    if k <= 0:
        return torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    if k >= flat.numel():
        return torch.ones(flat.shape, dtype=torch.bool, device=flat.device)
    threshold = flat.kthvalue(k).values
    low = flat < threshold
    missing = k - int(low.sum())
    if missing:
        low[(flat == threshold).nonzero().flatten()[:missing]] = True
    return low


def _unstructured_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the int(numel * sparsity) smallest of the whole layer."""
    return ~_lowest_k(score.flatten(), int(score.numel() * sparsity)).reshape(score.shape)


def _per_out_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep entries >= the int(in * sparsity)-th smallest of each output column (ties kept)."""
    thres = score.sort(dim=0)[0][int(score.shape[0] * sparsity)]
    return score >= thres.unsqueeze(0)


def _nm_top_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The m - n largest of every m consecutive inputs per output (score is in x out), chosen by sort as the code does."""
    groups = score.T.reshape(-1, m)
    order = groups.sort(dim=1)[1]
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=score.device)
    rows = torch.arange(groups.shape[0], device=score.device)
    for slot in range(n, m):
        mask[rows, order[:, slot]] = 1
    return mask.reshape(score.T.shape).T


def admm_prune(weight, hessian, sparsity, n, m, percdamp=0.1, rho=1.0, iterative_prune=15, iters=20, per_out=False):
    """admm-pruning's mask-selecting ADMM (defaults of lib/prune.py::prune_admm). Returns (weight, keep)."""
    H, d, B = _admm_setup(weight, hessian, percdamp)
    if m:
        sparsity = n / m
    if iterative_prune == 0:
        score = B.abs()
        if m:
            mask = _nm_top_mask(score, n, m)
        elif per_out:
            mask = _per_out_mask(score, sparsity)
        else:
            mask = _unstructured_mask(score, sparsity)
        if iters == 0:
            return _admm_output(B * mask, d, weight.dtype), mask.T.contiguous()
        Z, mask = _admm_iterate(H, B, mask, rho, iters)
        return _admm_output(Z, d, weight.dtype), mask.T.contiguous()

    def choose_mask(t, BU):
        if t >= iterative_prune:
            return None
        score = BU.abs()
        current = _cubic(sparsity, t, iterative_prune)
        if m:
            top = _nm_top_mask(score, n, m)
            score[top] = torch.inf
            thres = score.flatten().kthvalue(int(score.numel() * current) + 1)[0]
            return score >= thres
        if per_out:
            return _per_out_mask(score, current)
        return _unstructured_mask(score, sparsity)  # the official code passes the final sparsity here

    if iters == 0:
        raise ValueError("admm_prune with iterative_prune > 0 needs iters >= 1 (iters=0 only returns a mask with iterative_prune=0)")
    Z, mask = _admm_iterate(H, B, None, rho, iters, choose_mask)
    return _admm_output(Z, d, weight.dtype), mask.T.contiguous()


# ---------------------------------------------------------------------------------------------- ALPS

class _Projection:
    """ALPS's projection P: keep the k largest |B| of the layer, or the `keep_n` largest of every m inputs per output."""

    def __init__(self, shape, sparsity, keep_n, m):
        self.totp, self.cols = shape
        self.keep_n, self.m = keep_n, m
        params = self.totp * self.cols
        if m:
            self.groups = params // m
            self.k_keep = params * keep_n / m
        else:
            self.k_keep = int(round((1 - sparsity) * params))

    def grouped(self, B):
        """B (in x out) as the official code lays out N:M groups: (out * in / m, m)."""
        return B.t().reshape(self.groups, self.m)

    def __call__(self, B):
        """(P(B), zero pattern in the layout the support-change count uses)."""
        if self.m:
            G = self.grouped(B)
            _, idx = torch.topk(-G ** 2, self.m - self.keep_n, dim=1)
            G = G.scatter(1, idx, 0.0)
            return G.reshape(self.cols, self.totp).t(), G == 0
        flat = B.reshape(-1).clone()
        flat[_lowest_k(flat ** 2, flat.numel() - self.k_keep)] = 0
        return flat.reshape(self.totp, self.cols), flat == 0


def _inverse_from_eigh(L, Q, rho, dtype):
    return (Q @ ((1 / (L + rho)) * Q).T).to(dtype)


def alps_cg(A, rhs, support, X0, rtol=1e-4, atol=0.0, maxiter=10):
    """cg_batch of ALPS (itself from sbarratt/torch_cg) with M = identity: CG per column, residual masked
    to `support`; stops when every row of the unmasked residual A X - rhs is within rtol * ||rhs row||."""
    X = X0
    AX = A @ X
    R = (rhs - AX) * support
    rhs_norm = torch.norm(rhs, dim=1)
    stop = torch.max(rtol * rhs_norm, atol * torch.ones_like(rhs_norm))
    P = R
    rz_prev = None
    # a column whose residual has vanished to rounding stops (the official 10 steps never get there;
    # longer runs would otherwise divide underflowed numbers)
    floor = (R * R).sum(0) * torch.finfo(R.dtype).eps ** 2
    for k in range(1, maxiter + 1):
        rz = (R * R).sum(0)
        active = rz > floor
        if k > 1:
            denominator = rz_prev.clone()
            denominator[denominator == 0] = 1e-8
            P = R + torch.where(active, rz / denominator, 0.0).unsqueeze(0) * P
        AP = A @ P
        denominator = (P * AP).sum(0)
        denominator[denominator == 0] = 1e-8
        alpha = torch.where(active, rz / denominator, 0.0).unsqueeze(0)
        X = X + alpha * P
        AX = AX + alpha * AP
        R = (R - alpha * AP) * support
        rz_prev = rz
        if (torch.norm(AX - rhs, dim=1) <= stop).all():
            break
    return X


def alps_reconstruct(weight, keep, hessian, damp=0.01, cg_iters=10, rtol=1e-4, init=None):
    """ALPS's support-restricted CG on a given mask, started from init (default: the weights) on the mask."""
    H, d = _normalised(hessian, _work_dtype(weight), damp)
    W = weight.to(H.dtype) * d
    rhs = torch.matmul(W, H).T
    support = keep.T.to(H.dtype)
    start = W if init is None else init.to(H.dtype) * d
    B = alps_cg(H, rhs, support, start.T * support, rtol=rtol, maxiter=cg_iters)
    return (B.t() / d).to(weight.dtype)


def alps_prune(weight, hessian, sparsity, n, m, damp=0.01, rho=0.1, max_iter=300, update_iter=3, switch_iter=30,
               cg_iters=10, rtol=1e-4):
    """ALPS_prune.ALPS_admm: ADMM with the adaptive rho schedule, then CG on the support. Returns (weight, keep)."""
    H, d = _normalised(hessian, _work_dtype(weight), damp)
    W = weight.to(H.dtype)
    YtX_T = torch.matmul(W * d, H).T
    B = (W * d).t().clone()
    B_orig = B.clone()
    project = _Projection(B.shape, sparsity, m - n if m else 0, m)
    L, Q = torch.linalg.eigh(H.double())
    Hinv = _inverse_from_eigh(L, Q, rho, H.dtype)
    V = torch.zeros_like(B)
    D, zeros_prev = project(B)
    D_init = D.clone()
    raised = False
    for i in range(max_iter):
        B = Hinv @ (YtX_T - V + rho * D)
        D, zeros = project((V + rho * B) / rho)
        V = V + rho * (B - D)
        if (i + 1) % update_iter:
            continue
        change = (zeros != zeros_prev).sum().item()
        ratio = change / project.k_keep
        if ratio > 0.1:
            raised, rho = True, rho * 1.3
        elif ratio > 0.005:
            raised, rho = True, rho * 1.2
        elif change > 0.5:
            if raised:
                rho *= 1.1
            else:
                rho /= 5
                B, D, V = B_orig.clone(), D_init.clone(), torch.zeros_like(B)
        elif raised:
            break
        else:
            rho /= 5
        zeros_prev = zeros
        rho = min(rho, 1e6)
        Hinv = _inverse_from_eigh(L, Q, rho, H.dtype)
        if i >= switch_iter and ratio < 0.0003:
            break
    del Hinv, V, D
    B, _ = project(B)
    B = alps_cg(H, YtX_T, (B != 0).to(H.dtype), B, rtol=rtol, maxiter=cg_iters)
    keep = B.t() != 0
    return (B.t() / d).to(weight.dtype), keep
