"""CPU checks of csrc/sparse24/sp24_decode.cu and sp24_decompress.cu without a GPU.

1. The work split (sparsekit.cuda_backend.sp24_decode_ref.decode_plan): every unit computed once, the
   kernel's closed-form range lookup, every split tile's parts in distinct workspace slots, one counter
   per owner CTA.
2. The split reduction in the kernel's order (sp24_decode_reference) against torch's dense matmul.
3. The meta decode (the kernels' reading of torch's CUTLASS meta) against ops.decompress_24.
4. The kernel's shared-memory layout and per-lane addressing (XOR swizzle, meta words, ldmatrix
   fragments, mma.sp, epilogue), replayed in numpy with the PTX fragment models of
   test_sparse24_mma_layout.py: one CTA tile's stages reproduce x @ W^T exactly.
5. The model's constants are the kernel's (read from the source).
What this cannot show is that the hardware follows the PTX definitions: tests/kernels/test_sp24_decode_cuda.py.
"""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsekit import ops
from sparsekit.cuda_backend import sp24_decode_ref as ref
from tests.kernels.test_sparse24_mma_layout import mma_sp

CSRC = Path(__file__).resolve().parents[2] / "csrc" / "sparse24"


def random_24(n, k, seed, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    keep = torch.zeros(n, k // 4, 4, dtype=torch.bool).scatter_(-1, torch.rand(n, k // 4, 4, generator=g).topk(2, -1).indices, True)
    return (w * keep.view(n, k)).to(dtype)


# ------------------------------------------------------------------------------------------------ 1. plan

PLAN_CASES = [(n, k, m, sms) for n, k in [(32, 32), (96, 160), (4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (288, 4160)]
              for m, sms in [(1, 132), (16, 7), (64, 132), (3, 1), (40, 114)]]


@pytest.mark.parametrize("n,k,m,sms", PLAN_CASES)
def test_plan_covers_every_unit_once_and_each_split_tile_has_one_counter_and_distinct_slots(n, k, m, sms):
    plan = ref.decode_plan(n, k, m, sms)
    assert plan.grid == min(sms, plan.tiles * plan.chunks)
    covered = {}
    for seg in plan.segments:
        for c in range(seg.first, seg.last + 1):
            assert (seg.tile, c) not in covered, "a unit is computed twice"
            covered[seg.tile, c] = seg.cta
    assert len(covered) == plan.tiles * plan.chunks
    for (tile, c), cta in covered.items():  # the kernel's closed form of the range lookup
        assert plan.cta_of(tile * plan.chunks + c) == cta
    for b in range(plan.grid):
        mine = [s for s in plan.segments if s.cta == b]
        assert mine, "every CTA gets work"
        assert all(s.owner for s in mine[1:]), "only a CTA's first segment can start mid-tile"
    used_slots, owners = set(), []
    for tile in range(plan.tiles):
        segs = sorted((s for s in plan.segments if s.tile == tile), key=lambda s: s.cta)
        assert plan.split(tile) == (len(segs) > 1)
        if not plan.split(tile):
            continue
        parts = plan.parts(tile)
        assert [q for q, _ in parts] == [s.cta for s in segs], "the parts are the tile's CTAs, in order"
        assert [s.first for s in segs] == [0] + [s.last + 1 for s in segs[:-1]] and segs[-1].last == plan.chunks - 1
        for (q, slot), seg in zip(parts, segs):
            is_first_segment = seg is next(s for s in plan.segments if s.cta == q)
            assert slot == (0 if is_first_segment else 1)
            assert (q, slot) not in used_slots, "a workspace slot holds two partials in one call"
            used_slots.add((q, slot))
        owners.append(parts[0][0])
    assert len(owners) == len(set(owners)), "a CTA owns at most one split tile (one counter per owner and warp)"


def test_llama_decode_partition_is_balanced():
    plan = ref.decode_plan(4096, 4096, 1, 132)
    sizes = [u1 - u0 for u0, u1 in plan.ranges]
    assert max(sizes) - min(sizes) <= 1
    assert plan.rows == 128 and plan.tiles == 32 and plan.chunks == 32


# ------------------------------------------------------------------------------------------------ 2. reduction order

# K multiple of 64 (the compressed format's rule), some with a K tail past the last 128-column chunk
REF_CASES = [(1, 32, 64, 132), (3, 96, 192, 5), (8, 160, 4160, 9), (9, 288, 576, 132), (17, 256, 1024, 13),
             (33, 544, 384, 7), (64, 64, 2112, 3), (64, 4096, 256, 132)]


@pytest.mark.parametrize("m,n,k,sms", REF_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_reference_in_kernel_order_matches_dense(m, n, k, sms, with_bias):
    w = random_24(n, k, seed=m + n + k)
    values, meta = ops.compress_24(w)
    g = torch.Generator().manual_seed(k)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    bias = torch.randn(n, generator=g).to(torch.bfloat16) if with_bias else None
    out = ref.sp24_decode_reference(x, values, meta, bias, num_sms=sms)
    expect = x.double() @ w.double().t() + (bias.double() if with_bias else 0)
    assert not out.isnan().any(), "an output was never written"
    err = (out.double() - expect).abs().max() / expect.abs().max()
    assert err < 1e-2, f"relative error {err:.3g}"


def test_reference_sums_in_fp32_and_any_grid_or_tile_height_agrees():
    w = random_24(256, 640, seed=1, dtype=torch.float32)
    values, meta = ops.compress_24(w)
    x = torch.randn(5, 640)
    exact = x.double() @ w.double().t()
    first = ref.sp24_decode_reference(x, values, meta, None, num_sms=3)
    assert torch.equal(first, ref.sp24_decode_reference(x, values, meta, None, num_sms=3)), "same grid, same bits"
    for sms in (1, 2, 3, 132):
        for rows in (128, 256):
            out = ref.sp24_decode_reference(x, values, meta, None, num_sms=sms, rows=rows)
            torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ 3. meta decode

@pytest.mark.parametrize("n,k", [(32, 64), (64, 192), (160, 320), (96, 4160)])
def test_meta_decode_matches_decompress(n, k):
    w = random_24(n, k, seed=n * k, dtype=torch.float16)
    values, meta = ops.compress_24(w)
    torch.testing.assert_close(ref.dense_from_meta(values, meta), ops.decompress_24(values, meta, backend="torch"), rtol=0, atol=0)
    torch.testing.assert_close(ref.dense_from_meta(values, meta), w, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ 4. shared memory and fragments

def values_offset(row, chunk):  # bytes within a stage
    return row * 128 + ((chunk ^ (row & 7)) << 4)


def x_offset(rows, row, chunk):
    return rows * 128 + 4 * rows * 4 + row * 256 + ((chunk ^ (row & 7)) << 4)


def test_swizzled_layout_is_a_bijection_and_ldmatrix_is_conflict_free():
    rows = 256
    offsets = {values_offset(r, c) for r in range(rows) for c in range(8)}
    assert offsets == set(range(0, rows * 128, 16))
    offsets = {x_offset(rows, r, c) for r in range(64) for c in range(16)}
    assert offsets == set(range(rows * 144, rows * 144 + 64 * 256, 16))
    for lane_group in range(4):  # each 8-lane phase of ldmatrix reads 8 rows x 16 B: 32 distinct banks
        for kk in range(4):
            a = [values_offset(8 * lane_group + r, 2 * kk + 1) for r in range(8)]
            b = [x_offset(rows, 8 * lane_group + r, 4 * kk + 2) for r in range(8)]
            for addrs in (a, b):
                assert len({(off // 4) % 32 for base in addrs for off in range(base, base + 16, 4)}) == 32


def emulate_tile(x, values, meta, bias, tile, rows, nt):
    """The kernel's producer writes and consumer reads for tile `tile` (all its chunks, one CTA)."""
    m, k = x.shape
    n = values.shape[0]
    cw = rows // 32
    half_k = k // 2
    chunks = -(-k // 128)
    n0 = tile * rows
    meta_bytes = meta.contiguous().view(-1).numpy().view(np.uint16)
    pad_meta = np.full(8, 0x4444, np.uint16)
    acc = np.zeros((cw, 2, nt, 32, 4))
    for c in range(chunks):
        k0 = c * 128
        stage = np.full((rows * 144 + nt * 8 * 256) // 2, np.nan)
        # producer: values (chunk = lane & 7, rows (lane >> 3) + 4 j), meta segments, x rows < M (others zero)
        for row in range(rows):
            for chunk in range(8):
                ok = k0 // 2 + chunk * 8 < half_k and n0 + row < n
                src = values[n0 + row, k0 // 2 + chunk * 8:k0 // 2 + chunk * 8 + 8] if ok else np.zeros(8)
                o = values_offset(row, chunk) // 2
                stage[o:o + 8] = src
        seg_chunks = rows // 4
        for i in range(4 * seg_chunks):
            step, off = divmod(i, seg_chunks)
            k32 = c * 4 + step
            ok = k32 < k // 32 and off // 8 < min(rows, n - n0) // 32
            if ok:
                byte = k32 * 4 * n + n0 * 4 + off * 16
                src = meta_bytes[byte // 2:byte // 2 + 8]
            else:
                src = pad_meta
            o = (rows * 128 + step * rows * 4 + off * 16) // 2
            stage[o:o + 8] = src
        for row in range(nt * 8):
            for chunk in range(16):
                ok = row < m and k0 + chunk * 8 < k
                o = x_offset(rows, row, chunk) // 2
                stage[o:o + 8] = x[row, k0 + chunk * 8:k0 + chunk * 8 + 8] if ok else np.zeros(8)
        assert not np.isnan(stage).any(), "part of the stage was never written"
        # consumers
        for warp in range(cw):
            for kk in range(4):
                a = []
                for mt in range(2):
                    regs = np.zeros((32, 4, 2))
                    for lane in range(32):
                        for j in range(4):
                            src_lane = 8 * j + lane // 4
                            a_row = warp * 32 + mt * 16 + (src_lane & 7) + ((src_lane >> 3) & 1) * 8
                            byte = a_row * 128 + (((2 * kk + (src_lane >> 4)) ^ (src_lane & 7)) << 4)
                            regs[lane, j] = stage[byte // 2 + 2 * (lane % 4):byte // 2 + 2 * (lane % 4) + 2]
                    a.append(regs)
                e = []
                for lane in range(32):
                    byte = rows * 128 + (warp * 32 + lane) * 4 + kk * rows * 4
                    lo, hi = int(stage[byte // 2]), int(stage[byte // 2 + 1])
                    e.append(lo | (hi << 16))
                for ntile in range(nt):
                    b = np.zeros((32, 4, 2))
                    for lane in range(32):
                        for j in range(4):
                            src_lane = 8 * j + lane // 4
                            byte = x_offset(rows, ntile * 8 + (src_lane & 7), 4 * kk + (src_lane >> 3))
                            b[lane, j] = stage[byte // 2 + 2 * (lane % 4):byte // 2 + 2 * (lane % 4) + 2]
                    mma_sp(acc[warp, 0, ntile], a[0], b, e, 0)
                    mma_sp(acc[warp, 1, ntile], a[1], b, e, 1)
    out = np.full((m, n), np.nan)
    for warp in range(cw):
        for mt in range(2):
            for h in range(2):
                for lane in range(32):
                    row = n0 + warp * 32 + mt * 16 + (lane >> 2) + h * 8
                    if row >= n:
                        continue
                    for ntile in range(nt):
                        tok = ntile * 8 + (lane & 3) * 2
                        for dt in range(2):
                            if tok + dt < m:
                                out[tok + dt, row] = acc[warp, mt, ntile, lane, 2 * h + dt] + (bias[row] if bias is not None else 0)
    return out


@pytest.mark.parametrize("m,n,k,rows", [(3, 160, 192, 128), (11, 96, 256, 128), (1, 256, 64, 256)],
                         ids=["K-tail-and-rows-past-N", "two-n8-tiles", "wide-tile-short-K"])
def test_kernel_addressing_reproduces_the_product(m, n, k, rows):
    w = random_24(n, k, seed=m * n, dtype=torch.float16).float()
    values, meta = ops.compress_24(w.half())
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).half().float()
    bias = torch.randn(n).half().float()
    nt = ref.n8_tiles(m)
    out = np.full((m, n), np.nan)
    for tile in range(-(-n // rows)):
        part = emulate_tile(x.numpy(), values.float().numpy(), meta, bias.numpy(), tile, rows, nt)
        written = ~np.isnan(part)
        out[written] = part[written]
    expect = (x.double() @ w.double().t() + bias.double()).numpy()
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, expect, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------ 5. constants

def test_model_constants_are_the_kernels():
    src = (CSRC / "sp24_decode.cu").read_text()
    header = (CSRC / "sparse24.h").read_text()

    def const(text, name):
        expr = re.search(rf"constexpr int {name} = ([0-9 *]+);", text).group(1)
        value = 1
        for factor in expr.split("*"):
            value *= int(factor)
        return value

    assert const(src, "kKC") == ref.CHUNK_K
    assert const(src, "kMaxConsumerWarps") == ref.MAX_CONSUMER_WARPS
    assert const(src, "kMaxFrag") == ref.MAX_FRAG
    assert const(header, "kSp24DecodeMaxM") == ref.MAX_M
    assert "NT >= 4 ? 256 : 128" in src and ref.default_rows(17) == 256 and ref.default_rows(16) == 128
    assert "static_cast<int64_t>(num_sms) * 2 * kMaxConsumerWarps * kMaxFrag * 4" in src
    assert ref.workspace_bytes(132) == 4352 + 132 * 2 * 8 * 2048 * 4


@pytest.mark.parametrize("rows", [128, 256])
@pytest.mark.parametrize("nt", [1, 2, 4, 8])
def test_producer_warps_copy_every_chunk_of_a_stage_once(rows, nt):
    """The two producer warps' loops (pw, jj, lane) as written in the kernel, against the stage layout."""
    values, meta, xs = [], [], []
    for pw in range(2):
        for lane in range(32):
            v_chunk, v_row0 = lane & 7, lane >> 3
            v_dst = (v_row0 + 4 * pw) * 128 + ((v_chunk ^ (v_row0 + 4 * pw)) << 4)
            for jj in range(rows // 8):
                row = v_row0 + 4 * (2 * jj + pw)
                assert v_dst + jj * 8 * 128 == values_offset(row, v_chunk)
                values.append((row, v_chunk))
            for jj in range(rows // 64):
                i = lane + 32 * (2 * jj + pw)
                meta.append(divmod(i, rows // 4))
            for jj in range(nt * 2):
                xs.append(((lane >> 4) + 2 * (2 * jj + pw), lane & 15))
    assert sorted(values) == [(r, c) for r in range(rows) for c in range(8)]
    assert sorted(meta) == [(s, o) for s in range(4) for o in range(rows // 4)]
    assert sorted(xs) == [(r, c) for r in range(8 * nt) for c in range(16)]
