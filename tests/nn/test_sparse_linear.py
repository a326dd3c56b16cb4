"""SparseLinear24: from a pruned Linear, exact forward, state dict, to_dense, compile, refusals."""
import os

import pytest
import torch
from torch import nn

from sparsekit.nn import SparseLinear24
from sparsekit.ops.sparse24_launch import sparse24_matmul_op as _sparse24_matmul_op

from tests.helpers import needs_cuda

# ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU (the emulation of a CPU without native bf16) makes inductor's
# 512-bit vectorised GELU disagree with eager (measured: 0.43 max error; correct with cpp.simdlen 0 or 256,
# which is what a real AVX2 CPU gets): a torch artifact of the emulation, not of this op.
not_under_isa_emulation = pytest.mark.skipif(
    bool(os.environ.get("ATEN_CPU_CAPABILITY")), reason="inductor's CPU vector width ignores ATEN_CPU_CAPABILITY")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def pruned_linear(k, n, dtype=torch.float32, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias).to(dtype)
    w = lin.weight.data.view(n, k // 4, 4)
    keep = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, w.float().abs().topk(2, -1).indices, True)
    lin.weight.data.mul_(keep.view(n, k))  # negative pruned weights become -0.0
    return lin


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_equals_pruned_linear(dtype, bias):
    lin = pruned_linear(128, 64, dtype, bias)
    sparse = SparseLinear24.from_linear(lin)
    for shape in [(1, 128), (3, 128), (2, 17, 128)]:
        x = torch.randn(shape).to(dtype)
        assert torch.equal(sparse(x), lin(x).detach())
    assert sparse.values.dtype == dtype and sparse.meta.dtype == torch.int16
    assert (sparse.bias is None) == (not bias)


def test_state_dict_holds_only_compressed_tensors():
    lin = pruned_linear(256, 96, torch.bfloat16)
    sparse = SparseLinear24.from_linear(lin)
    state = sparse.state_dict()
    assert set(state) == {"values", "meta", "bias"}
    assert state["values"].shape == (96, 128) and state["meta"].shape == (96, 16)
    assert sparse.compressed_bytes() / (lin.weight.numel() * 2) == 0.5625
    fresh = SparseLinear24(256, 96, bias=True, dtype=torch.bfloat16)
    fresh.load_state_dict(state)
    x = torch.randn(5, 256, dtype=torch.bfloat16)
    assert torch.equal(fresh(x), sparse(x))


def test_to_dense_and_dtype_moves():
    lin = pruned_linear(128, 32)
    sparse = SparseLinear24.from_linear(lin)
    dense = sparse.to_dense()
    assert isinstance(dense, nn.Linear)
    assert torch.equal(dense.weight, lin.weight) and torch.equal(dense.bias, lin.bias)
    half = sparse.to(torch.float16)
    assert half.values.dtype == torch.float16 and half.meta.dtype == torch.int16
    x = torch.randn(4, 128)
    torch.testing.assert_close(half(x.half()).float(), lin(x).detach(), atol=2e-2, rtol=1e-2)


def test_conv1d_layers_round_trip():
    from transformers.pytorch_utils import Conv1D

    lin = pruned_linear(64, 96, bias=True)
    conv = Conv1D(96, 64)
    conv.weight.data = lin.weight.data.t().contiguous()
    conv.bias.data = lin.bias.data.clone()
    sparse = SparseLinear24.from_linear(conv)
    x = torch.randn(3, 64)
    assert torch.equal(sparse(x), lin(x).detach())
    back = sparse.to_dense()
    assert type(back).__name__ == "Conv1D" and torch.equal(back.weight, conv.weight)


def test_extra_repr():
    text = repr(SparseLinear24.from_linear(pruned_linear(128, 64, torch.float16)))
    assert "in_features=128, out_features=64, bias=True" in text and "0.5625x dense" in text


def test_refusals_name_the_layer():
    dense = nn.Linear(128, 64)
    with pytest.raises(ValueError, match="layer 'model.layers.3.mlp.up_proj' weight is not 2:4 sparse"):
        SparseLinear24.from_linear(dense, name="model.layers.3.mlp.up_proj")
    with pytest.raises(ValueError, match="'q'.*out_features N=48.*pad 16 zero rows"):
        SparseLinear24.from_linear(pruned_linear(128, 48), name="q")
    with pytest.raises(TypeError, match="'emb' is a Embedding, not an nn.Linear"):
        SparseLinear24.from_linear(nn.Embedding(4, 64), name="emb")
    with pytest.raises(TypeError, match="float64"):
        SparseLinear24.from_linear(pruned_linear(128, 32).double(), name="d")
    with pytest.raises(ValueError, match="meta device"):
        SparseLinear24.from_linear(nn.Linear(128, 32, device="meta"), name="m")
    with pytest.raises(ValueError, match="pad 32 zero columns"):
        SparseLinear24(96, 32)
    lin = pruned_linear(128, 32)
    sparse = SparseLinear24.from_linear(lin)
    with pytest.raises(TypeError, match="cast x"):
        sparse(torch.randn(2, 128, dtype=torch.float16))


def test_custom_op_passes_opcheck():
    sparse = SparseLinear24.from_linear(pruned_linear(128, 64, torch.float32))
    x = torch.randn(5, 128)
    torch.library.opcheck(_sparse24_matmul_op, (x, sparse.values, sparse.meta, sparse.bias, None))
    torch.library.opcheck(_sparse24_matmul_op, (x, sparse.values, sparse.meta, None, "torch"))


@not_under_isa_emulation
def test_torch_compile_fullgraph_on_cpu():
    torch._dynamo.reset()
    model = nn.Sequential(SparseLinear24.from_linear(pruned_linear(128, 256)), nn.GELU(),
                          SparseLinear24.from_linear(pruned_linear(256, 128, seed=1)))
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for m in (1, 7, 16):
        x = torch.randn(2, m, 128)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


@needs_cuda
def test_cuda_graph_capture_and_no_host_sync():
    sparse = SparseLinear24.from_linear(pruned_linear(256, 128, torch.bfloat16)).cuda()
    x = torch.randn(4, 256, dtype=torch.bfloat16, device="cuda")
    expected = sparse(x)
    torch.cuda.set_sync_debug_mode("error")
    try:
        sparse(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        sparse(x)  # warm-up outside the graph (autotuning, lazy imports)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sparse(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, sparse(x), atol=0, rtol=0)
    assert not torch.equal(out, expected)


# ------------------------------------------------------------------------------------------------
# launch plans, validation once, torch.compile of a whole model, CUDA graphs

def sparsified_tiny_llama(dtype=torch.float32):
    """tiny_llama with every block Linear 2:4-pruned by magnitude and swapped for a SparseLinear24."""
    from sparsekit import ops
    from sparsekit.hf.sparsify import sparsify
    from tests.helpers import tiny_llama

    model = tiny_llama().to(dtype)
    dense = tiny_llama().to(dtype)
    with torch.no_grad():
        for (name, module), (_, twin) in zip(model.named_modules(), dense.named_modules()):
            if isinstance(module, nn.Linear) and name != "lm_head":
                module.weight.mul_(ops.select_mask(ops.magnitude_score(module.weight), None, 2, 4))
                twin.weight.copy_(module.weight)
    report = sparsify(model)
    assert len(report.swapped) == 14  # 2 blocks x (q, k, v, o, gate, up, down)
    return model, dense


def count_plan_builds(monkeypatch):
    from sparsekit.ops import sparse24_launch

    built = []
    real = sparse24_launch.build_plan

    def spy(x2d, values, meta, bias, backend, perm=None):
        built.append(x2d.shape[0])
        return real(x2d, values, meta, bias, backend, perm)

    monkeypatch.setattr(sparse24_launch, "build_plan", spy)
    sparse24_launch.clear_plans()
    return built


def test_plans_are_built_once_per_m_bucket_and_stay_exact(monkeypatch):
    built = count_plan_builds(monkeypatch)
    lin = pruned_linear(128, 64, torch.float32)
    sparse = SparseLinear24.from_linear(lin)
    twin = SparseLinear24.from_linear(pruned_linear(128, 64, torch.float32))  # same shape: shares the plans
    for m in (1, 3, 4, 2, 16, 9, 17, 3, 1, 600, 513):
        x = torch.randn(m, 128)
        assert torch.equal(sparse(x), lin(x).detach())
        twin(x)
    assert built == [1, 3, 2, 16, 17, 600]  # buckets 1, 4, 2, 16, 32, 512 (M > 512 shares the last)
    assert sparse(torch.randn(0, 128)).shape == (0, 64)


def test_dtype_and_state_changes_invalidate_plans(monkeypatch):
    built = count_plan_builds(monkeypatch)
    lin = pruned_linear(128, 64, torch.float32)
    sparse = SparseLinear24.from_linear(lin)
    x = torch.randn(2, 128)
    sparse(x)
    sparse.to(torch.bfloat16)
    out = sparse(x.bfloat16())
    assert out.dtype == torch.bfloat16 and len(built) == 2
    torch.testing.assert_close(out.float(), lin(x).detach(), atol=0.1, rtol=0.05)
    with pytest.raises(TypeError, match="cast x"):  # the old dtype is refused, not run on a stale plan
        sparse(x)
    other = pruned_linear(128, 64, torch.bfloat16, seed=7)
    sparse.load_state_dict(SparseLinear24.from_linear(other).state_dict())
    assert torch.equal(sparse(x.bfloat16()), other(x.bfloat16()).detach())
    sparse.bias = None  # assignment drops the plans too
    assert torch.equal(sparse(x.bfloat16()), F_linear_no_bias(other, x.bfloat16()))
    builds = len(built)
    sparse.backend = "torch"  # so does choosing another backend
    sparse(x.bfloat16())
    assert len(built) == builds + 1


def F_linear_no_bias(linear, x):
    return torch.nn.functional.linear(x, linear.weight.detach())


def test_bad_buffers_are_rejected_at_load():
    sparse = SparseLinear24.from_linear(pruned_linear(128, 64))
    good = {name: t.clone() for name, t in sparse.state_dict().items()}
    corrupt = {**good, "meta": torch.full_like(good["meta"], 0x5555)}  # every group stores column 1 twice
    with pytest.raises(ValueError, match="meta is corrupt"):
        sparse.load_state_dict(corrupt)
    with pytest.raises(ValueError, match="meta is corrupt"):  # the rejected tensors were copied in: refuse to run
        sparse(torch.randn(1, 128))
    sparse.load_state_dict(good)
    sparse(torch.randn(1, 128))
    with pytest.raises(RuntimeError, match="size mismatch"):
        sparse.load_state_dict({**good, "values": good["values"][:, :32]})
    fresh = SparseLinear24(128, 64)
    with pytest.raises(TypeError, match="meta must be int16"):
        fresh.load_state_dict({**good, "meta": good["meta"].int()}, assign=True)
    with pytest.raises(ValueError, match="bias must be"):
        fresh.load_state_dict({**good, "bias": good["bias"].half()}, assign=True)
    with pytest.raises(TypeError, match="float64"):
        SparseLinear24.from_linear(pruned_linear(128, 64)).double()


def test_deepcopy_and_non_contiguous_buffers():
    import copy

    lin = pruned_linear(128, 64)
    sparse = SparseLinear24.from_linear(lin)
    x = torch.randn(3, 128)
    sparse(x)
    clone = copy.deepcopy(sparse)
    assert torch.equal(clone(x), sparse(x)) and clone.values.data_ptr() != sparse.values.data_ptr()
    wide = torch.zeros(64, 128)
    wide[:, ::2] = sparse.values  # a strided view as the values buffer
    sparse.load_state_dict({**sparse.state_dict(), "values": wide[:, ::2]}, assign=True)
    assert sparse.values.is_contiguous()
    assert torch.equal(sparse(x), lin(x).detach())


@not_under_isa_emulation
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_fullgraph_compile_of_a_sparsified_model_matches_eager(device):
    torch._dynamo.reset()
    model, dense = sparsified_tiny_llama()
    model, dense = model.to(device), dense.to(device)
    ids = torch.randint(0, 256, (2, 11), device=device)
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model, fullgraph=True)(ids).logits
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eager, dense(ids).logits.detach(), atol=1e-3, rtol=1e-3)


@needs_cuda
@pytest.mark.parametrize("batch", [1, 16])
def test_cuda_graph_replay_gives_the_eager_tokens(batch):
    """A small 2:4 LM head stack: replaying a captured graph on new tokens gives eager's tokens exactly."""
    torch.manual_seed(0)
    layers = [SparseLinear24.from_linear(pruned_linear(k, n, torch.bfloat16, seed=i)).cuda()
              for i, (k, n) in enumerate([(1024, 4096), (4096, 1024), (1024, 512)])]
    model = nn.Sequential(nn.Embedding(512, 1024), layers[0], nn.GELU(), layers[1], nn.GELU(), layers[2])
    model = model.to(device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, 512, (batch,), device="cuda")
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            model(ids)  # warm-up outside capture: builds the plans (autotuning, compilation, workspace)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model(ids)
        for _ in range(3):
            ids.copy_(torch.randint(0, 512, (batch,), device="cuda"))
            graph.replay()
            torch.cuda.synchronize()
            eager = model(ids)
            torch.testing.assert_close(captured, eager)  # split-K atomics may add in another order
            assert torch.equal(captured.argmax(-1), eager.argmax(-1))
