"""sp24_decode, sp24_decompress and the CUDA providers on a GPU (skipped without one).

Every output is poisoned before the call (a NaN block of its size left in the caching allocator), and
checked against an fp32 reference: relative error (Frobenius) <= 1e-2 and max error within twice torch's
own same-precision error plus a floor. SPARSEKIT_REQUIRE_CUDA_EXT=1 turns a missing extension into a failure.
"""

import pytest
import torch
import torch.nn.functional as F

from sparsekit import ops
from sparsekit.cuda_backend import sp24_decode_ref as ref
from tests.helpers import needs_cuda, require_cuda_extension

pytestmark = needs_cuda

ISSUE_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096)]
ODD_SHAPES = [(32, 64), (96, 192), (160, 4160), (288, 576), (4128, 320)]  # tails in rows and in K


def random_24(n, k, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=g)
    keep = w.abs().view(n, k // 4, 4).topk(2, dim=-1).indices
    mask = torch.zeros(n, k // 4, 4, dtype=torch.bool, device="cuda").scatter_(-1, keep, True).view(n, k)
    return (w * mask).to(dtype)


def poison(m, n, dtype):
    torch.empty(m, n, dtype=dtype, device="cuda").fill_(float("nan"))


def check(out, x, w, bias):
    ref32 = x.float() @ w.float().t() + (bias.float() if bias is not None else 0)
    assert out.shape == ref32.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all(), "non-finite output: an element was not written"
    rel = ((out.float() - ref32).norm() / ref32.norm().clamp_min(1e-30)).item()
    assert rel <= 1e-2, f"relative error {rel:.3g}"
    same = F.linear(x, w, bias).float()
    base = (same - ref32).abs().max().item()
    err = (out.float() - ref32).abs().max().item()
    assert err <= 2 * base + 4e-3 * ref32.abs().max().item(), f"max error {err:.3g} vs torch's {base:.3g}"


def decode(x, values, meta, bias=None, **kw):
    from sparsekit.cuda_backend.sparse24 import sparse24_decode

    return sparse24_decode(x, values, meta, bias, **kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(256, 1024), (160, 4160)])
def test_every_m_from_1_to_64(shape, dtype):
    require_cuda_extension()
    n, k = shape
    w = random_24(n, k, dtype, seed=n)
    values, meta = ops.compress_24(w)
    for m in range(1, 65):
        x = torch.randn(m, k, device="cuda").to(dtype)
        bias = torch.randn(n, device="cuda").to(dtype) if m % 2 else None
        poison(m, n, dtype)
        check(decode(x, values, meta, bias), x, w, bias)


@pytest.mark.parametrize("shape", ISSUE_SHAPES + ODD_SHAPES)
@pytest.mark.parametrize("m", [1, 2, 4, 16, 33, 64])
def test_issue_and_odd_shapes(shape, m):
    require_cuda_extension()
    n, k = shape
    w = random_24(n, k, torch.bfloat16, seed=m + n)
    values, meta = ops.compress_24(w)
    x = torch.randn(m, k + 64, device="cuda").to(torch.bfloat16)[:, 32:32 + k]  # row stride > K
    poison(m, n, torch.bfloat16)
    check(decode(x, values, meta), x, w, None)


@pytest.mark.parametrize("rows", [128, 256])
@pytest.mark.parametrize("stages", [2, 3, 4])
@pytest.mark.parametrize("m", [1, 9, 40])
def test_every_configuration(rows, stages, m):
    require_cuda_extension()
    n, k = 1024, 2048
    w = random_24(n, k, torch.bfloat16, seed=rows + stages)
    values, meta = ops.compress_24(w)
    x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    try:
        out = decode(x, values, meta, rows=rows, stages=stages)
    except RuntimeError as exc:
        if "shared memory" in str(exc):
            pytest.skip(f"{stages} stages of {rows} rows exceed this GPU's shared memory")
        raise
    check(out, x, w, None)


def test_deterministic_and_workspace_left_clean():
    ext = require_cuda_extension()
    from sparsekit.cuda_backend.sparse24 import decode_workspace

    n, k = 4096, 4096
    w = random_24(n, k, torch.bfloat16, seed=7)
    values, meta = ops.compress_24(w)
    x = torch.randn(16, k, device="cuda").to(torch.bfloat16)
    first = decode(x, values, meta)
    for _ in range(5):
        assert torch.equal(decode(x, values, meta), first), "the split reduction must be bitwise repeatable"
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    ws = decode_workspace(x.device)
    assert ws.numel() == ext.sp24_decode_workspace_bytes(sms) == ref.workspace_bytes(sms)
    assert not ws[: ext.sp24_decode_flag_bytes(sms)].any(), "every flag must be back at zero after a call"


def test_cuda_graph_replay_matches_eager():
    require_cuda_extension()
    n, k = 11008, 4096
    weights = [ops.compress_24(random_24(n, k, torch.bfloat16, seed=s)) for s in range(3)]
    x = torch.randn(4, k, device="cuda").to(torch.bfloat16)
    eager = [decode(x, v, m) for v, m in weights]  # also creates the workspace before capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        decode(x, *weights[0])  # this stream's workspace, outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            outs = [decode(x, v, m) for v, m in weights]
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        for got, want in zip(outs, eager):
            assert torch.equal(got, want)


def test_op_has_a_meta_kernel_and_refuses_bad_input_clearly():
    require_cuda_extension()
    x = torch.empty(8, 256, dtype=torch.bfloat16, device="meta")
    values = torch.empty(64, 128, dtype=torch.bfloat16, device="meta")
    meta = torch.empty(64, 16, dtype=torch.int16, device="meta")
    ws = torch.empty(16, dtype=torch.uint8, device="meta")
    assert torch.ops.sparsekit.sp24_linear(x, values, meta, None, ws).shape == (8, 64)
    w = random_24(64, 256, torch.bfloat16, seed=0)
    v, mt = ops.compress_24(w)
    with pytest.raises(RuntimeError, match="M must be <= 64"):
        decode(torch.randn(65, 256, device="cuda").to(torch.bfloat16), v, mt)
    with pytest.raises(RuntimeError, match="workspace has"):
        torch.ops.sparsekit.sp24_linear(torch.randn(2, 256, device="cuda").to(torch.bfloat16), v, mt, None,
                                        torch.zeros(16, dtype=torch.uint8, device="cuda"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(32, 64), (160, 4160), (4096, 11008)])
def test_decompress_kernel_matches_torch(shape, dtype):
    require_cuda_extension()
    w = random_24(*shape, dtype, seed=shape[0])
    values, meta = ops.compress_24(w)
    out = torch.full(shape, float("nan"), dtype=dtype, device="cuda")
    torch.ops.sparsekit.sp24_decompress(values, meta, out)
    assert torch.equal(out, w)


def test_cublas_provider_keeps_one_scratch_not_a_copy_per_weight():
    from sparsekit.cuda_backend import sparse24 as providers

    providers.clear_prepared_cache()
    shapes = [(4096, 4096), (11008, 4096), (4096, 4096)]
    x = {k: torch.randn(300, k, device="cuda").to(torch.bfloat16) for _, k in shapes}
    for i, (n, k) in enumerate(shapes):
        w = random_24(n, k, torch.bfloat16, seed=i)
        values, meta = ops.compress_24(w)
        poison(300, n, torch.bfloat16)
        check(providers.sparse24_matmul_cublas(x[k], values, meta, None), x[k], w, None)
    assert providers.scratch_bytes() == 11008 * 4096 * 2, "one scratch, grown to the largest weight"


@pytest.mark.parametrize("m", [1, 64, 65, 300])
def test_cuda_provider_routes_by_m(m):
    require_cuda_extension()
    from sparsekit.cuda_backend.sparse24 import sparse24_matmul_cuda

    n, k = 512, 1024
    w = random_24(n, k, torch.float16, seed=m)
    values, meta = ops.compress_24(w)
    x = torch.randn(m, k, device="cuda").half()
    bias = torch.randn(n, device="cuda").half()
    poison(m, n, torch.float16)
    check(sparse24_matmul_cuda(x, values, meta, bias), x, w, bias)
