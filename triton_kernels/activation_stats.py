"""Per-input-feature statistics of one chunk of calibration activations, in one pass.

For x of shape (B, S, C) (B sequences of S tokens), accumulated in fp32 whatever x's dtype:
    sum_x[c]   = sum_{b,t} x[b,t,c]
    sum_sq[c]  = sum_{b,t} x[b,t,c]^2
    sum_var[c] = sum_b M2_b[c] / S,   M2_b[c] = sum_t (x[b,t,c] - mean_b[c])^2
A program owns (a block of features, one sequence, one token span). It reads the span in tiles of
BLOCK_S tokens; each tile's (n, mean, M2) is exact two-pass in registers and is merged into the
running one by Chan's rule:  d = mean_t - mean;  mean += d * n_t / (n + n_t);
M2 += M2_t + d^2 * n * n_t / (n + n_t)  -- no E[x^2] - E[x]^2 cancellation for large-mean features.
When B * feature blocks is too few programs for the GPU, each sequence is cut into token spans i
whose results the launcher merges exactly, in float64: M2_b = sum_i M2_i + n_i (mean_i - mean_b)^2.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_C = 128  # features per program (contiguous in memory)
BLOCK_S = 32  # tokens per tile
PROGRAMS_PER_SM = 4  # split sequences into token spans until the grid has about this many programs per SM


@triton.jit
def _activation_partials_kernel(
    x_ptr, part_ptr, S, C, span, stride_b, stride_s, stride_c,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """part[b, split, :, c] = (sum x, sum x^2, mean, M2) over tokens [split*span, (split+1)*span) of sequence b."""
    feat = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    seq = tl.program_id(1)
    split = tl.program_id(2)
    feat_ok = feat < C
    t_begin = split * span
    t_end = tl.minimum(t_begin + span, S)
    base = x_ptr + seq.to(tl.int64) * stride_b + (feat * stride_c)[None, :]
    total = tl.zeros([BLOCK_C], tl.float32)
    total_sq = tl.zeros([BLOCK_C], tl.float32)
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    count = tl.full([], 0.0, tl.float32)
    for t0 in range(t_begin, t_end, BLOCK_S):
        tok = t0 + tl.arange(0, BLOCK_S)
        tok_ok = tok < t_end
        ok = tok_ok[:, None] & feat_ok[None, :]
        x = tl.load(base + (tok.to(tl.int64) * stride_s)[:, None], mask=ok, other=0.0).to(tl.float32)
        n_tile = tl.minimum(t_end - t0, BLOCK_S).to(tl.float32)
        tile_sum = tl.sum(x, 0)
        total += tile_sum
        total_sq += tl.sum(x * x, 0)
        tile_mean = tile_sum / n_tile
        dev = tl.where(ok, x - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(dev * dev, 0)
        merged = count + n_tile
        delta = tile_mean - mean
        mean += delta * (n_tile / merged)
        m2 += tile_m2 + delta * delta * (count * n_tile / merged)
        count = merged
    out = part_ptr + ((seq * tl.num_programs(2) + split) * 4).to(tl.int64) * C + feat
    tl.store(out, total, mask=feat_ok)
    tl.store(out + C, total_sq, mask=feat_ok)
    tl.store(out + 2 * C, mean, mask=feat_ok)
    tl.store(out + 3 * C, m2, mask=feat_ok)


def _auto_splits(x: torch.Tensor, feature_blocks: int) -> int:
    if x.device.type != "cuda":
        return 1
    target = PROGRAMS_PER_SM * torch.cuda.get_device_properties(x.device).multi_processor_count
    return triton.cdiv(target, feature_blocks * x.shape[0])


def activation_sums(x: torch.Tensor, *, token_splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backend of the activation_stats op: (sum_x, sum_sq, sum_var), fp32 vectors of length C.

    `token_splits` (default: automatic) cuts every sequence into that many token spans, computed by
    separate programs and merged exactly; it exists for tests and tuning and changes only rounding.
    """
    batch, seq_len, channels = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()  # features must be contiguous for coalesced loads; other strides are free
    if x.numel() == 0:  # nothing to launch: no sequences (or no features) sum to zeros
        zeros = torch.zeros(channels, dtype=torch.float32, device=x.device)  # (the op rejects sequences of 0 tokens)
        return zeros, zeros.clone(), zeros.clone()
    feature_blocks = triton.cdiv(channels, BLOCK_C)
    splits = token_splits if token_splits is not None else _auto_splits(x, feature_blocks)
    splits = max(1, min(splits, triton.cdiv(seq_len, BLOCK_S)))
    span = triton.cdiv(triton.cdiv(seq_len, splits), BLOCK_S) * BLOCK_S  # whole tiles per span
    splits = triton.cdiv(seq_len, span)
    parts = torch.empty((batch, splits, 4, channels), dtype=torch.float32, device=x.device)
    _activation_partials_kernel[(feature_blocks, batch, splits)](
        x, parts, seq_len, channels, span, x.stride(0), x.stride(1), x.stride(2),
        BLOCK_S=BLOCK_S, BLOCK_C=BLOCK_C,
    )
    sum_x = parts[:, :, 0].sum(dim=(0, 1))
    sum_sq = parts[:, :, 1].sum(dim=(0, 1))
    if splits == 1:
        return sum_x, sum_sq, (parts[:, 0, 3] / seq_len).sum(dim=0)
    counts = torch.full((splits,), float(span), dtype=torch.float64, device=x.device)
    counts[-1] = seq_len - span * (splits - 1)
    span_mean, span_m2 = parts[:, :, 2].double(), parts[:, :, 3].double()
    seq_mean = (span_mean * counts[:, None]).sum(dim=1, keepdim=True) / seq_len
    seq_m2 = (span_m2 + counts[:, None] * (span_mean - seq_mean).square()).sum(dim=1)
    return sum_x, sum_sq, (seq_m2 / seq_len).sum(dim=0).float()


def compile_variants():
    """Every kernel specialisation activation_sums can launch on a GPU (features made contiguous: stride_c = 1)."""
    from sparsekit.triton_kernels.variants import FLOATS_AND_FP64, Variant

    ints = dict(S="i32", C="i32", span="i32", stride_b="i32", stride_s="i32")
    return [Variant(_activation_partials_kernel, dict(x_ptr=f"*{dtype}", part_ptr="*fp32", **ints),
                    dict(stride_c=1, BLOCK_S=BLOCK_S, BLOCK_C=BLOCK_C)) for dtype in FLOATS_AND_FP64]
