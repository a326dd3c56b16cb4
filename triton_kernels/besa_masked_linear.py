"""Fused BESA masked linear: the hard mask is rebuilt from row ranks in registers, never stored.

Row o of W (out, in) keeps the weights whose importance rank (0 = least important) is >= n[o]:
    forward   y[t, o]  = sum_i x[t, i] * W[o, i] * [rank[o, i] >= n[o]]
    backward  dx[t, i] = sum_o dy[t, o] * W[o, i] * [rank[o, i] >= n[o]]
              bins[o, k] += G[o, i]  for k = bucket[rank[o, i]],  G = (dy^T x) * W
bins feed the logit gradient: with candidate prune counts tau_k (non-increasing in k) the soft keep
probability of rank t is P(t) = sum_k p_k [t >= tau_k], so dL/dp_k = sum_{k' <= k} bins[o, k'] (a
prefix sum over 101 values, done by the caller). Neither W*M nor the [candidates x in] probability
matrix of the reference implementation is materialised; bins are accumulated with atomics.
"""

import torch
import triton
import triton.language as tl

from sparsekit import backend


@triton.jit
def _forward_kernel(x_ptr, w_ptr, rank_ptr, count_ptr, y_ptr,
                    T, N, K,  # tokens, out features, in features
                    stride_xt, stride_xk, stride_wn, stride_wk, stride_rn, stride_rk, stride_yt, stride_yn,
                    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    t_ok, n_ok = offs_t < T, offs_n < N
    count = tl.load(count_ptr + offs_n, mask=n_ok, other=0)
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        x = tl.load(x_ptr + offs_t[:, None] * stride_xt + offs_k[None, :] * stride_xk,
                    mask=t_ok[:, None] & k_ok[None, :], other=0.0)
        w_ok = k_ok[:, None] & n_ok[None, :]
        w = tl.load(w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn, mask=w_ok, other=0.0)
        rank = tl.load(rank_ptr + offs_k[:, None] * stride_rk + offs_n[None, :] * stride_rn, mask=w_ok, other=0)
        w = tl.where(rank >= count[None, :], w, tl.zeros_like(w))
        if UPCAST:
            x, w = x.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    tl.store(y_ptr + offs_t[:, None] * stride_yt + offs_n[None, :] * stride_yn, acc.to(y_ptr.dtype.element_ty),
             mask=t_ok[:, None] & n_ok[None, :])


@triton.jit
def _grad_x_kernel(dy_ptr, w_ptr, rank_ptr, count_ptr, dx_ptr,
                   T, N, K,
                   stride_dyt, stride_dyn, stride_wn, stride_wk, stride_rn, stride_rk, stride_dxt, stride_dxk,
                   BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    t_ok, k_ok = offs_t < T, offs_k < K
    acc = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        dy = tl.load(dy_ptr + offs_t[:, None] * stride_dyt + offs_n[None, :] * stride_dyn,
                     mask=t_ok[:, None] & n_ok[None, :], other=0.0)
        w_ok = n_ok[:, None] & k_ok[None, :]
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk, mask=w_ok, other=0.0)
        rank = tl.load(rank_ptr + offs_n[:, None] * stride_rn + offs_k[None, :] * stride_rk, mask=w_ok, other=0)
        count = tl.load(count_ptr + offs_n, mask=n_ok, other=0)
        w = tl.where(rank >= count[:, None], w, tl.zeros_like(w))
        if UPCAST:
            dy, w = dy.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(dy, w, acc, input_precision=PRECISION)
    tl.store(dx_ptr + offs_t[:, None] * stride_dxt + offs_k[None, :] * stride_dxk, acc.to(dx_ptr.dtype.element_ty),
             mask=t_ok[:, None] & k_ok[None, :])


@triton.jit
def _grad_bins_kernel(dy_ptr, x_ptr, w_ptr, rank_ptr, bucket_ptr, bins_ptr,
                      T, N, K, NUM_CANDIDATES,
                      stride_dyt, stride_dyn, stride_xt, stride_xk, stride_wn, stride_wk, stride_rn, stride_rk,
                      BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok, k_ok = offs_n < N, offs_k < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)  # (dy^T x) tile
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_ok = offs_t < T
        dy_t = tl.load(dy_ptr + offs_n[:, None] * stride_dyn + offs_t[None, :] * stride_dyt,
                       mask=n_ok[:, None] & t_ok[None, :], other=0.0)
        x = tl.load(x_ptr + offs_t[:, None] * stride_xt + offs_k[None, :] * stride_xk,
                    mask=t_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:
            dy_t, x = dy_t.to(tl.float32), x.to(tl.float32)
        acc = tl.dot(dy_t, x, acc, input_precision=PRECISION)
    w_ok = n_ok[:, None] & k_ok[None, :]
    w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk, mask=w_ok, other=0.0)
    rank = tl.load(rank_ptr + offs_n[:, None] * stride_rn + offs_k[None, :] * stride_rk, mask=w_ok, other=0)
    bucket = tl.load(bucket_ptr + rank, mask=w_ok, other=0)
    tl.atomic_add(bins_ptr + offs_n[:, None] * NUM_CANDIDATES + bucket, acc * w.to(tl.float32), mask=w_ok)


def _precision(dtype: torch.dtype):
    return "ieee" if dtype in (torch.float32, torch.float64) else None


# UPCAST converts the tiles to fp32 before tl.dot: under the interpreter, whose tl.dot mis-handles bf16 (numpy
# has no bf16), and for float64 inputs everywhere (the accumulator is fp32; a GPU's fp64 dot does not fit it).
def _upcast(dtype: torch.dtype) -> bool:
    return backend.triton_interpreting() or dtype == torch.float64


def besa_masked_linear_forward(x, weight, ranks, prune_counts, block_t=64, block_n=64, block_k=32):
    """x (tokens, in), weight (out, in) of x's dtype, ranks (out, in) int32, prune_counts (out,) int32."""
    tokens, k = x.shape
    n = weight.shape[0]
    y = torch.empty(tokens, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(tokens, block_t), triton.cdiv(n, block_n))
    _forward_kernel[grid](x, weight, ranks, prune_counts, y, tokens, n, k,
                          x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), ranks.stride(0), ranks.stride(1),
                          y.stride(0), y.stride(1),
                          BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_K=block_k, PRECISION=_precision(x.dtype), UPCAST=_upcast(x.dtype))
    return y


def besa_masked_linear_backward(grad_y, x, weight, ranks, prune_counts, bucket_of_rank, num_candidates,
                                need_grad_x=True, block_t=64, block_n=64, block_k=32):
    """Returns (grad_x (tokens, in) or None, bins (out, num_candidates) fp32); see the module docstring."""
    tokens, k = x.shape
    n = weight.shape[0]
    precision = _precision(x.dtype)
    grad_x = None
    if need_grad_x:
        grad_x = torch.empty(tokens, k, dtype=x.dtype, device=x.device)
        grid = (triton.cdiv(tokens, block_t), triton.cdiv(k, block_k))
        _grad_x_kernel[grid](grad_y, weight, ranks, prune_counts, grad_x, tokens, n, k,
                             grad_y.stride(0), grad_y.stride(1), weight.stride(0), weight.stride(1),
                             ranks.stride(0), ranks.stride(1), grad_x.stride(0), grad_x.stride(1),
                             BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_K=block_k, PRECISION=precision, UPCAST=_upcast(x.dtype))
    bins = torch.zeros(n, num_candidates, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    _grad_bins_kernel[grid](grad_y, x, weight, ranks, bucket_of_rank, bins, tokens, n, k, num_candidates,
                            grad_y.stride(0), grad_y.stride(1), x.stride(0), x.stride(1),
                            weight.stride(0), weight.stride(1), ranks.stride(0), ranks.stride(1),
                            BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_K=block_k, PRECISION=precision, UPCAST=_upcast(x.dtype))
    return grad_x, bins


def compile_variants():
    """Every kernel specialisation the two launchers can pick on a GPU (default tiles; x and weight share a dtype)."""
    from sparsekit.triton_kernels.variants import FLOATS_AND_FP64, Variant

    variants = []
    for dtype in FLOATS_AND_FP64:
        tiles = dict(BLOCK_T=64, BLOCK_N=64, BLOCK_K=32, PRECISION="ieee" if dtype in ("fp32", "fp64") else None,
                     UPCAST=dtype == "fp64")
        unit = {"stride_xk", "stride_wk", "stride_rk", "stride_yn", "stride_dyn", "stride_dxk"}  # contiguous rows
        sizes = dict(T="i32", N="i32", K="i32")
        fwd = dict(x_ptr=f"*{dtype}", w_ptr=f"*{dtype}", rank_ptr="*i32", count_ptr="*i32", y_ptr=f"*{dtype}", **sizes)
        grad_x = dict(dy_ptr=f"*{dtype}", w_ptr=f"*{dtype}", rank_ptr="*i32", count_ptr="*i32", dx_ptr=f"*{dtype}", **sizes)
        bins = dict(dy_ptr=f"*{dtype}", x_ptr=f"*{dtype}", w_ptr=f"*{dtype}", rank_ptr="*i32", bucket_ptr="*i32",
                    bins_ptr="*fp32", NUM_CANDIDATES="i32", **sizes)
        for kernel, types in ((_forward_kernel, fwd), (_grad_x_kernel, grad_x), (_grad_bins_kernel, bins)):
            strides = [a for a in kernel.arg_names if a.startswith("stride_")]
            variants.append(Variant(kernel, {**types, **{a: "i32" for a in strides if a not in unit}},
                                    {**{a: 1 for a in strides if a in unit}, **tiles}))
    return variants
