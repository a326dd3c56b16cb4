"""2:4 sparse matmul for the memory-bound (decode) regime: out = x @ W.T (+ bias).

    x (M, K), any strides; W (N, K) 2:4 along K, stored compressed:
      values (N, K/2)  the two kept entries of every group of 4 in natural order,
      meta   int16 (N, K/16) torch's CUTLASS layout: native nibble of group g = 4c + j of row n is bits
             4j..4j+3 of native[n, c], low 2 bits = index i0 of values[n, 2g], high 2 bits = i1 of values[n, 2g+1]
             (i0 < i1), and native[n, c] is stored at flat position
             (c//2)*2N + (n//32)*64 + (n%8)*8 + ((n//16)%2)*4 + (c%2)*2 + (n//8)%2
             (CUTLASS reorder_meta + ColumnMajorInterleaved<2>, written in closed form; the tests check it
             against torch's `_calculate_meta_reordering_scatter_offsets`).
    out[m, n] = sum_g values[n, 2g] x[m, 4g + i0] + values[n, 2g+1] x[m, 4g + i1]  (+ bias[n]), fp32 accumulation.

Each program owns BLOCK_N weight rows and BLOCK_M tokens and one of SPLIT_K slices of K. It streams the
compressed weight once (values as 16-byte vectors, meta decoded by index arithmetic, no host reformatting)
and computes the transposed product acc[n, m] ("swap AB": the weight is the wide operand):
  * BLOCK_M >= 16: expand each [BLOCK_N, BLOCK_K/2] values tile to dense [BLOCK_N, BLOCK_K] in registers
    (two selects per dense slot) and `tl.dot` it with the x tile;
  * BLOCK_M < 16 (M <= 4): no expansion, gather x by index: per group, x[4g + i0] and x[4g + i1] are
    picked with selects and FMA'd with the two values (per-thread partial sums, reduced once at the end).
Meta (2-byte gathers) and x are prefetched one K block ahead in registers; values stream through Triton's
cp.async pipeline on the dot path and are prefetched by hand on the gather path.
Split-K partials go to an fp32 workspace with atomics; a per-tile counter elects the last program, which
reads the sum back while zeroing the workspace (so it stays clean for the next call), adds the bias and
casts. Without split-K the epilogue writes directly. The weight bytes are 1.125 NK (vs 2 NK dense), so
at small M the ceiling is 1.78x cuBLAS on H100 (shared/docs/kernels.md §4).

Two ways in. `sparse24_matmul` (the backend implementation) goes through Triton's autotuner and JIT
launcher: ~100 µs of Python per call. `build_launch_plan` resolves all of that once per (device, dtype,
M bucket, N, K, bias): the autotuned (or heuristic) config, the compiled kernel, the constexprs and the
split-K workspace; the returned `LaunchPlan` then costs a few µs per call (output allocation, stream
lookup, integer grid arithmetic, the compiled kernel's C launcher).
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl
import triton.testing

from sparsekit import backend
from sparsekit.m_buckets import m_bucket


def meta_position(n, c, rows: int):
    """Flat position in the CUTLASS-ordered meta (rows, K/16) of native meta element (n, c) (ints or tensors)."""
    return (c // 2) * (2 * rows) + (c % 2) * 2 + (n // 32) * 64 + (n % 8) * 8 + ((n // 16) % 2) * 4 + (n // 8) % 2


@triton.jit
def _meta_row_offset(n):
    # Row part of meta_position; the column part (c // 2) * 2N + (c % 2) * 2 is added per K block.
    return (n // 32) * 64 + (n % 8) * 8 + ((n // 16) % 2) * 4 + (n // 8) % 2


@triton.jit
def _group_indices(meta, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """meta int16 [BLOCK_N, BLOCK_K/16] -> (i0, i1) int32 [BLOCK_N, BLOCK_K/4], one pair per group of 4."""
    shifts = tl.arange(0, 4) * 4
    nibble = (meta.to(tl.int32)[:, :, None] >> shifts[None, None, :]) & 0xF
    nibble = tl.reshape(nibble, [BLOCK_N, BLOCK_K // 4])
    return nibble & 3, nibble >> 2


@triton.jit
def _expand(v0, v1, i0, i1, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Dense [BLOCK_N, BLOCK_K] from the two kept values per group; valid meta has i0 in 0..2, i1 in 1..3."""
    zero = tl.zeros_like(v0)
    d0 = tl.where(i0 == 0, v0, zero)
    d1 = tl.where(i0 == 1, v0, tl.where(i1 == 1, v1, zero))
    d2 = tl.where(i0 == 2, v0, tl.where(i1 == 2, v1, zero))
    d3 = tl.where(i1 == 3, v1, zero)
    # join(join(d0, d2), join(d1, d3))[..., a, b] = d_{2a+b}: row-major reshape gives d0 d1 d2 d3.
    return tl.reshape(tl.join(tl.join(d0, d2), tl.join(d1, d3)), [BLOCK_N, BLOCK_K])


@triton.jit
def _load_values(values_ptr, offs_n, n_ok, kb, K, stride_vn, offs_hv, BLOCK_K: tl.constexpr, EVEN: tl.constexpr):
    """values[n, kb*BK/2 : (kb+1)*BK/2] as [BLOCK_N, BLOCK_K/2] (rows contiguous: 16-byte loads)."""
    hv = kb * (BLOCK_K // 2) + offs_hv
    ptrs = values_ptr + offs_n[:, None] * stride_vn + hv[None, :]
    if EVEN:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=n_ok[:, None] & (hv < K // 2)[None, :], other=0.0)


@triton.jit
def _load_meta(meta_ptr, meta_row, n_ok, kb, N, K, offs_c, BLOCK_K: tl.constexpr, MASKED: tl.constexpr):
    """Native meta [BLOCK_N, BLOCK_K/16] of K block kb, gathered from the CUTLASS order (meta_position)."""
    c = kb * (BLOCK_K // 16) + offs_c
    ptrs = meta_ptr + meta_row[:, None] + ((c // 2) * (2 * N) + (c % 2) * 2)[None, :]
    if MASKED:
        return tl.load(ptrs, mask=n_ok[:, None] & (c < K // 16)[None, :], other=0)
    return tl.load(ptrs)


@triton.jit
def _load_x(x_ptr, perm_ptr, offs_m, m_ok, kb, K, stride_xm, stride_xk, offs_k, BLOCK_K: tl.constexpr,
            EVEN_K: tl.constexpr, PERMUTED: tl.constexpr):
    """x[m, kb*BK : (kb+1)*BK] as [BLOCK_M, BLOCK_K], rows past M are zeros; PERMUTED: x[m, perm[kb*BK : ...]]."""
    kk = kb * BLOCK_K + offs_k
    if PERMUTED:  # the input permutation folded into the load: column kk of the tile is x's column perm[kk]
        if EVEN_K:
            cols = tl.load(perm_ptr + kk)
        else:
            cols = tl.load(perm_ptr + kk, mask=kk < K, other=0)
    else:
        cols = kk
    ptrs = x_ptr + offs_m[:, None] * stride_xm + cols[None, :] * stride_xk
    if EVEN_K:
        return tl.load(ptrs, mask=m_ok[:, None], other=0.0)
    return tl.load(ptrs, mask=m_ok[:, None] & (kk < K)[None, :], other=0.0)


# M varies inside an M bucket, so it must not be specialized (== 1, % 16): one compiled kernel per bucket.
@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _sparse24_matmul_kernel(
    # pointers
    x_ptr, values_ptr, meta_ptr, bias_ptr, out_ptr, ws_ptr, count_ptr,
    # int32 (K,) input permutation (read only when PERMUTED)
    perm_ptr,
    # sizes; M_BUCKET only keys the autotuner
    M, N, K, M_BUCKET,
    # strides (elements)
    stride_xm, stride_xk, stride_vn, stride_om, stride_on,
    # number of K slices (a runtime value: one compiled kernel serves every split)
    SPLIT_K,
    # meta-parameters
    HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, IEEE: tl.constexpr, PERMUTED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_ok = offs_n < N
    m_ok = offs_m < M
    meta_row = _meta_row_offset(offs_n)
    offs_hv = tl.arange(0, BLOCK_K // 2)   # compressed columns of one K block
    offs_c = tl.arange(0, BLOCK_K // 16)   # meta columns of one K block
    offs_k = tl.arange(0, BLOCK_K)

    k_blocks = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_blocks, SPLIT_K)
    kb_begin = pid_k * per_split
    kb_end = tl.minimum(kb_begin + per_split, k_blocks)

    # meta (2-byte gathers, which cp.async cannot stream) and x (small, from L2) are loaded one K block
    # ahead by hand, and so are the values on the gather path; on the dot path Triton's pipeliner streams
    # the values through shared memory (num_stages). The clamped block index keeps every load in bounds
    # (an empty split or the last iteration re-reads a block it already has).
    kb_first = tl.minimum(kb_begin, k_blocks - 1)
    meta_next = _load_meta(meta_ptr, meta_row, n_ok, kb_first, N, K, offs_c, BLOCK_K, not (EVEN_N and EVEN_K))
    x_next = _load_x(x_ptr, perm_ptr, offs_m, m_ok, kb_first, K, stride_xm, stride_xk, offs_k, BLOCK_K, EVEN_K, PERMUTED)
    if BLOCK_M >= 16:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        # per-thread partial products, reduced across threads once after the loop
        acc3 = tl.zeros([BLOCK_N, BLOCK_M, BLOCK_K // 4], dtype=tl.float32)
        v_next = _load_values(values_ptr, offs_n, n_ok, kb_first, K, stride_vn, offs_hv, BLOCK_K, EVEN_N and EVEN_K)
    for kb in range(kb_begin, kb_end):
        nxt = tl.minimum(kb + 1, kb_end - 1)
        meta = meta_next
        x = x_next
        meta_next = _load_meta(meta_ptr, meta_row, n_ok, nxt, N, K, offs_c, BLOCK_K, not (EVEN_N and EVEN_K))
        x_next = _load_x(x_ptr, perm_ptr, offs_m, m_ok, nxt, K, stride_xm, stride_xk, offs_k, BLOCK_K, EVEN_K, PERMUTED)
        if BLOCK_M >= 16:
            v = _load_values(values_ptr, offs_n, n_ok, kb, K, stride_vn, offs_hv, BLOCK_K, EVEN_N and EVEN_K)
        else:
            v = v_next
            v_next = _load_values(values_ptr, offs_n, n_ok, nxt, K, stride_vn, offs_hv, BLOCK_K, EVEN_N and EVEN_K)
        i0, i1 = _group_indices(meta, BLOCK_N, BLOCK_K)
        v0, v1 = tl.split(tl.reshape(v, [BLOCK_N, BLOCK_K // 4, 2]))

        if BLOCK_M >= 16:
            w = _expand(v0, v1, i0, i1, BLOCK_N, BLOCK_K)
            if IEEE:  # fp32 inputs (tests), or bf16 under the interpreter, whose bf16 dot multiplies raw bits
                acc = tl.dot(w.to(tl.float32), tl.trans(x.to(tl.float32)), acc, input_precision="ieee")
            else:
                acc = tl.dot(w, tl.trans(x), acc)
        else:
            # [BLOCK_M, G, 4] -> x0..x3 [BLOCK_M, G] (the four columns of every group)
            xe, xo = tl.split(tl.reshape(x, [BLOCK_M, BLOCK_K // 4, 2, 2]))
            x0, x2 = tl.split(xe)
            x1, x3 = tl.split(xo)
            j0 = i0[:, None, :]
            j1 = i1[:, None, :]
            xs0 = tl.where(j0 == 0, x0[None, :, :], tl.where(j0 == 1, x1[None, :, :], x2[None, :, :]))
            xs1 = tl.where(j1 == 3, x3[None, :, :], tl.where(j1 == 2, x2[None, :, :], x1[None, :, :]))
            acc3 += v0[:, None, :].to(tl.float32) * xs0.to(tl.float32) + v1[:, None, :].to(tl.float32) * xs1.to(tl.float32)
    if BLOCK_M < 16:
        acc = tl.sum(acc3, axis=2)

    out_mask = n_ok[:, None] & m_ok[None, :]
    out_ptrs = out_ptr + offs_m[None, :] * stride_om + offs_n[:, None] * stride_on
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        ws_ptrs = ws_ptr + offs_m[None, :] * N + offs_n[:, None]
        tl.atomic_add(ws_ptrs, acc, mask=out_mask, sem="relaxed")
        # All threads' partial sums are issued before one thread publishes "this split is done".
        tl.debug_barrier()
        tile = pid_m * tl.num_programs(0) + pid_n
        done = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel")
        if done == SPLIT_K - 1:
            # Last split of this tile: read the full sum (an atomic read at L2, coherent with the other
            # programs' atomics) and leave zeros behind for the next call.
            zero = tl.zeros_like(acc)
            total = tl.atomic_add(ws_ptrs, zero, mask=out_mask, sem="acquire")
            total = tl.where(out_mask, total, zero)  # masked lanes of an atomic return garbage
            tl.store(ws_ptrs, zero, mask=out_mask)
            if HAS_BIAS:
                total += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
            tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(count_ptr + tile, 0, sem="relaxed")


# ----------------------------------------------------------------------------------------------------------
# configs

SPLIT_MAX_M = 256  # split-K (and its fp32 workspace of M x N) only for M up to this


def _cfg(bm, bn, bk, split, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split},
                         num_warps=warps, num_stages=stages)


# (BLOCK_N, BLOCK_K, num_warps) tried for each BLOCK_M; the gather path (BLOCK_M < 16) keeps
# BLOCK_M * BLOCK_N * BLOCK_K / 4 <= 8192 products in flight, the dot path BLOCK_N * BLOCK_K <= 4096 per warp.
_BLOCKS = {
    1: [(32, 256, 4), (64, 128, 4), (128, 64, 4), (128, 128, 4)],
    2: [(32, 256, 4), (64, 128, 4), (128, 64, 4)],
    4: [(32, 128, 4), (64, 64, 4), (128, 64, 8)],
    16: [(32, 128, 4), (64, 128, 4), (64, 256, 8), (128, 128, 8)],
    32: [(64, 128, 4), (64, 256, 8), (128, 128, 8)],
    64: [(64, 64, 4), (64, 128, 8), (128, 64, 8)],
    128: [(64, 64, 8), (128, 32, 8), (128, 64, 8)],
}
_SPLITS = (1, 2, 4, 8, 16)


def _all_configs() -> list:
    return [_cfg(bm, bn, bk, split, warps, 3 if bk == 256 else 4)
            for bm, blocks in _BLOCKS.items() for bn, bk, warps in blocks for split in _SPLITS]


def _block_ms(m: int) -> set[int]:
    if m <= 4:
        return {triton.next_power_of_2(m), 16}
    if m <= 16:
        return {16}
    if m <= 32:
        return {16, 32}
    if m <= 64:
        return {32, 64}
    return {64, 128}


def _useful_splits(m: int, n: int, k: int, bm: int, bn: int, bk: int) -> set[int]:
    """Split-K values giving about 1 to 4.5 waves of programs (else the smallest that fills the SMs); 1 if M is large."""
    if m > SPLIT_MAX_M:
        return {1}
    tiles = triton.cdiv(n, bn) * triton.cdiv(m, bm)
    k_blocks = triton.cdiv(k, bk)
    fits = [s for s in _SPLITS if s == 1 or k_blocks // s >= 2]
    sms = _num_sms()
    waves = {s for s in fits if 0.9 * sms <= tiles * s <= 4.5 * sms}
    return waves or {next((s for s in fits if tiles * s >= 0.9 * sms), fits[-1])}


def _prune_configs(configs, named_args, **kwargs):
    """Keep the configs that fit this (M, N, K): BLOCK_M matched to M, split-K sized to fill the SMs."""
    m, n, k = named_args["M"], named_args["N"], named_args["K"]
    block_ms = _block_ms(m)
    kept = []
    for cfg in configs:
        kw = cfg.kwargs
        bm, bn, bk = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]
        if bm in block_ms and bn <= max(32, n) and bk <= max(64, k) and kw["SPLIT_K"] in _useful_splits(m, n, k, bm, bn, bk):
            kept.append(cfg)
    return kept or [_heuristic_config(m, n, k)]


def _heuristic_config(m: int, n: int, k: int) -> triton.Config:
    """A reasonable config without autotuning (interpreter, SPARSEKIT_TRITON_AUTOTUNE=0): fill the SMs via split-K."""
    bm = triton.next_power_of_2(m) if m <= 2 else min(max(16, triton.next_power_of_2(m)), 64)
    bn = 64 if n >= 64 else 32
    bk = 128 if k >= 128 else 64
    tiles = triton.cdiv(n, bn) * triton.cdiv(m, bm)
    k_blocks = triton.cdiv(k, bk)
    split = 1
    while m <= SPLIT_MAX_M and tiles * split < 2 * _num_sms() and k_blocks // (split * 2) >= 2 and split < 16:
        split *= 2
    return _cfg(bm, bn, bk, split, 8 if bm >= 32 else 4, 3)


@functools.lru_cache(maxsize=None)
def _num_sms() -> int:
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return 132  # H100 SXM: what the interpreter pretends, so CPU tests exercise split-K


_kernel = triton.heuristics({
    "EVEN_N": lambda a: a["N"] % a["BLOCK_N"] == 0,
    "EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0,
})(_sparse24_matmul_kernel)


def _autotune_bench(kernel_call, quantiles):
    # Shorter than Triton's default (25 + 100 ms per config): up to 24 configs per (M bucket, N, K).
    return triton.testing.do_bench(kernel_call, warmup=10, rep=40, quantiles=quantiles)


_AUTOTUNE = dict(configs=_all_configs(), key=["M_BUCKET", "N", "K"], prune_configs_by={"early_config_prune": _prune_configs})
try:
    _autotuned_kernel = triton.autotune(**_AUTOTUNE, do_bench=_autotune_bench)(_kernel)
except TypeError:  # a Triton without the do_bench argument: its default timing
    _autotuned_kernel = triton.autotune(**_AUTOTUNE)(_kernel)


# ----------------------------------------------------------------------------------------------------------
# launcher

def _raw_stream(device: torch.device) -> int:
    return torch._C._cuda_getCurrentRawStream(device.index) if device.type == "cuda" else 0


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


class Workspaces:
    """Zeroed fp32 split-K partial sums and int32 tile counters of one device, one pair per stream.

    Kernels leave both zeroed, so a pair is reused by every call on its stream (and by CUDA-graph replays).
    Buffers grow only in `ensure`, which launch plans call when they are built (before any capture); grown-out
    buffers are kept alive because a captured graph may still point at them. A stream first seen during
    capture (torch.cuda.graph captures on its own stream) uses the first stream's pair: capture allocates nothing.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.elements = 1 << 16
        self.tiles = 1024
        self.by_stream: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._retired: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _new_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.zeros(self.elements, dtype=torch.float32, device=self.device),
                torch.zeros(self.tiles, dtype=torch.int32, device=self.device))

    def ensure(self, elements: int, tiles: int, stream: int) -> None:
        """Room for `elements` partial sums and `tiles` counters on every known stream and on `stream`."""
        if elements > self.elements or tiles > self.tiles:
            if _capturing(self.device):
                raise RuntimeError(
                    "the 2:4 Triton kernel needs a larger split-K workspace inside CUDA-graph capture; "
                    "run the model once eagerly at this batch size before capturing")
            self.elements, self.tiles = max(elements, self.elements), max(tiles, self.tiles)
            self._retired.extend(self.by_stream.values())
            self.by_stream.update({s: self._new_pair() for s in self.by_stream})  # same dict: plans hold it
        if stream not in self.by_stream:
            self.get(stream)

    def get(self, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.by_stream.get(stream)
        if pair is not None:
            return pair
        if _capturing(self.device):
            if not self.by_stream:
                raise RuntimeError("the 2:4 Triton kernel's first call on this device is inside CUDA-graph capture; "
                                   "run the model once eagerly before capturing")
            return next(iter(self.by_stream.values()))
        pair = self.by_stream[stream] = self._new_pair()
        return pair


_WORKSPACES: dict[torch.device, Workspaces] = {}


def workspaces(device: torch.device) -> Workspaces:
    store = _WORKSPACES.get(device)
    if store is None:
        store = _WORKSPACES[device] = Workspaces(device)
    return store


def _workspace(device: torch.device, elements: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split-K workspace of the current stream with room for `elements` and `tiles` (see Workspaces)."""
    store = workspaces(device)
    stream = _raw_stream(device)
    store.ensure(elements, tiles, stream)
    return store.get(stream)


def _autotune_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("SPARSEKIT_TRITON_AUTOTUNE", "1") != "0"


def sparse24_matmul(
    x2d: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    config: dict | None = None,
    perm: torch.Tensor | None = None,
) -> torch.Tensor:
    """x2d (M, K) @ W.T (+ bias) -> (M, N) in x's dtype, W given as (values, meta); inputs already validated.

    perm (K,) int32/int64, a permutation of the input features: computes x2d[:, perm] @ W.T, the gather
    folded into the kernel's x loads (no permuted copy of x). On CUDA the autotuner picks the config per (M bucket, N, K, dtype); `config` (a dict of BLOCK_M, BLOCK_N,
    BLOCK_K, SPLIT_K, num_warps, num_stages) bypasses it, as does SPARSEKIT_TRITON_AUTOTUNE=0 (heuristic).
    """
    m, k = x2d.shape
    n = values.shape[0]
    values = values.contiguous()
    meta = meta.contiguous()
    out = torch.empty((m, n), dtype=x2d.dtype, device=x2d.device)
    bias_arg = bias.contiguous() if bias is not None else values  # never read when HAS_BIAS is False
    # Workspace for split-K: fp32 M x N plus one counter per (N tile, M tile); none needed above SPLIT_MAX_M.
    split_possible = m <= SPLIT_MAX_M
    tiles = triton.cdiv(n, 32) * (m if m <= 4 else triton.cdiv(m, 16))
    ws, count = _workspace(x2d.device, m * n if split_possible else 1, tiles if split_possible else 1)
    perm_arg = kernel_perm(perm) if perm is not None else count  # never read when PERMUTED is False
    args = (x2d, values, meta, bias_arg, out, ws, count, perm_arg, m, n, k, m_bucket(m),
            x2d.stride(0), x2d.stride(1), values.stride(0), out.stride(0), out.stride(1))
    interpreting = backend.triton_interpreting()
    flags = dict(HAS_BIAS=bias is not None, PERMUTED=perm is not None,
                 IEEE=x2d.dtype == torch.float32 or (interpreting and x2d.dtype == torch.bfloat16))

    if config is None and _autotune_enabled(x2d.device):
        def grid(p):
            return (triton.cdiv(n, p["BLOCK_N"]), triton.cdiv(m, p["BLOCK_M"]), p["SPLIT_K"])

        _autotuned_kernel[grid](*args, **flags)
        return out

    cfg = dict(config) if config is not None else _config_dict(_heuristic_config(m, n, k))
    bm, bn, bk, split = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["SPLIT_K"]
    if split > 1 and not split_possible:
        raise ValueError(f"SPLIT_K > 1 needs M <= {SPLIT_MAX_M}, got M={m}")
    grid = (triton.cdiv(n, bn), triton.cdiv(m, bm), split)
    if split > 1:
        ws, count = _workspace(x2d.device, m * n, grid[0] * grid[1])
        args = (*args[:5], ws, count, *args[7:])
    _kernel[grid](*args, SPLIT_K=split, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                  num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 3), **flags)
    return out


def kernel_perm(perm: torch.Tensor) -> torch.Tensor:
    """The permutation as the kernel reads it: contiguous, 16-byte aligned int32 (compiled plans are specialised on
    aligned pointers); a no-op when it already is."""
    if perm.dtype == torch.int32 and perm.is_contiguous() and perm.data_ptr() % 16 == 0:
        return perm
    return perm.to(torch.int32).clone(memory_format=torch.contiguous_format)


def _config_dict(cfg: triton.Config) -> dict:
    return {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


# ----------------------------------------------------------------------------------------------------------
# launch plans: the per-call cost of a cached, compiled launch


# Triton >= 3.3 launchers take every kernel argument, constexprs included, in signature order (what
# JITFunction.run passes); older ones took a different list, so there plans launch through the JIT.
DIRECT_LAUNCH = tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 3)


def _resolve_config(x2d, values, meta, bias, bucket: int, perm=None) -> tuple[dict, torch.Tensor]:
    """(config, out of this call): the autotuner's pick for the bucket (tuning now if it has not), else the heuristic."""
    m, k = x2d.shape
    n = values.shape[0]
    if _autotune_enabled(x2d.device):
        out = sparse24_matmul(x2d, values, meta, bias, perm=perm)
        return _config_dict(_autotuned_kernel.best_config), out
    cfg = _config_dict(_heuristic_config(bucket, n, k))
    return cfg, sparse24_matmul(x2d, values, meta, bias, config=cfg, perm=perm)


def _compile(x2d, values, meta, bias_arg, out, ws, count, perm_arg, scalars: tuple, cfg: dict, flags: dict):
    """The compiled kernel (Triton's JIT cache; compiles on a miss) for these arguments' specialization."""
    return _sparse24_matmul_kernel.warmup(
        x2d, values, meta, bias_arg, out, ws, count, perm_arg, *scalars, grid=(1,),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], SPLIT_K=cfg["SPLIT_K"],
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 3), **flags)


def _is_standard(t: torch.Tensor) -> bool:
    return t.is_contiguous() and t.data_ptr() % 16 == 0


class LaunchPlan:
    """The Triton kernel for one (device, dtype, M bucket, N, K, bias or not), resolved once.

    `plan(x, values, meta, bias, perm=None)` returns x @ W.T (+ bias) with shape (..., N) for x (..., K) whose
    row count is in the plan's bucket (>= 1); a plan built with a permutation (`permuted`) computes
    x[..., perm] @ W.T, with `perm` (K,) contiguous int32 passed on every call (plans are shared by layers). Contract (checked by the caller, e.g. SparseLinear24 when its buffers
    change): values, meta and bias have the plan's dtype, device and shapes and are contiguous and 16-byte
    aligned (the compiled kernel is specialized on that). An x that is not contiguous and 16-byte aligned,
    or a current CUDA device other than the plan's, takes the general launcher with the plan's config.
    """

    __slots__ = ("device", "device_index", "n", "k", "bucket", "config", "block_m", "grid_n", "split", "constexprs",
                 "launch", "function", "packed_metadata", "workspaces", "by_stream", "tail", "raw_stream",
                 "current_device", "permuted")
    standard_operands_only = True

    def __init__(self, device, n, k, bucket, config, compiled, constexprs, store, permuted=False):
        self.device = device
        self.permuted = permuted
        self.device_index = device.index if device.index is not None else 0
        self.n, self.k, self.bucket, self.config = n, k, bucket, config
        self.block_m = config["BLOCK_M"]
        self.grid_n = (n + config["BLOCK_N"] - 1) // config["BLOCK_N"]
        self.split = config["SPLIT_K"]
        self.constexprs = constexprs
        # compiled.run loads the module on first access: done here, not per call
        self.launch = compiled.run if DIRECT_LAUNCH else None
        self.function = compiled.function
        self.packed_metadata = compiled.packed_metadata
        self.workspaces = store
        self.by_stream = store.by_stream
        # the launcher's arguments after M: N, K, M_BUCKET, the strides of contiguous operands, SPLIT_K, constexprs
        self.tail = (n, k, bucket, k, 1, k // 2, n, 1, self.split, *constexprs)
        self.raw_stream = torch._C._cuda_getCurrentRawStream if device.type == "cuda" else (lambda index: 0)
        self.current_device = torch._C._cuda_getDevice if device.type == "cuda" else (lambda: 0)

    def __deepcopy__(self, memo):
        return self  # immutable and shared by every layer of this shape

    def general(self, x, values, meta, bias, perm=None):
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            out = sparse24_matmul(x.reshape(-1, self.k), values, meta, bias, config=self.config, perm=perm)
        return out.reshape(*x.shape[:-1], self.n)

    def __call__(self, x, values, meta, bias, perm=None):
        if self.launch is None or not x.is_contiguous() or x.data_ptr() & 15 \
                or self.current_device() != self.device_index:
            return self.general(x, values, meta, bias, perm)
        shape = x.shape
        if len(shape) == 2:  # building the output shape from tuples, not torch.Size slices (~1-3 µs less)
            m = shape[0]
            out = x.new_empty((m, self.n))
        else:
            m = x.numel() // self.k
            out = x.new_empty((*shape[:-1], self.n) if len(shape) != 3 else (shape[0], shape[1], self.n))
        stream = self.raw_stream(self.device_index)
        pair = self.by_stream.get(stream) or self.workspaces.get(stream)
        self.launch(self.grid_n, (m + self.block_m - 1) // self.block_m, self.split, stream, self.function,
                    self.packed_metadata, None, None, None,
                    x, values, meta, values if bias is None else bias, out, pair[0], pair[1],
                    pair[1] if perm is None else perm, m, *self.tail)
        return out


def build_launch_plan(x2d: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
                      *, perm: torch.Tensor | None = None, compile_kernel=None):
    """(LaunchPlan for x2d's M bucket, the output of this call). Needs CUDA tensors (not the interpreter).

    perm (K,): the plan folds an input permutation into its x loads (see LaunchPlan); this call uses it.
    Resolves the config (autotuning this bucket now if it has not been), compiles the kernel for standard
    operands and sizes the workspace for the bucket's largest M. Call it outside CUDA-graph capture.
    compile_kernel(args, kwargs) -> an object with Triton CompiledKernel's `run`, `function` and
    `packed_metadata` stands in for Triton's compiler: the CPU tests launch through the interpreter with
    it, and benchmarks/bench_host_overhead.py stubs the launch to time the Python around it.
    """
    device = x2d.device
    if device.type == "cuda" and backend.triton_interpreting():
        raise RuntimeError("launch plans need compiled kernels; under TRITON_INTERPRET=1 use sparse24_matmul")
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():  # Triton compiles for the current device
        return _build_launch_plan(x2d, values, meta, bias, perm, compile_kernel)


def _build_launch_plan(x2d, values, meta, bias, perm, compile_kernel):
    device = x2d.device
    if _capturing(device):
        raise RuntimeError("the first 2:4 matmul call of this batch-size bucket is inside CUDA-graph capture; run "
                           "the model once eagerly at this batch size before capturing (reduce-overhead does)")
    m, k = x2d.shape
    n = values.shape[0]
    bucket = m_bucket(m)
    cfg, out = _resolve_config(x2d, values, meta, bias, bucket, perm)
    if cfg["SPLIT_K"] > 1 and bucket > SPLIT_MAX_M:
        cfg = {**cfg, "SPLIT_K": 1}
    store = workspaces(device)
    stream = _raw_stream(device)
    tiles = ((n + cfg["BLOCK_N"] - 1) // cfg["BLOCK_N"]) * ((bucket + cfg["BLOCK_M"] - 1) // cfg["BLOCK_M"])
    store.ensure(bucket * n if cfg["SPLIT_K"] > 1 else 1, tiles if cfg["SPLIT_K"] > 1 else 1, stream)
    ws, count = store.get(stream)
    flags = dict(HAS_BIAS=bias is not None, EVEN_N=n % cfg["BLOCK_N"] == 0, EVEN_K=k % cfg["BLOCK_K"] == 0,
                 IEEE=x2d.dtype == torch.float32 or (backend.triton_interpreting() and x2d.dtype == torch.bfloat16),
                 PERMUTED=perm is not None)
    perm_arg = kernel_perm(perm) if perm is not None else count
    x_std = x2d if _is_standard(x2d) else torch.empty((m, k), dtype=x2d.dtype, device=device)
    out_std = torch.empty((m, n), dtype=x2d.dtype, device=device)
    scalars = (m, n, k, bucket, k, 1, k // 2, n, 1)
    if compile_kernel is None:
        compiled = _compile(x_std, values, meta, values if bias is None else bias, out_std, ws, count, perm_arg, scalars,
                            cfg, flags)
    else:
        compiled = compile_kernel((x_std, values, meta, values if bias is None else bias, out_std, ws, count, perm_arg,
                                   *scalars,
                                   cfg["SPLIT_K"]), dict(**flags, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                                                         BLOCK_K=cfg["BLOCK_K"]))
    constexprs = (flags["HAS_BIAS"], flags["EVEN_N"], flags["EVEN_K"], flags["IEEE"], flags["PERMUTED"],
                  cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"])
    return LaunchPlan(device, n, k, bucket, cfg, compiled, constexprs, store, permuted=perm is not None), out


def compile_variants():
    """Kernel specialisations the launcher can pick on a GPU (tests/kernels/test_compiles_for_gpu.py).

    Every autotune config (tile shape x warps x stages, split-K 1 or more: SPLIT_K is a runtime value that
    Triton specialises only when it is 1) and every heuristic config, in bf16; in fp16 and fp32 (IEEE dot), one
    tile shape per BLOCK_M (the dtype changes the loads and the dot, not the tiling). The heuristics' EVEN_N /
    EVEN_K and HAS_BIAS rotate through their 8 combinations. x's and out's columns contiguous (unit strides),
    sizes and pointers 16-aligned, as in a model. Input-permuted layers (PERMUTED: x gathered by an int32
    perm in the x loads): one tile shape per BLOCK_M in bf16 (split-K alternating), and one in fp16 and fp32.
    """
    from itertools import product

    from sparsekit.triton_kernels.variants import Variant

    def variant(i, dtype, cfg, split_one, permuted=False):
        kw = cfg.kwargs
        ptrs = dict(x_ptr=f"*{dtype}", values_ptr=f"*{dtype}", meta_ptr="*i16", bias_ptr=f"*{dtype}", out_ptr=f"*{dtype}",
                    ws_ptr="*fp32", count_ptr="*i32", perm_ptr="*i32")
        ints = dict(M="i32", N="i32", K="i32", M_BUCKET="i32", stride_xm="i32", stride_vn="i32", stride_om="i32")
        flags = dict(HAS_BIAS=bool(i & 1), EVEN_N=bool(i & 2), EVEN_K=bool(i & 4), IEEE=dtype == "fp32", PERMUTED=permuted)
        split = {"SPLIT_K": 1} if split_one else {}
        return Variant(_sparse24_matmul_kernel, {**ptrs, **ints, **({} if split_one else {"SPLIT_K": "i32"})},
                       dict(stride_xk=1, stride_on=1, **flags, BLOCK_M=kw["BLOCK_M"], BLOCK_N=kw["BLOCK_N"],
                            BLOCK_K=kw["BLOCK_K"], **split),
                       num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                       aligned=("N", "K", "stride_xm", "stride_vn", "stride_om"))

    def tiles(cfg):
        return cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"], cfg.num_warps, cfg.num_stages

    tuned = list({tiles(c): c for c in _all_configs()}.values())
    heuristic = list({tiles(c): c for c in (_heuristic_config(m, n, k) for m, n, k in
                                            product((1, 2, 3, 16, 32, 64, 300), (32, 4096), (64, 4096)))}.values())
    chosen = [(cfg, split_one) for cfg in tuned + heuristic for split_one in (True, False)]
    variants = [variant(i, "bf16", cfg, split_one) for i, (cfg, split_one) in enumerate(chosen)]
    per_block_m = list({cfg.kwargs["BLOCK_M"]: cfg for cfg in reversed(tuned)}.values())
    variants += [variant(i, dtype, cfg, i % 2 == 0) for dtype in ("fp16", "fp32") for i, cfg in enumerate(per_block_m)]
    variants += [variant(i, "bf16", cfg, i % 2 == 0, permuted=True) for i, cfg in enumerate(per_block_m)]
    variants += [variant(i + 3, dtype, per_block_m[i], i % 2 == 1, permuted=True) for i, dtype in enumerate(("fp16", "fp32"))]
    return variants
