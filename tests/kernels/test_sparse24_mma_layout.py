"""CPU model of csrc/sparse24/sparse24_mma.cu: its index arithmetic under the PTX fragment definitions.

There is no GPU in CI, so this test replays the kernel's data movement in numpy: the cp.async tile loads
(same offsets, zero-fill and padded meta), ldmatrix.x4 (lanes 8j..8j+7 give the row addresses of matrix
j; lane l receives row l/4, elements 2(l%4), 2(l%4)+1 of each), mma.sp.m16n8k32 with 16-bit types (A as
the dense m16n8k16 A layout over the 16 x 16 compressed tile; B register i = rows 8i + 2t, +1 of column
g; metadata from lanes 4g + 2s + j for sparsity selector s: low half row g, high half row g + 8, K
columns 16j..16j+15, nibble q = group q, low 2 bits first) and the epilogue. It checks that the kernel's
indexing computes x @ W^T from torch's CUTLASS meta as stored. What it cannot check is that the hardware
follows those definitions: that needs the GPU tests (tests/kernels/test_sparse24_matmul.py).
"""
import numpy as np
import pytest
import torch

from sparsekit import ops

BK = 64
V_STRIDE = BK // 2 + 8
X_STRIDE = BK + 8
PAD_META = 0x4444


def cfg(bn, bm, warps_n, warps_m):
    c = dict(BN=bn, BM=bm, WARPS_N=warps_n, WARPS_M=warps_m)
    c.update(WN=bn // warps_n, WM=bm // warps_m, GROUPS=bn // 32, THREADS=warps_n * warps_m * 32)
    c.update(MT=c["WN"] // 16, NT=c["WM"] // 8)
    return c


LARGE = cfg(128, 128, 2, 4)
SMALL = cfg(128, 64, 4, 2)
NARROW = cfg(64, 64, 2, 4)


def load_stage(c, kt, n0, m0, x, values, meta_flat, M, N, K):
    """The kernel's load_stage: returns the (values, x, meta) shared tiles of k-tile kt."""
    k0 = kt * BK
    vs = np.full((c["BN"], V_STRIDE), np.nan, np.float32)
    xs = np.full((c["BM"], X_STRIDE), np.nan, np.float32)
    ms = np.zeros(2 * c["GROUPS"] * 64, np.int64)
    half_k = K // 2
    values_flat = values.reshape(-1)
    x_flat = x.reshape(-1)
    for i in range(c["BN"] * 4):
        row, chunk = i // 4, i % 4
        ok = n0 + row < N
        src = (n0 + row) * half_k + k0 // 2 + chunk * 8
        vs[row, chunk * 8:chunk * 8 + 8] = values_flat[src:src + 8] if ok else 0
    for i in range(c["BM"] * 8):
        row, chunk = i // 8, i % 8
        ok = m0 + row < M
        src = (m0 + row) * K + k0 + chunk * 8  # x_row_stride = K (contiguous x)
        xs[row, chunk * 8:chunk * 8 + 8] = x_flat[src:src + 8] if ok else 0
    for i in range((BK // 32) * c["GROUPS"] * 8):
        half, group, chunk = i // (c["GROUPS"] * 8), (i // 8) % c["GROUPS"], i % 8
        dst = (half * c["GROUPS"] + group) * 64 + chunk * 8
        if n0 + group * 32 < N:
            src = (k0 // 32 + half) * 2 * N + (n0 // 32 + group) * 64 + chunk * 8
            ms[dst:dst + 8] = meta_flat[src:src + 8]
        else:
            ms[dst:dst + 8] = PAD_META
    return vs, xs, ms


def ldmatrix_x4(tile, row_col_of_lane):
    """regs[lane][j] = the pair of elements lane receives from matrix j."""
    addr = [row_col_of_lane(l) for l in range(32)]
    regs = np.zeros((32, 4, 2), np.float32)
    for lane in range(32):
        for j in range(4):
            r, col = addr[8 * j + lane // 4]
            regs[lane, j] = tile[r, col + 2 * (lane % 4):col + 2 * (lane % 4) + 2]
    return regs


def mma_sp(acc, a, b, e, selector):
    """acc[lane][4] += A(16x32, from a + e) @ B(32x8, from b), per the PTX fragment layouts."""
    comp = np.zeros((16, 16), np.float32)  # A as the compressed 16 x 16 tile
    for lane in range(32):
        g, t = lane // 4, lane % 4
        comp[g, 2 * t:2 * t + 2] = a[lane, 0]
        comp[g + 8, 2 * t:2 * t + 2] = a[lane, 1]
        comp[g, 2 * t + 8:2 * t + 10] = a[lane, 2]
        comp[g + 8, 2 * t + 8:2 * t + 10] = a[lane, 3]
    dense = np.zeros((16, 32), np.float32)
    for g in range(8):
        for j in range(2):
            word = int(e[4 * g + 2 * selector + j]) & 0xFFFFFFFF
            for row, bits in ((g, word & 0xFFFF), (g + 8, word >> 16)):
                for q in range(4):
                    nib = (bits >> (4 * q)) & 0xF
                    i0, i1 = nib & 3, nib >> 2
                    assert i0 != i1, "invalid metadata reached the tensor core"
                    dense[row, 16 * j + 4 * q + i0] += comp[row, 8 * j + 2 * q]
                    dense[row, 16 * j + 4 * q + i1] += comp[row, 8 * j + 2 * q + 1]
    bmat = np.zeros((32, 8), np.float32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(4):
            bmat[8 * i + 2 * t:8 * i + 2 * t + 2, g] = b[lane, i]
    d = dense.astype(np.float64) @ bmat.astype(np.float64)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        acc[lane] += [d[g, 2 * t], d[g, 2 * t + 1], d[g + 8, 2 * t], d[g + 8, 2 * t + 1]]


def emulate(c, x, values, meta, bias):
    M, K = x.shape
    N = values.shape[0]
    meta_flat = meta.reshape(-1).astype(np.int64) & 0xFFFF
    out = np.full((M, N), np.nan, np.float64)
    for bx in range((N + c["BN"] - 1) // c["BN"]):
        for by in range((M + c["BM"] - 1) // c["BM"]):
            n0, m0 = bx * c["BN"], by * c["BM"]
            acc = np.zeros((c["WARPS_N"] * c["WARPS_M"], c["MT"], c["NT"], 32, 4))
            for kt in range(K // BK):
                vs, xs, ms = load_stage(c, kt, n0, m0, x, values, meta_flat, M, N, K)
                words = (ms[0::2] & 0xFFFF) | ((ms[1::2] & 0xFFFF) << 16)  # the uint32 view (little endian)
                for warp in range(c["WARPS_N"] * c["WARPS_M"]):
                    wn, wm = warp // c["WARPS_M"], warp % c["WARPS_M"]
                    for kk in range(BK // 32):
                        a = [ldmatrix_x4(vs, lambda l, mt=mt: (wn * c["WN"] + mt * 16 + l % 8 + ((l // 8) % 2) * 8, kk * 16 + (l // 16) * 8))
                             for mt in range(c["MT"])]
                        e = [words[(kk * c["GROUPS"] + wn * (c["WN"] // 32) + g) * 32:][:32] for g in range(c["MT"] // 2)]
                        b = [ldmatrix_x4(xs, lambda l, nt=nt: (wm * c["WM"] + nt * 8 + l % 8, kk * 32 + (l // 8) * 8))
                             for nt in range(c["NT"])]
                        for mt in range(c["MT"]):
                            for nt in range(c["NT"]):
                                mma_sp(acc[warp, mt, nt], a[mt], b[nt], e[mt // 2], mt % 2)
            tile = np.full((c["BM"], c["BN"] + 8), np.nan)
            for warp in range(c["WARPS_N"] * c["WARPS_M"]):
                wn, wm = warp // c["WARPS_M"], warp % c["WARPS_M"]
                for mt in range(c["MT"]):
                    for h in range(2):
                        for lane in range(32):
                            nl = wn * c["WN"] + mt * 16 + lane // 4 + h * 8
                            b_n = bias[n0 + nl] if bias is not None and n0 + nl < N else 0.0
                            for nt in range(c["NT"]):
                                ml = wm * c["WM"] + nt * 8 + (lane % 4) * 2
                                tile[ml, nl] = acc[warp, mt, nt, lane, 2 * h] + b_n
                                tile[ml + 1, nl] = acc[warp, mt, nt, lane, 2 * h + 1] + b_n
            for i in range(c["BM"] * (c["BN"] // 8)):
                row, chunk = i // (c["BN"] // 8), i % (c["BN"] // 8)
                m, n = m0 + row, n0 + chunk * 8
                if m < M and n < N:
                    out[m, n:n + 8] = tile[row, chunk * 8:chunk * 8 + 8]
    return out


@pytest.mark.parametrize("tile,m,n,k", [(SMALL, 5, 160, 128), (LARGE, 3, 128, 64), (NARROW, 70, 96, 128)],
                         ids=["small-tile-partial-N-and-M", "large-tile", "narrow-tile-two-M-tiles"])
def test_mma_sp_index_arithmetic_reproduces_the_product(tile, m, n, k):
    g = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=g)
    keep = torch.zeros(n, k // 4, 4, dtype=torch.bool).scatter_(-1, torch.rand(n, k // 4, 4, generator=g).topk(2, -1).indices, True)
    w = (w * keep.view(n, k)).half().float()
    values, meta = ops.compress_24(w.half())
    x = torch.randn(m, k, generator=g).half().float()
    bias = torch.randn(n, generator=g)
    out = emulate(tile, x.numpy(), values.float().numpy(), meta.numpy(), bias.numpy())
    ref = (x.double() @ w.double().T + bias.double()).numpy()
    assert not np.isnan(out).any(), "an output element was never written"
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-9)
