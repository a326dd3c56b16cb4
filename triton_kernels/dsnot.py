"""Fused DSnoT: candidate selection and the whole prune-and-grow cycle loop in one kernel.

Per row: C_j = W_j * mean_j, v_j = C_j * var_j^-p (0 where C_j = 0), Wanda_j = |W_j| * sqrt(sq_norm_j),
eps = initial sum of C over pruned weights (given, float64). Only the first T = max_cycles entries
of each candidate list can ever be used, so each list is a running "T smallest keys" buffer merged
tile by tile (sort the tile descending, elementwise min with the ascending buffer, bitonic merge) --
no full row sort (a hand-written bitonic network). A key packs (monotone int32 of the float, column) into an int64, which fixes the
tie order exactly as the torch reference (sparsekit/torch_backend/dsnot.py) defines it:
  grow_up   pruned, v > 0: (v desc, column desc)   grow_down pruned, v < 0: (v asc, column asc)
  prune_neg kept,   C < 0: (Wanda asc, column asc)  prune_pos kept,   C > 0: (Wanda asc, column asc)
Then every cycle each active row takes g (grow list by the sign of eps) and q (prune list, or for
N:M the lowest-Wanda still-prunable weight of g's group), eps_new = (eps + C_q) - C_g in float64;
official rule: accept while |eps| > threshold (and sign(eps_new) = sign(eps0) with same_sign / N:M);
error rule: accept iff (eps^2 - eps_new^2) + W_g^2 s_g - W_q^2 s_q > 0 (s = cost_scale). The first
rejected (or exhausted) swap freezes the row. eps, pointers and the active flag live in registers;
the accepted swaps are list prefixes (plus the pruned columns for N:M) and are stored once at the end.
"""

import torch
import triton
import triton.language as tl

from sparsekit import backend

SENTINEL: tl.constexpr = tl.constexpr(2**63 - 1)  # "no candidate" key, above every real key
COLMAX: tl.constexpr = tl.constexpr(2**31 - 1)


@triton.jit
def _merge_if_better(buf, key, R: tl.constexpr, L: tl.constexpr, LOG: tl.constexpr, LIBRARY_SORT: tl.constexpr):
    """The L smallest of buf (R, L; ascending per row) and key (R, L), ascending per row.

    min(buf, key sorted descending) holds them as a bitonic sequence; one bitonic merge sorts it.
    Skipped when no row has a key below its current L-th smallest. Compiled for a GPU, both sorts are
    tl.sort (LIBRARY_SORT): the hand-written network below keeps Triton's layout pass
    (remove-layout-conversions) busy for minutes. Interpreted, the network is used: it needs only
    reshape / permute / split / join / min / max / where (tl.sort's xor reductions crawl in the
    interpreter, and so do calls of jit helpers, hence one function). Both give the same sorted
    list (keys are unique but for SENTINEL), hence the same masks.
    """
    if LIBRARY_SORT:
        if tl.sum((key < tl.max(buf, axis=1)[:, None]).to(tl.int32)) > 0:
            buf = tl.sort(tl.minimum(buf, tl.sort(key, dim=1, descending=True)), dim=1)
    elif tl.sum((key < tl.max(buf, axis=1)[:, None]).to(tl.int32)) > 0:
        # stage s sorts runs of 2**s, alternating descending/ascending, the last run descending;
        # stage LOG + 1 merges min(buf, key) ascending (one run of 2L)
        for s in tl.static_range(1, LOG + 2):
            if s == LOG + 1:
                key = tl.minimum(buf, key)
            # pair distance D = 2**k, halving each step. Shapes use k directly: a local `D: tl.constexpr`
            # would be re-assigned on the next unrolled step (a compile error the interpreter does not
            # raise) and a plain `D = ...` would become a tensor, not a shape.
            for k in tl.static_range((s if s <= LOG else LOG) - 1, -1, -1):
                # pairs (i, i + D) inside blocks of 2D: split them along a trailing axis of 2
                left, right = tl.split(tl.permute(tl.reshape(key, (R, L >> (k + 1), 2, 1 << k)), (0, 1, 3, 2)))
                low = tl.minimum(left, right)
                high = tl.maximum(left, right)
                # block b of 2D pairs lies in run (b * 2D) // 2**s; even runs sort descending
                desc = ((((tl.arange(0, L >> (k + 1)) << (k + 1)) >> s) & 1) == 0)[None, :, None]
                if s > LOG:
                    desc = desc & False
                pair = tl.join(tl.where(desc, high, low), tl.where(desc, low, high))
                key = tl.reshape(tl.permute(pair, (0, 1, 3, 2)), (R, L))
        buf = key
    return buf


@triton.jit
def _dsnot_kernel(
    w_ptr, keep_ptr, out_ptr, mean_ptr, grow_ptr, norm_ptr, cost_ptr, eps0_ptr, eps_out_ptr,
    rows, cols, stride_w, stride_k, stride_o, threshold, max_cycles,
    SAME_SIGN: tl.constexpr, ERROR_RULE: tl.constexpr, N: tl.constexpr, M: tl.constexpr,
    BLOCK_R: tl.constexpr, LIST: tl.constexpr, LOG: tl.constexpr, LIBRARY_SORT: tl.constexpr,
):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = row < rows
    row64 = row.to(tl.int64)
    ar = tl.arange(0, LIST)
    big = tl.full((BLOCK_R, LIST), SENTINEL, tl.int64)
    grow_up, grow_down, prune_neg, prune_pos = big, big, big, big

    # 1. the first LIST candidates of each list, selected tile by tile
    for c0 in range(0, cols, LIST):
        col = c0 + ar
        ok = row_ok[:, None] & (col < cols)[None, :]
        w = tl.load(w_ptr + row64[:, None] * stride_w + col[None, :], mask=ok, other=0.0).to(tl.float32)
        kept = tl.load(keep_ptr + row64[:, None] * stride_k + col[None, :], mask=ok, other=0) != 0
        mean = tl.load(mean_ptr + col, mask=col < cols, other=0.0)
        c = w * mean[None, :]
        v = c * tl.where(c == 0.0, 1.0, tl.load(grow_ptr + col, mask=col < cols, other=0.0)[None, :])  # 0 * inf -> 0
        col64 = col.to(tl.int64)[None, :]
        pruned = ok & ~kept
        # keys: (int32 with the float's order) * 2**32 + column (grow_up: both reversed)
        vbits = v.to(tl.int32, bitcast=True)
        vord = tl.where(vbits < 0, vbits ^ 0x7FFFFFFF, vbits).to(tl.int64)
        grow_up = _merge_if_better(grow_up, tl.where(pruned & (v > 0), (-1 - vord) * 4294967296 + (COLMAX - col64), SENTINEL), BLOCK_R, LIST, LOG, LIBRARY_SORT)
        grow_down = _merge_if_better(grow_down, tl.where(pruned & (v < 0), vord * 4294967296 + col64, SENTINEL), BLOCK_R, LIST, LOG, LIBRARY_SORT)
        if M == 0:
            wanda = tl.abs(w) * tl.load(norm_ptr + col, mask=col < cols, other=0.0)[None, :]
            wkey = wanda.to(tl.int32, bitcast=True).to(tl.int64) * 4294967296 + col64  # wanda >= +0
            prune_neg = _merge_if_better(prune_neg, tl.where(ok & kept & (c < 0), wkey, SENTINEL), BLOCK_R, LIST, LOG, LIBRARY_SORT)
            prune_pos = _merge_if_better(prune_pos, tl.where(ok & kept & (c > 0), wkey, SENTINEL), BLOCK_R, LIST, LOG, LIBRARY_SORT)

    # 2. the cycle loop, registers only (plus gathers of the few weights it touches)
    eps = tl.load(eps0_ptr + row, mask=row_ok, other=0.0)
    sign0 = tl.where(eps > 0, 1, tl.where(eps < 0, -1, 0))
    active = row_ok
    zero = tl.zeros((BLOCK_R,), tl.int32)
    p_up, p_down, p_neg, p_pos = zero, zero, zero, zero
    pruned_cols = tl.full((BLOCK_R, LIST), -1, tl.int32)  # N:M only: q of each accepted swap
    t = 0
    while (t < max_cycles) & (tl.max(active.to(tl.int32), axis=0) > 0):
        up = eps > 0
        # the entry at each row's pointer (SENTINEL past the end of the list)
        key_g = tl.sum(tl.where(ar[None, :] == tl.where(up, p_up, p_down)[:, None], tl.where(up[:, None], grow_up, grow_down), 0), axis=1)
        key_g = tl.where(tl.where(up, p_up, p_down) < LIST, key_g, SENTINEL)
        low32 = (key_g & 0xFFFFFFFF).to(tl.int32)
        g = tl.where(up, COLMAX - low32, low32)
        exhausted = key_g == SENTINEL
        if M == 0:
            p_q = tl.where(up, p_neg, p_pos)
            key_q = tl.sum(tl.where(ar[None, :] == p_q[:, None], tl.where(up[:, None], prune_neg, prune_pos), 0), axis=1)
            key_q = tl.where(p_q < LIST, key_q, SENTINEL)
            q = (key_q & 0xFFFFFFFF).to(tl.int32)
            exhausted = exhausted | (key_q == SENTINEL)
        else:
            look = active & ~exhausted
            start = tl.where(look, g // M * M, 0)
            best = tl.full((BLOCK_R,), float("inf"), tl.float32)
            q = start
            found = tl.zeros((BLOCK_R,), tl.int1)
            for j in tl.static_range(M):
                cj = start + j
                ld = look & (cj < cols)
                was_kept = tl.load(keep_ptr + row64 * stride_k + cj, mask=ld, other=0) != 0
                taken = tl.sum((pruned_cols == cj[:, None]).to(tl.int32), axis=1) > 0
                wj = tl.load(w_ptr + row64 * stride_w + cj, mask=ld, other=0.0).to(tl.float32)
                score = tl.abs(wj) * tl.load(norm_ptr + cj, mask=ld, other=0.0)
                better = was_kept & ~taken & (score < best)
                best = tl.where(better, score, best)
                q = tl.where(better, cj, q)
                found = found | (was_kept & ~taken)
            exhausted = exhausted | ~found
        touch = active & ~exhausted
        w_g = tl.load(w_ptr + row64 * stride_w + g, mask=touch, other=0.0).to(tl.float32)
        w_q = tl.load(w_ptr + row64 * stride_w + q, mask=touch, other=0.0).to(tl.float32)
        c_g = (w_g * tl.load(mean_ptr + g, mask=touch, other=0.0)).to(tl.float64)
        c_q = (w_q * tl.load(mean_ptr + q, mask=touch, other=0.0)).to(tl.float64)
        eps_new = (eps + c_q) - c_g
        if ERROR_RULE:
            wg64 = w_g.to(tl.float64)
            wq64 = w_q.to(tl.float64)
            cost_g = (wg64 * wg64) * tl.load(cost_ptr + g, mask=touch, other=0.0)
            cost_q = (wq64 * wq64) * tl.load(cost_ptr + q, mask=touch, other=0.0)
            accept = touch & ((((eps * eps) - (eps_new * eps_new)) + cost_g) - cost_q > 0)
        else:
            accept = touch & (tl.abs(eps) > threshold)
            if SAME_SIGN:
                sign_new = tl.where(eps_new > 0, 1, tl.where(eps_new < 0, -1, 0))
                accept = accept & (sign_new == sign0)
        active = accept
        eps = tl.where(accept, eps_new, eps)
        p_up += (accept & up).to(tl.int32)
        p_down += (accept & ~up).to(tl.int32)
        if M == 0:
            p_neg += (accept & up).to(tl.int32)
            p_pos += (accept & ~up).to(tl.int32)
        else:
            pruned_cols = tl.where((ar[None, :] == t) & accept[:, None], q[:, None], pruned_cols)
        t += 1

    # 3. store the accepted swaps: list prefixes (pointers stopped at the first rejection)
    tl.store(eps_out_ptr + row, eps, mask=row_ok)
    base = out_ptr + row64[:, None] * stride_o
    one = tl.full((BLOCK_R, LIST), 1, tl.int8)
    nil = tl.zeros((BLOCK_R, LIST), tl.int8)
    tl.store(base + (COLMAX - (grow_up & 0xFFFFFFFF).to(tl.int32)), one, mask=ar[None, :] < p_up[:, None])
    tl.store(base + (grow_down & 0xFFFFFFFF).to(tl.int32), one, mask=ar[None, :] < p_down[:, None])
    if M == 0:
        tl.store(base + (prune_neg & 0xFFFFFFFF).to(tl.int32), nil, mask=ar[None, :] < p_neg[:, None])
        tl.store(base + (prune_pos & 0xFFFFFFFF).to(tl.int32), nil, mask=ar[None, :] < p_pos[:, None])
    else:
        tl.store(base + pruned_cols, nil, mask=pruned_cols >= 0)


def _gpu_layout() -> bool:
    """Tiles and merge as on a GPU; not under the interpreter (numpy-backed: few large tiles are much faster)."""
    return not backend.triton_interpreting()


def dsnot(weight, keep, mean, grow_scale, col_norm, eps0, max_cycles, threshold, same_sign, n, m,
          error_rule=False, cost_scale=None, return_error=False):
    """Same contract as sparsekit.torch_backend.dsnot.dsnot (inputs prepared by sparsekit.ops.dsnot)."""
    rows, cols = weight.shape
    out = keep.clone(memory_format=torch.contiguous_format)
    eps = eps0.clone()
    if max_cycles == 0 or rows == 0 or cols == 0:
        return (out, eps) if return_error else out
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    keep_u8 = keep.contiguous().view(torch.uint8)
    out_u8 = out.view(torch.uint8)
    listlen = max(16, triton.next_power_of_2(min(max_cycles, cols)))  # any length >= T gives the same masks
    block_r = max(1, min(8, 512 // listlen))
    gpu_layout = _gpu_layout()
    if not gpu_layout:
        listlen = max(listlen, min(triton.next_power_of_2(cols), 256))
        block_r = min(triton.next_power_of_2(rows), 64)
    if cost_scale is None:
        cost_scale = torch.zeros(cols, dtype=torch.float64, device=weight.device)
    grid = (triton.cdiv(rows, block_r),)
    _dsnot_kernel[grid](
        weight, keep_u8, out_u8, mean.float().contiguous(), grow_scale.float().contiguous(),
        col_norm.float().contiguous(), cost_scale.double().contiguous(), eps0.double().contiguous(), eps,
        rows, cols, weight.stride(0), keep_u8.stride(0), out_u8.stride(0), float(threshold), int(max_cycles),
        SAME_SIGN=bool(same_sign or m), ERROR_RULE=bool(error_rule), N=int(n), M=int(m),
        BLOCK_R=block_r, LIST=listlen, LOG=listlen.bit_length() - 1, LIBRARY_SORT=gpu_layout,
        num_warps=4, enable_fp_fusion=False,
    )
    return (out, eps) if return_error else out


def compile_variants():
    """Kernel specialisations dsnot can launch on a GPU (each takes seconds to compile, so not the full product).

    LIST = max(16, next_power_of_2(min(max_cycles, cols))): 16..128 covers max_cycles <= 128 (default 50 -> 64).
    Every rule (official, official + same_sign, error; N:M forces same_sign) x pattern (unstructured, 2:4, 4:8)
    at LIST 64 in bf16; every LIST for unstructured and 2:4; every weight dtype at the defaults (the dtype only
    changes the weight loads, converted to fp32 at once).
    """
    from sparsekit.triton_kernels.variants import FLOATS_AND_FP64, Variant

    def variant(dtype="bf16", same_sign=False, error_rule=False, n=0, m=0, listlen=64):
        types = dict(w_ptr=f"*{dtype}", keep_ptr="*u8", out_ptr="*u8", mean_ptr="*fp32", grow_ptr="*fp32", norm_ptr="*fp32",
                     cost_ptr="*fp64", eps0_ptr="*fp64", eps_out_ptr="*fp64", rows="i32", cols="i32", stride_w="i32",
                     stride_k="i32", stride_o="i32", threshold="fp32", max_cycles="i32")
        consts = dict(SAME_SIGN=bool(same_sign or m), ERROR_RULE=error_rule, N=n, M=m, BLOCK_R=max(1, min(8, 512 // listlen)),
                      LIST=listlen, LOG=listlen.bit_length() - 1, LIBRARY_SORT=True)
        return Variant(_dsnot_kernel, types, consts, fp_fusion=False)

    rules = [dict(), dict(same_sign=True), dict(error_rule=True)]
    patterns = [dict(), dict(n=2, m=4), dict(n=4, m=8)]
    chosen = [variant(**rule, **pattern) for rule in rules for pattern in patterns]
    chosen += [variant(**pattern, listlen=listlen) for pattern in patterns[:2] for listlen in (16, 32, 64, 128)]
    chosen += [variant(dtype) for dtype in FLOATS_AND_FP64]
    return list({v.describe(): v for v in chosen}.values())  # without repeats
