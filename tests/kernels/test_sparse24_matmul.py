"""sparse24_matmul kernels vs x @ W.T of the masked dense weight.

Triton runs under the interpreter on CPU (natively on CUDA); the CUDA mma.sp kernel and the library
providers (cuSPARSELt, cuBLAS) need a GPU. The dispatcher's choice logic is tested with fake tables.
Tolerance: the kernel's max error against a float64 reference may be at most twice that of torch's own
same-precision F.linear, plus a small floor (flash-attention's rule).
"""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.sparse._semi_structured_conversions import _calculate_meta_reordering_scatter_offsets

from sparsekit import backend, ops
from sparsekit.cuda_backend import sparse24_dispatch
from tests.helpers import DTYPES, KERNEL_DEVICE, needs_cuda, needs_triton, require_cuda_extension

FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 4e-3}


def random_24(n, k, dtype, device="cpu", seed=0, extra_zeros=0.1):
    """Random 2:4 weight (N, K) along K; a few kept slots are zero too (sparser groups)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    keep = torch.zeros(n, k // 4, 4, dtype=torch.bool)
    keep.scatter_(-1, torch.rand(n, k // 4, 4, generator=g).topk(2, -1).indices, True)
    keep = keep.view(n, k) & (torch.rand(n, k, generator=g) >= extra_zeros)
    return torch.where(keep, w, torch.zeros(())).to(dtype).to(device)


def make_x(m, k, dtype, device, layout="contiguous", seed=1):
    g = torch.Generator().manual_seed(seed)
    if layout == "contiguous":
        x = torch.randn(m, k, generator=g)
    elif layout == "row_slice":  # row stride > K
        x = torch.randn(m, k + 64, generator=g)[:, 32:32 + k]
    elif layout == "transposed":  # column-major: stride (1, M)
        x = torch.randn(k, m, generator=g).t()
    else:
        raise ValueError(layout)
    return x.to(dtype).to(device)


def assert_matches(out, x, w, bias):
    assert out.shape == (x.shape[0], w.shape[0]) and out.dtype == x.dtype
    ref = x.double() @ w.double().T
    if bias is not None:
        ref += bias.double()
    same = F.linear(x.cpu().float(), w.cpu().float(), None if bias is None else bias.cpu().float()).to(x.dtype)
    assert torch.isfinite(out).all(), "non-finite output (an element was not written?)"
    err = (out.double().cpu() - ref.cpu()).abs().max().item()
    base = (same.double() - ref.cpu()).abs().max().item()
    tol = 2 * base + FLOOR[x.dtype] * ref.abs().max().item()
    assert err <= tol, f"max error {err:.3g} > {tol:.3g} (torch same-precision error {base:.3g})"


def triton_matmul(x, values, meta, bias, config=None):
    from sparsekit.triton_kernels.sparse24_matmul import sparse24_matmul

    return sparse24_matmul(x, values, meta, bias, config=config)


# ------------------------------------------------------------------------------------------------
# Triton

SHAPES = [(32, 64), (96, 320), (160, 192), (64, 576)]  # N multiple of 32, K multiple of 64; odd block multiples
CASES = [(m, dtype, SHAPES[i % len(SHAPES)], i % 2 == 0, ["contiguous", "row_slice", "transposed"][i % 3])
         for i, (m, dtype) in enumerate((m, d) for m in (1, 3, 16, 17, 64) for d in DTYPES)]


@needs_triton
@pytest.mark.parametrize("m,dtype,shape,with_bias,layout", CASES,
                         ids=[f"M{c[0]}-{str(c[1])[6:]}-{c[2][0]}x{c[2][1]}-{'bias' if c[3] else 'nobias'}-{c[4]}" for c in CASES])
def test_triton_matches_masked_dense(m, dtype, shape, with_bias, layout):
    n, k = shape
    w = random_24(n, k, dtype, KERNEL_DEVICE, seed=m * 13 + n)
    values, meta = ops.compress_24(w)
    x = make_x(m, k, dtype, KERNEL_DEVICE, layout)
    bias = torch.randn(n).to(dtype).to(KERNEL_DEVICE) if with_bias else None
    out = ops.sparse24_matmul(x, values, meta, bias, backend="triton")
    assert_matches(out, x, w, bias)


# (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K): gather path (BLOCK_M < 16) and dot path, split-K on and off,
# N and K that are not multiples of the blocks (masked loads), more K blocks than splits and fewer.
CONFIGS = [
    (1, 32, 64, 1), (1, 64, 256, 2), (2, 32, 128, 4), (4, 64, 128, 2),
    (16, 32, 64, 4), (16, 32, 32, 3), (16, 128, 128, 1), (32, 64, 256, 2), (64, 32, 64, 3),
]


@needs_triton
@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"bm{c[0]}-bn{c[1]}-bk{c[2]}-split{c[3]}" for c in CONFIGS])
def test_triton_every_code_path(cfg):
    bm, bn, bk, split = cfg
    n, k = 96, 320
    m = {1: 1, 2: 2, 4: 3}.get(bm, bm + 1)  # the M tile is partly masked whenever it can be
    dtype = torch.bfloat16 if bm % 2 == 0 else torch.float16
    w = random_24(n, k, dtype, KERNEL_DEVICE, seed=sum(cfg))
    values, meta = ops.compress_24(w)
    x = make_x(m, k, dtype, KERNEL_DEVICE, "row_slice")
    bias = torch.randn(n).to(dtype).to(KERNEL_DEVICE)
    config = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, num_warps=4, num_stages=2)
    assert_matches(triton_matmul(x, values, meta, bias, config), x, w, bias)


@needs_triton
def test_triton_split_k_leaves_workspace_clean_and_repeats():
    from sparsekit.triton_kernels import sparse24_matmul as mod

    n, k, m = 64, 256, 5
    w = random_24(n, k, torch.float32, KERNEL_DEVICE, seed=3)
    values, meta = ops.compress_24(w)
    x = make_x(m, k, torch.float32, KERNEL_DEVICE)
    config = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SPLIT_K=4)
    first = triton_matmul(x, values, meta, None, config)
    for ws, count in mod.workspaces(x.device).by_stream.values():
        assert not ws.any() and not count.any(), "split-K must leave its workspace and counters zeroed"
    second = triton_matmul(x, values, meta, None, config)
    torch.testing.assert_close(first, second, rtol=1e-6, atol=1e-6)  # atomics may reorder the sum
    assert_matches(second, x, w, None)


@needs_triton
def test_triton_through_ops_with_leading_dims():
    n, k = 64, 128
    w = random_24(n, k, torch.float16, KERNEL_DEVICE, seed=5)
    values, meta = ops.compress_24(w)
    x = make_x(6, k, torch.float16, KERNEL_DEVICE).view(2, 3, k)
    out = ops.sparse24_matmul(x, values, meta, backend="triton")
    assert out.shape == (2, 3, n)
    assert_matches(out.view(6, n), x.view(6, k), w, None)


class InterpretedKernel:
    """Triton CompiledKernel's launch interface, running the kernel through the interpreter (CPU)."""

    function = None
    packed_metadata = None

    def __init__(self):
        self.grids = []

    def compile(self, args, kwargs):
        return self

    def run(self, grid_0, grid_1, grid_2, stream, function, packed_metadata, launch_metadata, enter, exit, *args):
        from sparsekit.triton_kernels.sparse24_matmul import _sparse24_matmul_kernel

        self.grids.append((grid_0, grid_1, grid_2))
        _sparse24_matmul_kernel[(grid_0, grid_1, grid_2)](*args)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,with_bias", [((96, 320), True), ((64, 1024), False)], ids=["96x320-bias", "64x1024-splitk"])
def test_launch_plan_matches_reference_across_its_bucket(dtype, shape, with_bias):
    """A plan built at one M serves every M of its bucket (9..16 here), any leading dims, any x layout."""
    from sparsekit.triton_kernels import sparse24_matmul as mod

    n, k = shape
    w = random_24(n, k, dtype, KERNEL_DEVICE, seed=n + k)
    values, meta = ops.compress_24(w)
    bias = torch.randn(n).to(dtype).to(KERNEL_DEVICE) if with_bias else None
    kernel = InterpretedKernel()
    x = make_x(11, k, dtype, KERNEL_DEVICE)
    plan, out = mod.build_launch_plan(x, values, meta, bias, compile_kernel=None if x.is_cuda else kernel.compile)
    assert_matches(out, x, w, bias)
    assert plan.bucket == 16
    for m in (9, 16, 12):
        x = make_x(m, k, dtype, KERNEL_DEVICE, seed=m)
        assert_matches(plan(x, values, meta, bias), x, w, bias)
    x3 = make_x(12, k, dtype, KERNEL_DEVICE, seed=7)
    out3 = plan(x3.view(3, 4, k), values, meta, bias)
    assert out3.shape == (3, 4, n)
    assert_matches(out3.view(12, n), x3, w, bias)
    direct = [9, 16, 12, 12]
    for layout in ("transposed", "row_slice"):  # not contiguous: the general launcher with the plan's config
        x = make_x(10, k, dtype, KERNEL_DEVICE, layout)
        assert_matches(plan(x, values, meta, bias), x, w, bias)
        direct += [10] if x.is_contiguous() else []  # .to(dtype) may have made a copy
    if not x.is_cuda:
        tiles_n = -(-n // plan.config["BLOCK_N"])
        assert kernel.grids == [(tiles_n, -(-m // plan.block_m), plan.split) for m in direct]
        assert (plan.split > 1) == (k == 1024), "the 64x1024 case is there to exercise split-K"
    for ws, count in mod.workspaces(values.device).by_stream.values():
        assert not ws.any() and not count.any(), "split-K must leave its workspace and counters zeroed"


def test_meta_position_matches_torch_reorder():
    from sparsekit.triton_kernels.sparse24_matmul import meta_position

    for rows, cols in [(32, 4), (64, 8), (160, 36), (96, 2)]:
        n = torch.arange(rows)[:, None]
        c = torch.arange(cols)[None, :]
        expected = _calculate_meta_reordering_scatter_offsets(rows, cols, torch.int16, "cpu").view(rows, cols)
        assert torch.equal(meta_position(n, c, rows), expected)


def test_autotune_pruning_fits_the_problem():
    from sparsekit.triton_kernels import sparse24_matmul as mod

    configs = mod._all_configs()
    for m, n, k in [(1, 4096, 4096), (3, 11008, 4096), (16, 4096, 11008), (17, 14336, 4096), (64, 4096, 4096),
                    (128, 4096, 4096), (300, 4096, 4096), (4096, 11008, 4096), (2, 32, 64)]:
        kept = mod._prune_configs(configs, {"M": m, "N": n, "K": k})
        assert 1 <= len(kept) <= 32
        for cfg in kept:
            kw = cfg.kwargs
            assert kw["BLOCK_M"] in mod._block_ms(m)
            if m > mod.SPLIT_MAX_M:
                assert kw["SPLIT_K"] == 1
            elif kw["SPLIT_K"] > 1:
                assert k // kw["BLOCK_K"] // kw["SPLIT_K"] >= 2
    # decode on 4096x4096: some config gives at least one wave of programs on 132 SMs
    kept = mod._prune_configs(configs, {"M": 1, "N": 4096, "K": 4096})
    waves = [(4096 // c.kwargs["BLOCK_N"]) * c.kwargs["SPLIT_K"] / mod._num_sms() for c in kept]
    assert max(waves) >= 0.9


# ------------------------------------------------------------------------------------------------
# CUDA: sparsekit's mma.sp kernel and the library providers


def _poisoned_cuda_allocator(m, n, dtype):
    """Leave a NaN-filled block of the output's size in the caching allocator: unwritten outputs stay NaN."""
    torch.empty(m, n, dtype=dtype, device="cuda").fill_(float("nan"))


GPU_CASES = [(1, (96, 320)), (17, (256, 512)), (64, (160, 192)), (300, (1024, 1024)), (1030, (512, 2048)),
             (4096, (256, 4096))]


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,shape", GPU_CASES)
@pytest.mark.parametrize("provider", ["cuda", "cusparselt", "cublas", "triton"])
def test_gpu_providers_match_masked_dense(provider, m, shape, dtype):
    if provider == "cuda":
        require_cuda_extension()
    if provider == "cusparselt" and backend.cusparselt_available():
        pytest.skip(backend.cusparselt_available())
    n, k = shape
    w = random_24(n, k, dtype, "cuda", seed=m + n)
    values, meta = ops.compress_24(w)
    for layout, with_bias in [("contiguous", True), ("row_slice", False), ("transposed", True)]:
        x = make_x(m, k, dtype, "cuda", layout, seed=m)
        bias = torch.randn(n, device="cuda").to(dtype) if with_bias else None
        _poisoned_cuda_allocator(m, n, dtype)
        out = ops.sparse24_matmul(x, values, meta, bias, backend=provider)
        torch.cuda.synchronize()
        assert_matches(out, x, w, bias)


@needs_cuda
def test_cuda_kernel_refuses_float32_clearly():
    require_cuda_extension()
    w = random_24(64, 128, torch.float32, "cuda")
    values, meta = ops.compress_24(w)
    with pytest.raises(TypeError, match="float16/bfloat16"):
        ops.sparse24_matmul(torch.randn(4, 128, device="cuda"), values, meta, backend="cuda")


@needs_cuda
@pytest.mark.parametrize("m", [1, 16, 200, 2048])
def test_gpu_automatic_choice_is_correct(m):
    n, k = 512, 1024
    w = random_24(n, k, torch.bfloat16, "cuda", seed=m)
    values, meta = ops.compress_24(w)
    x = make_x(m, k, torch.bfloat16, "cuda")
    assert_matches(ops.sparse24_matmul(x, values, meta), x, w, None)


# ------------------------------------------------------------------------------------------------
# errors on machines without the device

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals on a machine without CUDA")
@pytest.mark.parametrize("provider", ["cuda", "cusparselt", "cublas"])
def test_cuda_providers_refuse_cpu_tensors(provider):
    w = random_24(32, 64, torch.float16)
    values, meta = ops.compress_24(w)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        ops.sparse24_matmul(torch.randn(2, 64).half(), values, meta, backend=provider)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reason given without CUDA")
def test_extension_reports_why_it_is_unavailable():
    from sparsekit import _ext

    reason = _ext.unavailable_reason()
    assert reason and "sparsekit._C" in reason
    with pytest.raises(RuntimeError, match="sparsekit._C"):
        _ext.load()


# ------------------------------------------------------------------------------------------------
# dispatcher

DEVICE_NAME = "Fake GPU 80GB"


def fake_table():
    def entry(m, times, n=4096, k=4096, dtype="bfloat16", alg=0):
        return {"dtype": dtype, "N": n, "K": k, "M": m, "times_us": times, "cusparselt_alg_id": alg}

    return {
        "format": sparse24_dispatch.TABLE_FORMAT,
        "devices": {DEVICE_NAME: {"entries": [
            entry(1, {"triton": 6.0, "cuda": 20.0, "cusparselt": 15.0, "cublas": 11.0, "dense_ref": 11.0}),
            entry(64, {"triton": 7.0, "cuda": 18.0, "cusparselt": 14.0, "cublas": 12.0}),
            entry(256, {"triton": 20.0, "cuda": 16.0, "cusparselt": 15.0, "cublas": 14.0}, alg=3),
            entry(4096, {"triton": 400.0, "cuda": 150.0, "cusparselt": 160.0, "cublas": 190.0}, alg=5),
            entry(1, {"triton": 16.0, "cublas": 30.0}, n=11008),
            entry(1, {"triton": 9.0, "cublas": 5.0}, dtype="float16"),
        ]}},
    }


def test_table_from_benchmark_rows():
    from benchmarks.schema import BenchRow

    def bench(provider, m, median, status="ok", alg=None, n=4096, unit="ms"):
        params = {"M": m, "N": n, "K": 4096, "dtype": "bfloat16", **({"cusparselt_alg_id": alg} if alg else {})}
        return BenchRow(benchmark="kernels", case=f"sparse24_matmul/{n}x4096/M={m}", provider=provider, metric="time",
                        unit=unit, median=median, params=params, status=status, device=DEVICE_NAME)

    rows = [bench("triton", 1, 0.006), bench("cublas", 1, 0.011), bench("dense", 1, 0.0105),
            bench("cusparselt", 1, 0.004, alg=2), bench("cuda", 1, None, status="error"),
            bench("triton", 16, 0.009),  # no cublas at M=16: no entry (a pick must never lose to dense)
            bench("triton", 1, 16.0, n=11008, unit="us"), bench("cublas", 1, 30.0, n=11008, unit="us")]
    table = sparse24_dispatch.table_from_rows(rows)
    entries = table["devices"][DEVICE_NAME]["entries"]
    assert [(e["N"], e["M"]) for e in entries] == [(4096, 1), (11008, 1)]
    first = entries[0]
    assert first["times_us"] == pytest.approx({"triton": 6.0, "cublas": 11.0, "dense_ref": 10.5, "cusparselt": 4.0})
    assert first["best"] == "triton" and first["cusparselt_alg_id"] == 2  # cusparselt: measured, never picked
    assert sparse24_dispatch.rank_providers(table, DEVICE_NAME, torch.bfloat16, 1, 11008, 4096) == ["triton", "cublas"]
    with pytest.raises(ValueError, match="not a time"):
        sparse24_dispatch.table_from_rows([BenchRow(benchmark="decode", case="c", provider="dense", metric="tokens/s",
                                                    unit="tokens/s", median=3.0, params={"M": 1, "N": 32, "K": 64,
                                                                                         "dtype": "bfloat16"})])


def test_decisions_are_per_m_bucket():
    assert [sparse24_dispatch.m_bucket(m) for m in (0, 1, 2, 3, 4, 5, 16, 17, 256, 257, 512, 513, 100000)] == \
        [1, 1, 2, 4, 4, 8, 16, 32, 256, 512, 512, 512, 512]


def test_ranking_at_measured_points_and_between():
    table = fake_table()
    def rank(m, n=4096, k=4096, dtype="bfloat16"):
        return sparse24_dispatch.rank_providers(table, DEVICE_NAME, dtype, m, n, k)
    assert rank(1)[0] == "triton" and "dense_ref" not in rank(1)
    assert rank(64) == ["triton", "cublas", "cuda"]  # cusparselt is measured but never a candidate
    assert rank(256)[0] == "cublas"
    assert rank(4096)[0] == "cuda"
    assert rank(8192)[0] == "cuda"  # clamped to the largest measured M
    # between 256 and 4096, log-log interpolation: cuda (16 -> 150) beats cublas (14 -> 190) once past the crossing
    assert rank(300)[0] == "cublas" and rank(3000)[0] == "cuda"
    times = sparse24_dispatch.estimated_times(sparse24_dispatch._shape_points(table, DEVICE_NAME, "bfloat16", 4096, 4096), 1024)
    assert 14.0 < times["cublas"] < 190.0
    assert rank(1, dtype="float16")[0] == "cublas"  # dtype-specific rows
    assert rank(1, n=11008)[0] == "triton"
    assert rank(1, n=10240)[0] == "triton"  # nearest measured shape (11008 x 4096)
    assert sparse24_dispatch.rank_providers(table, "Other GPU", "bfloat16", 1, 4096, 4096) == []


def test_select_falls_back_to_available_and_never_without_cublas():
    table = fake_table()
    def every(name):
        return True
    assert sparse24_dispatch.select(table, DEVICE_NAME, torch.bfloat16, 4096, 4096, 4096, every) == "cuda"
    def no_ext(name):
        return name != "cuda"
    assert sparse24_dispatch.select(table, DEVICE_NAME, torch.bfloat16, 4096, 4096, 4096, no_ext) == "cublas"
    # float32 never goes to the 16-bit-only providers
    assert sparse24_dispatch.select(table, "Other GPU", torch.float32, 4096, 4096, 4096, every) == "cublas"
    # no table: triton for small M, cublas above; cublas if triton is missing
    assert sparse24_dispatch.select({}, DEVICE_NAME, torch.bfloat16, 16, 64, 64, every) == "triton"
    assert sparse24_dispatch.select({}, DEVICE_NAME, torch.bfloat16, 16, 64, 64, lambda p: p != "triton") == "cublas"
    assert sparse24_dispatch.select({}, DEVICE_NAME, torch.bfloat16, sparse24_dispatch.DEFAULT_TRITON_MAX_M + 1,
                                    64, 64, every) == "cublas"


def test_table_round_trip_and_format_check(tmp_path, monkeypatch):
    path = tmp_path / "table.json"
    monkeypatch.setenv("SPARSEKIT_SPARSE24_TABLE", str(path))
    sparse24_dispatch.reload_table()
    try:
        assert sparse24_dispatch.load_table()["devices"] == {}
        sparse24_dispatch.write_table(fake_table())
        sparse24_dispatch.reload_table()
        assert sparse24_dispatch.load_table() == json.loads(json.dumps(fake_table()))
        assert sparse24_dispatch._alg_id(DEVICE_NAME, torch.bfloat16, 300, 4096, 4096) == 3
        assert sparse24_dispatch._alg_id(DEVICE_NAME, torch.bfloat16, 3000, 4096, 4096) == 5
        assert sparse24_dispatch._alg_id(DEVICE_NAME, torch.bfloat16, 300, 4096, 11008) == 0  # not this exact shape
        path.write_text(json.dumps({"format": "something else"}))
        sparse24_dispatch.reload_table()
        with pytest.raises(ValueError, match="not a sparse24_matmul tuning table"):
            sparse24_dispatch.load_table()
    finally:
        monkeypatch.delenv("SPARSEKIT_SPARSE24_TABLE")
        sparse24_dispatch.reload_table()


def _fake_chooser(device, x, *rest):
    return {"big": "triton", "missing": "cuda", "none": None}[x]


@pytest.fixture
def fake_op(monkeypatch):
    monkeypatch.setitem(backend.IMPLEMENTATIONS, "fake_op", {"torch": "builtins:len", "triton": "builtins:abs", "cuda": "builtins:id"})
    monkeypatch.setitem(backend.AUTO_CHOOSERS, "fake_op", f"{__name__}:_fake_chooser")
    return "fake_op"


@needs_triton
def test_resolve_consults_the_chooser(fake_op, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton counts as available on CPU tensors
    assert backend.resolve(fake_op, None, "cpu", ("big",))[0] == "triton"
    assert backend.resolve(fake_op, None, "cpu", ("missing",))[0] == "torch"  # unavailable pick: default order
    assert backend.resolve(fake_op, None, "cpu", ("none",))[0] == "torch"
    assert backend.resolve(fake_op, "torch", "cpu", ("big",))[0] == "torch"  # explicit beats the chooser
    monkeypatch.setenv("SPARSEKIT_BACKEND", "torch")
    assert backend.resolve(fake_op, None, "cpu", ("big",))[0] == "torch"  # the override beats the chooser


def test_chooser_leaves_cpu_to_the_default_order():
    x = torch.randn(2, 64)
    assert sparse24_dispatch.choose_backend("cpu", x, torch.zeros(32, 32)) is None
    w = random_24(32, 64, torch.float32)
    values, meta = ops.compress_24(w)
    assert backend.resolve("sparse24_matmul", None, "cpu", (x, values, meta, None))[0] == "torch"
