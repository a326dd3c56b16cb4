"""The 2:4 matmul with an input permutation folded into the kernel's x loads (issue #13 part 3).

y = x[:, perm] @ W.T, W stored compressed in permuted column order. Triton runs under the interpreter on
CPU: every code path (gather path BLOCK_M < 16, dot path, split-K, K not a multiple of BLOCK_K), odd M,
the launch plan and SparseLinear24's fused forward. Exactness: with small-integer data every partial sum is
exact in fp32/fp16/bf16, so any summation order gives the same bits and the kernels must equal the
dense-with-zeros layer exactly; with Gaussian data the usual tolerance (tests/kernels/test_sparse24_matmul.py).
"""
import pytest
import torch
from torch import nn

from sparsekit import ops
from sparsekit.nn import SparseLinear24
from tests.helpers import DTYPES, KERNEL_DEVICE, needs_cuda, needs_triton, require_cuda_extension
from tests.kernels.test_sparse24_matmul import InterpretedKernel, assert_matches, make_x, random_24


def integer_24(n, k, dtype, seed):
    """2:4 weight (N, K) with values in -3..3 (sums stay exact in every float dtype)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-3, 4, (n, k), generator=g).float()
    keep = torch.zeros(n, k // 4, 4, dtype=torch.bool)
    keep.scatter_(-1, torch.rand(n, k // 4, 4, generator=g).topk(2, -1).indices, True)
    return torch.where(keep.view(n, k), w, torch.zeros(())).to(dtype)


def perm_of(k, seed):
    return torch.randperm(k, generator=torch.Generator().manual_seed(seed))


def triton_matmul(x, values, meta, bias, perm, config=None):
    from sparsekit.triton_kernels.sparse24_matmul import sparse24_matmul

    return sparse24_matmul(x, values, meta, bias, config=config, perm=perm)


CONFIGS = [  # (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K): gather and dot paths, split-K, masked K tails
    (1, 32, 64, 1), (2, 64, 256, 2), (4, 32, 128, 4), (16, 32, 64, 3), (16, 64, 128, 1), (32, 32, 256, 2),
]


@needs_triton
@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"bm{c[0]}-bn{c[1]}-bk{c[2]}-split{c[3]}" for c in CONFIGS])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_triton_gathers_x_by_perm_exactly(cfg, dtype):
    bm, bn, bk, split = cfg
    n, k = 96, 320
    m = {1: 1, 2: 2, 4: 3}.get(bm, bm + 1)  # odd, partly masked M tiles
    w = integer_24(n, k, dtype, seed=sum(cfg))
    values, meta = ops.compress_24(w.to(KERNEL_DEVICE))
    perm = perm_of(k, seed=bk + m).to(KERNEL_DEVICE)
    g = torch.Generator().manual_seed(m)
    x = torch.randint(-2, 3, (m, k), generator=g).to(dtype).to(KERNEL_DEVICE)
    bias = torch.randint(-5, 6, (n,), generator=g).to(dtype).to(KERNEL_DEVICE)
    config = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, num_warps=4, num_stages=2)
    out = triton_matmul(x, values, meta, bias, perm.int(), config)
    expected = (x.double()[:, perm] @ w.double().T.to(KERNEL_DEVICE) + bias.double()).to(dtype)
    assert torch.equal(out, expected)


@needs_triton
@pytest.mark.parametrize("m", [1, 3, 17, 33])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("shape", [(32, 64), (96, 320), (64, 576)])
def test_ops_with_perm_matches_index_select(m, dtype, shape):
    n, k = shape
    w = random_24(n, k, dtype, KERNEL_DEVICE, seed=m + n)
    values, meta = ops.compress_24(w)
    x = make_x(m, k, dtype, KERNEL_DEVICE, "row_slice" if m % 2 else "contiguous")
    perm = perm_of(k, seed=m).to(KERNEL_DEVICE)
    bias = torch.randn(n).to(dtype).to(KERNEL_DEVICE) if m % 2 else None
    for p in (perm, perm.int()):
        out = ops.sparse24_matmul(x, values, meta, bias, perm=p, backend="triton")
        assert_matches(out, x[:, perm], w, bias)
    ref = ops.sparse24_matmul(x, values, meta, bias, perm=perm, backend="torch")
    assert torch.equal(ref, ops.sparse24_matmul(x[:, perm].contiguous(), values, meta, bias, backend="torch"))


def test_ops_refuses_a_bad_perm():
    w = random_24(32, 64, torch.float32)
    values, meta = ops.compress_24(w)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match=r"perm must be a \(64,\)"):
        ops.sparse24_matmul(x, values, meta, perm=torch.arange(63))
    with pytest.raises(ValueError, match=r"perm must be a \(64,\)"):
        ops.sparse24_matmul(x, values, meta, perm=torch.arange(64).float())
    with pytest.raises(ValueError, match="not a permutation"):
        ops.sparse24_matmul(x, values, meta, perm=torch.zeros(64, dtype=torch.int64))


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("shape,with_bias", [((96, 320), True), ((64, 1024), False)], ids=["96x320-bias", "64x1024-splitk"])
def test_launch_plan_with_perm(dtype, shape, with_bias):
    """A permuted plan (PERMUTED constexpr, perm pointer per call) across its bucket and x layouts."""
    from sparsekit.triton_kernels import sparse24_matmul as mod

    n, k = shape
    w = random_24(n, k, dtype, KERNEL_DEVICE, seed=n + k)
    values, meta = ops.compress_24(w)
    bias = torch.randn(n).to(dtype).to(KERNEL_DEVICE) if with_bias else None
    perm = perm_of(k, seed=k).to(KERNEL_DEVICE)
    perm32 = perm.int()
    kernel = InterpretedKernel()
    x = make_x(11, k, dtype, KERNEL_DEVICE)
    plan, out = mod.build_launch_plan(x, values, meta, bias, perm=perm32,
                                      compile_kernel=None if x.is_cuda else kernel.compile)
    assert plan.permuted
    assert_matches(out, x[:, perm], w, bias)
    for m in (9, 16):
        x = make_x(m, k, dtype, KERNEL_DEVICE, seed=m)
        assert_matches(plan(x, values, meta, bias, perm32), x[:, perm], w, bias)
    x = make_x(10, k, dtype, KERNEL_DEVICE, "transposed")  # the general launcher, same perm
    assert_matches(plan(x, values, meta, bias, perm32), x[:, perm], w, bias)
    if not x.is_cuda:
        assert len(kernel.grids) == 2 + (1 if x.is_contiguous() else 0)


def permuted_linear(n, k, dtype, seed, integer=True):
    """A dense Linear whose weight is 2:4 along the columns `perm` (not in its own order), and perm."""
    perm = perm_of(k, seed)
    w = integer_24(n, k, dtype, seed) if integer else random_24(n, k, dtype, seed=seed)
    linear = nn.Linear(k, n, dtype=dtype).requires_grad_(False)
    linear.weight[:, perm] = w  # W[:, perm] is the 2:4 one
    g = torch.Generator().manual_seed(seed)
    linear.bias.copy_(torch.randint(-5, 6, (n,), generator=g) if integer else torch.randn(n, generator=g))
    return linear, perm


@needs_triton
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("shape", [(32, 64), (96, 192), (64, 320)])
def test_permuted_layer_equals_dense_with_zeros(backend, dtype, shape):
    """SparseLinear24 with perm (fused gather on the kernel path) == the dense-with-zeros layer, bit for bit."""
    n, k = shape
    linear, perm = permuted_linear(n, k, dtype, seed=n + k)
    sparse = SparseLinear24.from_linear(linear, perm=perm, backend=backend).to(KERNEL_DEVICE)
    linear = linear.to(KERNEL_DEVICE)
    g = torch.Generator().manual_seed(k)
    for m in (1, 3, 5, 17):  # odd M; each bucket's first call builds a plan, its second takes the fast path
        x = torch.randint(-2, 3, (m, k), generator=g).to(dtype).to(KERNEL_DEVICE)
        for _ in range(2):
            assert torch.equal(sparse(x), linear(x))
    x3 = torch.randint(-2, 3, (2, 3, k), generator=g).to(dtype).to(KERNEL_DEVICE)
    assert torch.equal(sparse(x3), linear(x3))


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_permuted_layer_gaussian_within_tolerance(dtype):
    n, k = 64, 192
    linear, perm = permuted_linear(n, k, dtype, seed=7, integer=False)
    sparse = SparseLinear24.from_linear(linear, perm=perm, backend="triton").to(KERNEL_DEVICE)
    x = make_x(5, k, dtype, KERNEL_DEVICE)
    assert_matches(sparse(x), x, linear.weight.to(KERNEL_DEVICE), linear.bias.to(KERNEL_DEVICE))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("m,shape", [(1, (256, 4096)), (7, (96, 320)), (33, (512, 1024)), (64, (64, 576)),
                                     (100, (256, 1024))])
@pytest.mark.parametrize("provider", ["cuda", "cublas", "triton"])
def test_gpu_providers_gather_by_perm(provider, m, shape, dtype):
    """On a GPU: sp24_decode (M <= 64) and sp24_mm (above) gather x by perm in their x loads; cublas index_selects."""
    if provider == "cuda":
        require_cuda_extension()
    n, k = shape
    w = random_24(n, k, dtype, "cuda", seed=m + n)
    values, meta = ops.compress_24(w)
    perm = perm_of(k, seed=m).cuda()
    for layout, with_bias in [("contiguous", True), ("row_slice", False)]:
        x = make_x(m, k, dtype, "cuda", layout, seed=m)
        bias = torch.randn(n, device="cuda").to(dtype) if with_bias else None
        out = ops.sparse24_matmul(x, values, meta, bias, perm=perm, backend=provider)
        torch.cuda.synchronize()
        assert_matches(out, x[:, perm], w, bias)


@needs_cuda
def test_gpu_perm_out_of_range_fails_instead_of_reading_out_of_bounds():
    values, meta = ops.compress_24(random_24(32, 64, torch.float16).cuda())
    perm = torch.arange(64, device="cuda")
    perm[5] = 64
    with pytest.raises(RuntimeError):
        ops.sparse24_matmul(torch.randn(2, 64, dtype=torch.float16, device="cuda"), values, meta, perm=perm)
        torch.cuda.synchronize()
