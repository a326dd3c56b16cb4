"""Keep masks (True = kept) pruning the lowest scores: per row, per matrix, or per N:M group.

Order key: a score's IEEE bits b (int32; int64 for float64 scores), after -0.0 -> +0.0, map to
    u = ~b if b < 0 else b | sign_bit          (unsigned),
so u1 < u2 exactly when x1 < x2 and equal scores share one key (NaN is rejected by the wrapper).
Row (and per-row sparsity): prune the k lowest of a row. Radix-select the k-th smallest key t, 8 bits
a pass from the top: pass p histograms digit p of the keys matching the digits fixed so far; t's
digit is the first bin whose running count reaches k_rem (the rank still sought), and k_rem drops by
the count of the lower bins. Then prune every key < t plus the first k_rem keys == t in column order
(a running count of ties): exactly the first k of a stable ascending sort, as in the torch backend.
Matrix scope: the same select over the flattened matrix, each pass's histogram built by many
programs (integer atomic adds), tie ranks offset by an exclusive cumsum of per-program tie counts.
N:M: per group of m columns, n rounds of argmin (lowest key, then lowest column) in registers.
With `norm` (wanda_mask) the score |W| * norm is formed on the fly from W; it is never stored.

wanda_mask: score[i, j] = |W[i, j]| * sqrt(sq_norm[j]) in fp32, formed inside the selection kernels; sqrt(sq_norm)
is one length-`in` vector, taken with torch so it is bit-identical to the torch backend's score.
Per-row sparsity arrives as per-row prune counts, computed once by sparsekit.ops.selection for both backends.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BINS = tl.constexpr(256)  # 8-bit radix digits
_MAX_KEY32 = tl.constexpr(0xFFFFFFFF)
_MAX_KEY64 = tl.constexpr(0xFFFFFFFFFFFFFFFF)
_SIGN32 = tl.constexpr(0x80000000)
_SIGN64 = tl.constexpr(0x8000000000000000)

ROW_BLOCK = 1024  # columns per chunk in the per-row loop
# Rows per program: 1 on a GPU, where tl.histogram's cost per element grows with its bin count
# (ROWS * 256). The interpreter's cost is per program instead, so there narrow rows are grouped,
# up to ROW_TILE elements and MAX_ROWS_PER_PROGRAM rows a tile.
ROW_TILE = 1024
MAX_ROWS_PER_PROGRAM = 8
FLAT_BLOCK = 1024  # matrix scope: elements per sub-block ...
FLAT_BLOCKS_PER_PROGRAM = 16  # ... and at most this many sub-blocks per program
NM_TILE = 2048  # N:M: elements (groups x padded m) per program


@triton.jit
def _load_keys(src_ptr, norm_ptr, row_off, col, valid, stride_c, HAS_NORM: tl.constexpr, WIDE: tl.constexpr):
    """Order keys of src[row, col] (uint32; uint64 if WIDE); with HAS_NORM the score is |src| * norm[col]."""
    x = tl.load(src_ptr + row_off + col * stride_c, mask=valid, other=0.0)
    if HAS_NORM:
        x = tl.abs(x.to(tl.float32)) * tl.load(norm_ptr + col, mask=valid, other=0.0)
    elif WIDE:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)
    x = tl.where(x == 0, 0.0, x)  # -0.0 ties with +0.0, as in torch's comparisons
    if WIDE:
        b = x.to(tl.int64, bitcast=True)
        flipped = b ^ ((b >> 63) & 0x7FFFFFFFFFFFFFFF)  # negatives: reverse the magnitude order
        key = flipped.to(tl.uint64, bitcast=True) ^ _SIGN64
    else:
        b = x.to(tl.int32, bitcast=True)
        flipped = b ^ ((b >> 31) & 0x7FFFFFFF)
        key = flipped.to(tl.uint32, bitcast=True) ^ _SIGN32
    return key


@triton.jit
def _digit_histogram(key, valid, prefix, SHIFT: tl.constexpr, KEY_BITS: tl.constexpr):
    """Per-row (R, 256) histograms of the 8-bit digit at SHIFT of key (R, B), counting the valid keys
    whose higher digits equal those of prefix (R,)."""
    R: tl.constexpr = key.shape[0]
    B: tl.constexpr = key.shape[1]
    if SHIFT + 8 < KEY_BITS:
        valid = valid & ((key >> (SHIFT + 8)) == (prefix[:, None] >> (SHIFT + 8)))
    digit = tl.where(valid, ((key >> SHIFT) & 0xFF).to(tl.int32), 0) + tl.arange(0, R)[:, None] * _BINS
    hist = tl.reshape(tl.histogram(tl.reshape(digit, [R * B]), R * _BINS), [R, _BINS])
    # Excluded lanes were counted in their row's bin 0 (mask= of tl.histogram is newer than our oldest Triton).
    excluded = tl.sum(tl.where(valid, 0, 1), 1)
    return hist - tl.where(tl.arange(0, _BINS)[None, :] == 0, excluded[:, None], 0)


@triton.jit
def _pick_digit(hist, k_rem):
    """Per row: the digit holding the k_rem-th smallest key (1-based) and the count in lower digits."""
    digit = tl.sum((tl.cumsum(hist, 1) < k_rem[:, None]).to(tl.int32), 1)
    lower = tl.sum(tl.where(tl.arange(0, _BINS)[None, :] < digit[:, None], hist, 0), 1)
    return digit, lower


@triton.jit
def _pruned(key, valid, threshold, ties_before, ties_to_prune):
    """Prune key < threshold and the ties whose rank (ties before + running count) <= ties_to_prune."""
    tie = valid & (key == threshold[:, None])
    tie_rank = ties_before[:, None] + tl.cumsum(tie.to(tl.int32), 1)
    pruned = valid & ((key < threshold[:, None]) | (tie & (tie_rank <= ties_to_prune[:, None])))
    return pruned, ties_before + tl.sum(tie.to(tl.int32), 1)


@triton.jit
def _row_select_kernel(
    src_ptr, norm_ptr, k_ptr, keep_ptr, rows, cols, stride_r, stride_c,
    HAS_NORM: tl.constexpr, WIDE: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    """ROWS rows per program: radix-select each row's k-th smallest key, then write the keep mask."""
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = row < rows
    row_off = (row.to(tl.int64) * stride_r)[:, None]
    offs = tl.arange(0, BLOCK)[None, :]
    KEY_BITS: tl.constexpr = 64 if WIDE else 32
    threshold = tl.zeros([ROWS], tl.uint64 if WIDE else tl.uint32)
    k_rem = tl.load(k_ptr + row, mask=row_ok, other=0)
    for p in tl.static_range(KEY_BITS // 8):
        shift = KEY_BITS - 8 * (p + 1)  # this pass's digit, from the most significant
        hist = tl.zeros([ROWS, _BINS], tl.int32)
        for start in range(0, cols, BLOCK):
            col = start + offs
            valid = row_ok[:, None] & (col < cols)
            key = _load_keys(src_ptr, norm_ptr, row_off, col, valid, stride_c, HAS_NORM, WIDE)
            hist += _digit_histogram(key, valid, threshold, shift, KEY_BITS)
        digit, lower = _pick_digit(hist, k_rem)
        k_rem -= lower
        threshold = threshold | (digit.to(threshold.dtype) << shift)
    # threshold = each row's k-th smallest key; k_rem = how many of its ties are pruned (lowest columns first)
    ties_before = tl.zeros([ROWS], tl.int32)
    out_off = (row.to(tl.int64) * cols)[:, None]
    for start in range(0, cols, BLOCK):
        col = start + offs
        valid = row_ok[:, None] & (col < cols)
        key = _load_keys(src_ptr, norm_ptr, row_off, col, valid, stride_c, HAS_NORM, WIDE)
        pruned, ties_before = _pruned(key, valid, threshold, ties_before, k_rem)
        tl.store(keep_ptr + out_off + col, pruned == 0, mask=valid)


@triton.jit
def _nm_select_kernel(
    src_ptr, norm_ptr, keep_ptr, n_groups, groups_per_row, stride_r, stride_c,
    N: tl.constexpr, M: tl.constexpr, M_PAD: tl.constexpr, BLOCK_G: tl.constexpr,
    HAS_NORM: tl.constexpr, WIDE: tl.constexpr,
):
    """BLOCK_G groups of M consecutive columns (groups numbered row-major); prune N per group."""
    group = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    lane = tl.arange(0, M_PAD)
    row = group // groups_per_row
    col = (group % groups_per_row)[:, None] * M + lane[None, :]
    valid = (group < n_groups)[:, None] & (lane < M)[None, :]
    key = _load_keys(src_ptr, norm_ptr, (row.to(tl.int64) * stride_r)[:, None], col, valid, stride_c, HAS_NORM, WIDE)
    max_key = _MAX_KEY64 if WIDE else _MAX_KEY32
    key = tl.where(valid, key, max_key)  # padding lanes are never chosen: n < m real lanes remain below
    pruned = tl.zeros([BLOCK_G, M_PAD], tl.int1)
    for _ in tl.static_range(N):
        first = tl.argmin(key, axis=1, tie_break_left=True)  # lowest key, lowest column among equals
        hit = lane[None, :] == first[:, None]
        pruned = pruned | hit
        key = tl.where(hit, max_key, key)
    out = group.to(tl.int64)[:, None] * M + lane[None, :]  # = row * cols + col
    tl.store(keep_ptr + out, pruned == 0, mask=valid)


@triton.jit
def _load_state(state_ptr, WIDE: tl.constexpr):
    """Matrix-scope state, int64[2]: the threshold digits fixed so far and the rank still sought,
    as (1,)-vectors (the matrix is selected as one row)."""
    first = tl.zeros([1], tl.int32)
    threshold = tl.load(state_ptr + first).to(tl.uint64, bitcast=True)
    if not WIDE:
        threshold = threshold.to(tl.uint32)
    return threshold, tl.load(state_ptr + 1 + first)


@triton.jit
def _flat_keys(src_ptr, numel, start, i, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    """Keys of sub-block i of a program's span of the flattened score, as a (1, BLOCK) tile."""
    offs = start + i * BLOCK + tl.arange(0, BLOCK)[None, :]
    valid = offs < numel
    return _load_keys(src_ptr, src_ptr, 0, offs, valid, 1, False, WIDE), valid, offs


@triton.jit
def _matrix_histogram_kernel(
    src_ptr, numel, state_ptr, hist_ptr, blocks_per_program,
    SHIFT: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr,
):
    KEY_BITS: tl.constexpr = 64 if WIDE else 32
    threshold = _load_state(state_ptr, WIDE)[0]
    start = tl.program_id(0).to(tl.int64) * (BLOCK * blocks_per_program)
    hist = tl.zeros([1, _BINS], tl.int32)
    for i in range(blocks_per_program):
        key, valid, _ = _flat_keys(src_ptr, numel, start, i, BLOCK, WIDE)
        hist += _digit_histogram(key, valid, threshold, SHIFT, KEY_BITS)
    tl.atomic_add(hist_ptr + tl.arange(0, _BINS)[None, :], hist.to(tl.int64), mask=hist > 0)


@triton.jit
def _matrix_pick_kernel(state_ptr, hist_ptr, SHIFT: tl.constexpr, WIDE: tl.constexpr):
    threshold, k_rem = _load_state(state_ptr, WIDE)
    digit, lower = _pick_digit(tl.load(hist_ptr + tl.arange(0, _BINS)[None, :]), k_rem)
    threshold = threshold | (digit.to(threshold.dtype) << SHIFT)
    first = tl.zeros([1], tl.int32)
    tl.store(state_ptr + first, threshold.to(tl.uint64).to(tl.int64, bitcast=True))
    tl.store(state_ptr + 1 + first, k_rem - lower)


@triton.jit
def _matrix_ties_kernel(
    src_ptr, numel, state_ptr, counts_ptr, blocks_per_program, WIDE: tl.constexpr, BLOCK: tl.constexpr,
):
    threshold = _load_state(state_ptr, WIDE)[0]
    start = tl.program_id(0).to(tl.int64) * (BLOCK * blocks_per_program)
    ties = tl.zeros([1], tl.int32)
    for i in range(blocks_per_program):
        key, valid, _ = _flat_keys(src_ptr, numel, start, i, BLOCK, WIDE)
        ties += tl.sum((valid & (key == threshold[:, None])).to(tl.int32), 1)
    tl.store(counts_ptr + tl.program_id(0) + tl.zeros([1], tl.int32), ties)


@triton.jit
def _matrix_mask_kernel(
    src_ptr, numel, state_ptr, ties_before_ptr, keep_ptr, blocks_per_program,
    WIDE: tl.constexpr, BLOCK: tl.constexpr,
):
    threshold, ties_to_prune = _load_state(state_ptr, WIDE)
    start = tl.program_id(0).to(tl.int64) * (BLOCK * blocks_per_program)
    ties_before = tl.load(ties_before_ptr + tl.program_id(0) + tl.zeros([1], tl.int32))
    for i in range(blocks_per_program):
        key, valid, offs = _flat_keys(src_ptr, numel, start, i, BLOCK, WIDE)
        pruned, ties_before = _pruned(key, valid, threshold, ties_before, ties_to_prune)
        tl.store(keep_ptr + offs, pruned == 0, mask=valid)


def _prune_counts(sparsity, rows: int, cols: int, device) -> torch.Tensor:
    """int32 number pruned per row: `sparsity` is one fraction, or the per-row prune counts the op computed."""
    if isinstance(sparsity, torch.Tensor):
        return sparsity.to(device=device, dtype=torch.int32)
    return torch.full((rows,), int(cols * sparsity), dtype=torch.int32, device=device)


def select_rows(src: torch.Tensor, sparsity, n: int, m: int, norm: torch.Tensor | None = None) -> torch.Tensor:
    """Row-scope or N:M keep mask of the score `src`, or of |src| * norm (fp32) when `norm` is given."""
    rows, cols = src.shape
    keep = torch.empty((rows, cols), dtype=torch.bool, device=src.device)
    if keep.numel() == 0:
        return keep
    wide = norm is None and src.dtype == torch.float64
    norm_arg = src if norm is None else norm
    if m:
        m_pad = triton.next_power_of_2(m)
        block_g = max(1, NM_TILE // m_pad)
        n_groups = rows * (cols // m)
        _nm_select_kernel[(triton.cdiv(n_groups, block_g),)](
            src, norm_arg, keep, n_groups, cols // m, src.stride(0), src.stride(1),
            N=n, M=m, M_PAD=m_pad, BLOCK_G=block_g, HAS_NORM=norm is not None, WIDE=wide,
        )
        return keep
    counts = _prune_counts(sparsity, rows, cols, src.device)
    block = min(ROW_BLOCK, max(128, triton.next_power_of_2(cols)))
    rows_per_program = 1
    if not src.is_cuda:
        rows_per_program = max(1, min(ROW_TILE // block, MAX_ROWS_PER_PROGRAM, triton.next_power_of_2(rows)))
    _row_select_kernel[(triton.cdiv(rows, rows_per_program),)](
        src, norm_arg, counts, keep, rows, cols, src.stride(0), src.stride(1),
        HAS_NORM=norm is not None, WIDE=wide, ROWS=rows_per_program, BLOCK=block,
    )
    return keep


def select_matrix(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """One threshold over the whole matrix: exactly int(numel * sparsity) pruned, ties by flat index."""
    flat = score.contiguous().view(-1)
    numel = flat.numel()
    keep = torch.empty(numel, dtype=torch.bool, device=score.device)
    if numel == 0:
        return keep.view(score.shape)
    wide = flat.dtype == torch.float64
    key_bits = 64 if wide else 32
    block = min(FLAT_BLOCK, max(128, triton.next_power_of_2(numel)))
    blocks_per_program = min(FLAT_BLOCKS_PER_PROGRAM, triton.cdiv(numel, block))
    grid = (triton.cdiv(numel, block * blocks_per_program),)
    tiling = dict(WIDE=wide, BLOCK=block)
    state = torch.tensor([0, int(numel * sparsity)], dtype=torch.int64, device=score.device)
    hists = torch.zeros((key_bits // 8, 256), dtype=torch.int64, device=score.device)  # counts may pass 2**31
    for p in range(key_bits // 8):
        shift = key_bits - 8 * (p + 1)
        _matrix_histogram_kernel[grid](flat, numel, state, hists[p], blocks_per_program, SHIFT=shift, **tiling)
        _matrix_pick_kernel[(1,)](state, hists[p], SHIFT=shift, WIDE=wide)
    ties = torch.empty(grid[0], dtype=torch.int32, device=score.device)
    _matrix_ties_kernel[grid](flat, numel, state, ties, blocks_per_program, **tiling)
    ties_before = ties.long().cumsum(0) - ties.long()
    _matrix_mask_kernel[grid](flat, numel, state, ties_before, keep, blocks_per_program, **tiling)
    return keep.view(score.shape)


def select_mask(score: torch.Tensor, sparsity, n: int, m: int, scope: str = "row") -> torch.Tensor:
    """Triton backend of sparsekit.ops.select_mask (inputs already validated)."""
    if scope == "matrix" and not m:
        return select_matrix(score, sparsity)
    return select_rows(score, sparsity, n, m)


def wanda_mask(weight: torch.Tensor, sq_norm: torch.Tensor, sparsity, n: int, m: int) -> torch.Tensor:
    """Triton backend of sparsekit.ops.wanda_mask (inputs already validated): the score is never stored."""
    norm = sq_norm.float().sqrt().contiguous()
    return select_rows(weight, sparsity, n, m, norm=norm)


def compile_variants():
    """Every kernel specialisation the launchers above can pick on a GPU (one row per program there)."""
    from itertools import product

    from sparsekit.triton_kernels.variants import FLOATS_AND_FP64, Variant

    def key_args(dtype):  # select_mask's score of any float dtype (float64: 64-bit keys), or wanda's weight + fp32 norm
        return [(dict(src_ptr=f"*{dtype}", norm_ptr=f"*{dtype}"), dict(HAS_NORM=False, WIDE=dtype == "fp64")),
                (dict(src_ptr=f"*{dtype}", norm_ptr="*fp32"), dict(HAS_NORM=True, WIDE=False))]

    row = dict(k_ptr="*i32", keep_ptr="*i1", rows="i32", cols="i32", stride_r="i32")
    blocks = [128, 256, 512, ROW_BLOCK]  # min(ROW_BLOCK, max(128, next_power_of_2(cols)))
    variants = []
    for dtype, block in product(FLOATS_AND_FP64, blocks):
        for types, flags in key_args(dtype):
            variants.append(Variant(_row_select_kernel, {**row, **types}, dict(stride_c=1, **flags, ROWS=1, BLOCK=block)))
    for dtype, (n, m) in product(FLOATS_AND_FP64, [(2, 4), (4, 8), (1, 3)]):
        for types, flags in key_args(dtype):
            m_pad = triton.next_power_of_2(m)
            variants.append(Variant(_nm_select_kernel, dict(keep_ptr="*i1", n_groups="i32", groups_per_row="i32", stride_r="i32", **types),
                                    dict(stride_c=1, N=n, M=m, M_PAD=m_pad, BLOCK_G=NM_TILE // m_pad, **flags)))
    flat_blocks = [128, 256, 512, FLAT_BLOCK]  # min(FLAT_BLOCK, max(128, next_power_of_2(numel)))
    for dtype in FLOATS_AND_FP64:
        wide = dtype == "fp64"
        flat = dict(src_ptr=f"*{dtype}", numel="i32", state_ptr="*i64", blocks_per_program="i32")
        for shift in range(0, 64 if wide else 32, 8):
            variants.append(Variant(_matrix_pick_kernel, dict(state_ptr="*i64", hist_ptr="*i64"), dict(SHIFT=shift, WIDE=wide)))
            variants += [Variant(_matrix_histogram_kernel, dict(hist_ptr="*i64", **flat), dict(SHIFT=shift, WIDE=wide, BLOCK=b))
                         for b in flat_blocks]
        variants += [Variant(_matrix_ties_kernel, dict(counts_ptr="*i32", **flat), dict(WIDE=wide, BLOCK=b)) for b in flat_blocks]
        variants += [Variant(_matrix_mask_kernel, dict(ties_before_ptr="*i64", keep_ptr="*i1", **flat), dict(WIDE=wide, BLOCK=b))
                     for b in flat_blocks]
    return variants
