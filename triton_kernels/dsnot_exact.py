"""Fused DSnoT mode="exact": the whole swap loop of a row in one program, the mask written in place.

Row i has error E = d H d^T, d = W0 - W * M; R = d H is computed once by a GEMM (the launcher, in the
torch backend's row chunks so both backends start from identical R). Each cycle, in one pass over
the row (tiles of BLOCK columns):
    grow_j  = W_j^2 H_jj - 2 W_j R_j   over pruned j     (regrow j: d_j -= W_j)
    prune_j = W_j^2 H_jj + 2 W_j R_j   over kept j       (prune j:  d_j += W_j)
unstructured: g = first argmin grow, q = first argmin prune; N:M: per M-group the first argmin of
each, then the first group with the smallest grow + prune. delta = grow_g + prune_q - 2 W_g W_q H_gq;
if delta < 0 the swap is made (mask bytes written in place) and a second pass applies
R += W_q H[q, :] - W_g H[g, :]; otherwise the row stops for good. Same operation order as
sparsekit/torch_backend/dsnot_exact.py and no FMA contraction, so masks agree exactly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BIG: tl.constexpr = tl.constexpr(2**30)  # index sentinel above any column; a jit function reads only constexpr globals


@triton.jit
def _dsnot_exact_kernel(W, KEEP, R, H, DIAG, cols, stride_w, stride_k, stride_r, stride_h, max_cycles,
                        M: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    w_row, k_row, r_row = W + row * stride_w, KEEP + row * stride_k, R + row * stride_r
    cols_ar = tl.arange(0, BLOCK)
    active = 1
    for _ in range(max_cycles):
        if active == 1:
            best_score = float("inf")
            best_grow = float("inf")
            best_prune = float("inf")
            g = 0
            q = 0
            for start in range(0, cols, BLOCK):
                offs = start + cols_ar
                inside = offs < cols
                w = tl.load(w_row + offs, mask=inside, other=0.0)
                r = tl.load(r_row + offs, mask=inside, other=0.0)
                kept = tl.load(k_row + offs, mask=inside, other=0) != 0
                w2d = w * w * tl.load(DIAG + offs, mask=inside, other=0.0)
                grow = tl.where(inside & ~kept, w2d - 2 * w * r, float("inf"))
                prune = tl.where(inside & kept, w2d + 2 * w * r, float("inf"))
                if M == 0:
                    tile_grow = tl.min(grow, axis=0)
                    tile_g = tl.min(tl.where(grow == tile_grow, offs, BIG), axis=0)
                    tile_prune = tl.min(prune, axis=0)
                    tile_q = tl.min(tl.where(prune == tile_prune, offs, BIG), axis=0)
                    g = tl.where(tile_grow < best_grow, tile_g, g)
                    best_grow = tl.minimum(tile_grow, best_grow)
                    q = tl.where(tile_prune < best_prune, tile_q, q)
                    best_prune = tl.minimum(tile_prune, best_prune)
                else:
                    grow2 = tl.reshape(grow, (BLOCK // M, M))
                    prune2 = tl.reshape(prune, (BLOCK // M, M))
                    group_score = tl.min(grow2, axis=1) + tl.min(prune2, axis=1)
                    gi = tl.argmin(grow2, axis=1, tie_break_left=True)
                    qi = tl.argmin(prune2, axis=1, tie_break_left=True)
                    tile_score = tl.min(group_score, axis=0)
                    groups = tl.arange(0, BLOCK // M)
                    tile_group = tl.min(tl.where(group_score == tile_score, groups, BIG), axis=0)
                    pick = groups == tile_group
                    base = start + tile_group * M
                    tile_g = base + tl.sum(tl.where(pick, gi, 0), axis=0)
                    tile_q = base + tl.sum(tl.where(pick, qi, 0), axis=0)
                    better = tile_score < best_score
                    g = tl.where(better, tile_g, g)
                    q = tl.where(better, tile_q, q)
                    best_score = tl.minimum(tile_score, best_score)
            if M == 0:
                best_score = best_grow + best_prune
            w_g = tl.load(w_row + g)
            w_q = tl.load(w_row + q)
            delta = best_score - 2 * w_g * w_q * tl.load(H + g.to(tl.int64) * stride_h + q)
            if (delta < 0) & (delta > float("-inf")):
                tl.store(k_row + g, 1)
                tl.store(k_row + q, 0)
                h_g, h_q = H + g.to(tl.int64) * stride_h, H + q.to(tl.int64) * stride_h
                for start in range(0, cols, BLOCK):
                    offs = start + cols_ar
                    inside = offs < cols
                    r = tl.load(r_row + offs, mask=inside, other=0.0)
                    step = w_q * tl.load(h_q + offs, mask=inside, other=0.0) - w_g * tl.load(h_g + offs, mask=inside, other=0.0)
                    tl.store(r_row + offs, r + step, mask=inside)
            else:
                active = 0


def dsnot_exact(weight, keep, hessian, residual, max_cycles, m=0):
    """Same contract as sparsekit.torch_backend.dsnot_exact.dsnot_exact (inputs checked by sparsekit.ops.dsnot)."""
    rows, cols = weight.shape
    if max_cycles == 0 or rows == 0:
        return keep.clone()
    if m and m & (m - 1):
        raise ValueError(f"the Triton DSnoT exact kernel needs M to be a power of two, got {m}; use backend='torch'")
    H = hessian.to(device=weight.device, dtype=torch.float32).contiguous()
    W = weight.float().contiguous()
    R = residual.contiguous()  # updated in place by the kernel
    out = keep.to(torch.uint8).contiguous()
    block = max(triton.next_power_of_2(min(cols, 1024)), 16, m)
    _dsnot_exact_kernel[(rows,)](W, out, R, H, H.diagonal().contiguous(), cols, W.stride(0), out.stride(0), R.stride(0),
                                 H.stride(0), int(max_cycles), M=int(m), BLOCK=block, num_warps=4, enable_fp_fusion=False)
    return out.bool()


def compile_variants():
    """Every kernel specialisation dsnot_exact can launch on a GPU: unstructured or N:M with M a power of
    two (2:4, 4:8 and 8:16 here), BLOCK = max(next_power_of_2(min(cols, 1024)), 16, M)."""
    from sparsekit.triton_kernels.variants import Variant

    types = dict(W="*fp32", KEEP="*u8", R="*fp32", H="*fp32", DIAG="*fp32", cols="i32", stride_w="i32", stride_k="i32",
                 stride_r="i32", stride_h="i32", max_cycles="i32")
    return [Variant(_dsnot_exact_kernel, types, dict(M=m, BLOCK=block), fp_fusion=False)
            for m in (0, 4, 8, 16) for block in (16, 32, 64, 128, 256, 512, 1024) if block >= m]
