"""2:4 format: compress/decompress vs torch's CUTLASS converter, bitmask converters, torch-backend matmul."""
import itertools

import numpy as np
import pytest
import torch
from torch.sparse._semi_structured_conversions import (
    sparse_semi_structured_from_dense_cutlass,
    sparse_semi_structured_to_dense_cutlass,
)

from sparsekit import ops
from sparsekit.torch_backend import sparse24 as ref

SHAPES = [(32, 64), (64, 128), (96, 192), (160, 64), (32, 576), (192, 576)]
HALF = [torch.float16, torch.bfloat16]


def random_24(n, k, dtype, *, extra_zeros=0.2, neg_zero=0.5, seed=0):
    """A random 2:4 weight: two kept per group, some kept ones zeroed, pruned zeros partly -0.0."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).to(dtype)
    score = torch.rand(n, k // 4, 4, generator=g)
    keep = torch.zeros(n, k // 4, 4, dtype=torch.bool).scatter_(-1, score.topk(2, -1).indices, True).view(n, k)
    keep &= torch.rand(n, k, generator=g) >= extra_zeros
    w = torch.where(keep, w, torch.zeros((), dtype=dtype))
    flip = ~keep & (torch.rand(n, k, generator=g) < neg_zero)
    return torch.where(flip, torch.full((), -0.0, dtype=dtype), w)


def bits(t):
    return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", HALF)
def test_compress_matches_torch_cutlass_bit_for_bit(shape, dtype):
    w = random_24(*shape, dtype, seed=shape[0] * 7 + shape[1])
    values, meta = ops.compress_24(w)
    ref_values, ref_meta = sparse_semi_structured_from_dense_cutlass(w)
    assert values.shape == (shape[0], shape[1] // 2) and meta.shape == (shape[0], shape[1] // 16)
    assert meta.dtype == torch.int16 and values.dtype == dtype
    assert torch.equal(meta, ref_meta)
    assert torch.equal(bits(values), bits(ref_values))
    dense = ops.decompress_24(values, meta)
    assert torch.equal(bits(dense), bits(sparse_semi_structured_to_dense_cutlass(ref_values, ref_meta)))
    assert torch.equal(dense, w)  # -0.0 == 0.0: same values


@pytest.mark.parametrize("dtype", HALF)
def test_every_group_pattern_including_sparser_groups(dtype):
    # all 11 patterns with <= 2 nonzeros, in every position of a 32x64 tile (meta reordering covered too)
    patterns = [p for p in itertools.product([0, 1], repeat=4) if sum(p) <= 2]
    assert len(patterns) == 11
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(len(patterns), (32, 16), generator=g)
    mask = torch.tensor(patterns, dtype=torch.bool)[idx].view(32, 64)
    w = torch.where(mask, torch.randn(32, 64, generator=g).to(dtype) + 3, torch.zeros((), dtype=dtype))
    values, meta = ops.compress_24(w)
    ref_values, ref_meta = sparse_semi_structured_from_dense_cutlass(w)
    assert torch.equal(meta, ref_meta) and torch.equal(bits(values), bits(ref_values))
    assert torch.equal(ops.decompress_24(values, meta), w)


def test_negative_zero_counts_as_zero():
    w = random_24(32, 64, torch.bfloat16, extra_zeros=0.0, neg_zero=1.0)  # every pruned slot is -0.0
    assert (w.view(torch.int16) == -32768).sum() == 32 * 32
    values, meta = ops.compress_24(w)
    ref_values, ref_meta = sparse_semi_structured_from_dense_cutlass(w)
    assert torch.equal(meta, ref_meta) and torch.equal(values, ref_values)
    assert (values != 0).all()


def test_bf16_bits_survive_round_trip():
    w = random_24(64, 128, torch.bfloat16, extra_zeros=0.0, neg_zero=0.0)
    assert torch.equal(ops.decompress_24(*ops.compress_24(w)).view(torch.int16), w.view(torch.int16))


def test_fp32_uses_the_16bit_layout():
    # torch's converter treats fp32 as 1:2; sparsekit keeps one 2:4 layout: same meta as fp16, fp32 values
    w16 = random_24(64, 128, torch.float16, seed=3)
    values, meta = ops.compress_24(w16.float())
    values16, meta16 = ops.compress_24(w16)
    assert values.dtype == torch.float32 and meta.shape == (64, 8)
    assert torch.equal(meta, meta16) and torch.equal(values, values16.float())
    assert torch.equal(ops.decompress_24(values, meta), w16.float())


def test_compress_works_on_views_and_is_vectorised():
    w = random_24(64, 256, torch.float16, seed=5)
    wide = torch.cat([w, w], dim=1)[:, :256]  # non-contiguous view
    assert not wide.is_contiguous()
    values, meta = ops.compress_24(wide)
    assert torch.equal(meta, ops.compress_24(w)[1])


# ---------------------------------------------------------------- refusals


def test_refuses_weight_that_is_not_24():
    w = random_24(32, 64, torch.float16)
    w[5, 8:12] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    with pytest.raises(ValueError, match=r"not 2:4 sparse.*row 5, columns 8\.\.11 has 3"):
        ops.compress_24(w)


@pytest.mark.parametrize("shape, hint", [((33, 64), "pad 31 zero rows"), ((32, 96), "pad 32 zero columns"), ((48, 80), "pad 16 zero rows")])
def test_refuses_shapes_off_the_cutlass_grid(shape, hint):
    with pytest.raises(ValueError, match=hint):
        ops.compress_24(torch.zeros(shape, dtype=torch.float16))


def test_refuses_bad_dtype_rank_and_values():
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        ops.compress_24(torch.zeros(32, 64, dtype=torch.float64))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        ops.compress_24(torch.zeros(32, 64, dtype=torch.int8))
    with pytest.raises(ValueError, match="2-D"):
        ops.compress_24(torch.zeros(2, 32, 64, dtype=torch.float16))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.compress_24(np.zeros((32, 64)))
    w = torch.zeros(32, 64, dtype=torch.float16)
    w[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ops.compress_24(w)


def test_decompress_refuses_inconsistent_inputs():
    values, meta = ops.compress_24(random_24(32, 64, torch.float16))
    with pytest.raises(TypeError, match="int16"):
        ops.decompress_24(values, meta.int())
    with pytest.raises(ValueError, match=r"shape \(N, K/16\)"):
        ops.decompress_24(values, meta[:, :2])
    with pytest.raises(ValueError, match="does not fit"):
        ops.decompress_24(values[:16], meta[:16])
    with pytest.raises(ValueError, match="corrupt"):
        ops.decompress_24(values, torch.zeros_like(meta))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="meta is on"):
            ops.decompress_24(values, meta.cuda())


# ---------------------------------------------------------------- compressed-tensors bitmask


@pytest.mark.parametrize("dtype", HALF + [torch.float32])
def test_bitmask_matches_numpy_packbits_and_round_trips(dtype):
    w = random_24(64, 192, dtype, seed=11)
    values, meta = ops.compress_24(w)
    compressed, bitmask, shape = ops.to_bitmask_24(values, meta)
    assert shape == (64, 192) and compressed.shape == (64, 96) and bitmask.dtype == torch.uint8
    kept = ref.kept_mask(meta)
    assert (kept.view(64, 48, 4).sum(-1) == 2).all()  # exactly 2 per group, like compressed-tensors
    expected = np.packbits(kept.numpy(), axis=-1, bitorder="little")
    assert np.array_equal(bitmask.numpy(), expected)
    assert torch.equal(compressed, w[kept].view(64, 96))  # compressed-tensors' own definition
    values2, meta2 = ops.from_bitmask_24(compressed, bitmask, torch.tensor(shape).reshape(-1, 1))
    assert torch.equal(meta2, meta) and torch.equal(bits(values2), bits(values))


def test_bitmask_from_compressed_tensors_style_topk_mask():
    # compressed-tensors picks the top-2 |w| per group (even zeros); loading must give the same dense weight
    w = random_24(32, 128, torch.bfloat16, seed=2)
    groups = w.view(32, 32, 4)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.float().abs().topk(2, -1).indices, True).view(32, 128)
    bitmask = torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))
    values, meta = ops.from_bitmask_24(w[mask].view(32, 64), bitmask, (32, 128))
    assert torch.equal(ops.decompress_24(values, meta), w)


def test_bitmask_odd_width_unpacks():
    mask = torch.rand(3, 13) < 0.5
    packed = ref.pack_bitmask(mask)
    assert np.array_equal(packed.numpy(), np.packbits(mask.numpy(), axis=-1, bitorder="little"))
    assert torch.equal(ref.unpack_bitmask(packed, 13), mask)


def test_bitmask_refusals():
    w = random_24(32, 64, torch.float16)
    compressed, bitmask, shape = ops.to_bitmask_24(*ops.compress_24(w))
    with pytest.raises(TypeError, match="uint8"):
        ops.from_bitmask_24(compressed, bitmask.to(torch.int8), shape)
    with pytest.raises(ValueError, match="ceil"):
        ops.from_bitmask_24(compressed, bitmask[:, :4], shape)
    with pytest.raises(ValueError, match="holds"):
        ops.from_bitmask_24(compressed[:, :8], bitmask, shape)
    with pytest.raises(ValueError, match=r"\(rows, cols\)"):
        ops.from_bitmask_24(compressed, bitmask, (32, 64, 1))
    dense3 = torch.ones(32, 64, dtype=torch.float16)
    dense3[:, 3::4] = 0  # 3 of 4 kept: a valid bitmask, but not 2:4
    mask3 = dense3 != 0
    packed3 = ref.pack_bitmask(mask3)
    with pytest.raises(ValueError, match="not 2:4"):
        ops.from_bitmask_24(dense3[mask3], packed3, (32, 64))


# ---------------------------------------------------------------- matmul (torch backend)


def masked_reference(x, w, bias):
    out = x.double() @ w.double().t()
    return out + bias.double() if bias is not None else out


TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-2, 1e-2), torch.bfloat16: (1e-1, 2e-2)}


@pytest.mark.parametrize("m", [1, 3, 16, 17, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(32, 64), (96, 192)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matmul_matches_dense_masked_weight(m, dtype, shape, with_bias):
    n, k = shape
    w = random_24(n, k, dtype, seed=m + n)
    values, meta = ops.compress_24(w)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype) if with_bias else None
    out = ops.sparse24_matmul(x, values, meta, bias, backend="torch")
    assert out.shape == (m, n) and out.dtype == dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.double(), masked_reference(x, w, bias), atol=atol * (k / 64) ** 0.5, rtol=rtol)
    # the torch backend is the exact dense GEMM of the masked weight
    assert torch.equal(out, torch.nn.functional.linear(x, w, bias))


@pytest.mark.parametrize("layout", ["3d", "transposed", "sliced", "expanded"])
def test_matmul_any_strides_and_leading_dims(layout):
    n, k = 64, 128
    w = random_24(n, k, torch.float32, seed=9)
    values, meta = ops.compress_24(w)
    base = torch.randn(2, 5, k)
    x = {
        "3d": base,
        "transposed": torch.randn(k, 7).t(),
        "sliced": torch.randn(6, 2 * k)[:, ::2],
        "expanded": torch.randn(1, k).expand(4, k),
    }[layout]
    out = ops.sparse24_matmul(x, values, meta)
    assert out.shape == (*x.shape[:-1], n)
    torch.testing.assert_close(out, x @ w.t(), atol=1e-5, rtol=1e-5)


def test_matmul_empty_batch():
    values, meta = ops.compress_24(random_24(32, 64, torch.float16))
    out = ops.sparse24_matmul(torch.zeros(0, 3, 64, dtype=torch.float16), values, meta)
    assert out.shape == (0, 3, 32)


def test_matmul_refusals():
    values, meta = ops.compress_24(random_24(32, 64, torch.float16))
    x = torch.randn(4, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="K=64"):
        ops.sparse24_matmul(torch.randn(4, 32, dtype=torch.float16), values, meta)
    with pytest.raises(TypeError, match="cast x"):
        ops.sparse24_matmul(x.float(), values, meta)
    with pytest.raises(ValueError, match="1-D tensor of 32"):
        ops.sparse24_matmul(x, values, meta, torch.zeros(16, dtype=torch.float16))
    with pytest.raises(TypeError, match="bias must match"):
        ops.sparse24_matmul(x, values, meta, torch.zeros(32))
    with pytest.raises(TypeError, match="int16"):
        ops.sparse24_matmul(x, values, meta.int())
    with pytest.raises(ValueError, match="unknown backend"):
        ops.sparse24_matmul(x, values, meta, backend="cutlass")
    if not torch.cuda.is_available():
        with pytest.raises((NotImplementedError, RuntimeError), match="no cuda backend|CUDA tensors"):
            ops.sparse24_matmul(x, values, meta, backend="cuda")
