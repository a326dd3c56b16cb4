"""sparsekit.backend, the dispatcher: resolution and its errors, register(), triton_interpreting() read at call
time, and the fallback: an automatic backend whose kernel fails to compile falls back (warned once, remembered);
an explicit one raises.

The failure is real: the Triton kernel is replaced by one that reads a non-constexpr global (the bug the
DSnoT exact kernel had), compiled for GPUTarget("cuda", 90, 32) by Triton's own compiler on this CPU.
"""
import warnings

import pytest
import torch

import sparsekit
from sparsekit import backend, ops
from sparsekit.pruning import PruneConfig
from tests.helpers import needs_triton, tiny_llama

tl = pytest.importorskip("triton.language")
NOT_CONSTEXPR = 2**30


def _reads_a_plain_global(out_ptr):  # compiled below; the compiler rejects NOT_CONSTEXPR
    tl.store(out_ptr, NOT_CONSTEXPR)


class CompilesForGpu:
    """Stands in for a launched kernel: `kernel[grid](...)` compiles the broken source for an H100."""

    def __init__(self):
        self.launches = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            import triton
            from triton.backends.compiler import GPUTarget
            from triton.compiler import ASTSource
            from triton.runtime.jit import JITFunction

            self.launches += 1
            src = ASTSource(JITFunction(_reads_a_plain_global), {"out_ptr": "*i32"}, {})
            triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": True})
            raise AssertionError("the broken kernel compiled")
        return launch


@pytest.fixture
def auto_triton_then_torch(monkeypatch):
    """On CPU the automatic order is torch only; make it Triton (interpreted) first, with a fresh memory."""
    pytest.importorskip("triton.backends.nvidia")
    monkeypatch.setattr(backend, "auto_order", lambda device: ("triton", "torch"))
    monkeypatch.setattr(backend, "_FAILED", {})
    from sparsekit.triton_kernels import selection

    broken = CompilesForGpu()
    monkeypatch.setattr(selection, "_row_select_kernel", broken)
    return broken


@needs_triton
def test_auto_choice_falls_back_once_with_a_warning_naming_kernel_and_error(auto_triton_then_torch):
    gen = torch.Generator().manual_seed(0)
    weight, sq_norm = torch.randn(7, 37, generator=gen), torch.rand(37, generator=gen)
    before = backend.usage()
    with pytest.warns(RuntimeWarning) as caught:
        got = ops.wanda_mask(weight, sq_norm, 0.5)
    message = " ".join(str(w.message) for w in caught if w.category is RuntimeWarning)
    assert "'wanda_mask'" in message and "_reads_a_plain_global" in message and "NOT_CONSTEXPR" in message, message
    assert torch.equal(got, ops.wanda_mask(weight, sq_norm, 0.5, backend="torch"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: no second warning, no second compile
        ops.wanda_mask(weight, sq_norm, 0.3)
    assert auto_triton_then_torch.launches == 1
    assert backend.usage_since(before) == {"wanda_mask": {"torch": 3}}
    assert list(backend.fallbacks()) == ["wanda_mask/triton"]
    assert "CompilationError" in backend.fallbacks()["wanda_mask/triton"]


@needs_triton
def test_explicit_backend_still_raises(auto_triton_then_torch):
    from triton.compiler.errors import CompilationError

    with pytest.raises(CompilationError):
        ops.wanda_mask(torch.randn(4, 16), torch.rand(16), 0.5, backend="triton")
    assert backend.fallbacks() == {}


@needs_triton
def test_wrong_inputs_are_not_kernel_failures(auto_triton_then_torch):
    with pytest.raises(ValueError):
        ops.wanda_mask(torch.randn(4, 16), torch.rand(16), 1.5)
    assert backend.fallbacks() == {}
    assert not backend._is_kernel_failure(ValueError("bad sparsity"))
    assert not backend._is_kernel_failure(torch.OutOfMemoryError("CUDA out of memory"))
    assert backend._is_kernel_failure(RuntimeError("CUDA error: no kernel image is available for execution on the device"))


@needs_triton
def test_prune_report_records_the_backend_that_ran_and_the_fallback(auto_triton_then_torch):
    model = tiny_llama(layers=2)
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning):
        report = sparsekit.prune(model, ids, PruneConfig(method="wanda", sparsity=0.5, batch_size=4))
    assert report.backends["wanda_mask"] == {"torch": 14}  # 7 linears x 2 blocks, all on the fallback
    assert list(report.fallbacks) == ["wanda_mask/triton"]
    again = type(report).from_dict(report.to_dict())
    assert again.backends == report.backends and again.fallbacks == report.fallbacks


def test_resolve_explicit_auto_and_errors():
    name, impl = backend.resolve("select_mask", None, "cpu")
    assert name == "torch" and impl.__module__ == "sparsekit.torch_backend.selection"
    with pytest.raises(KeyError, match="unknown op 'no_such_op'"):
        backend.resolve("no_such_op", None, "cpu")
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        backend.resolve("select_mask", "tpu", "cpu")
    with pytest.raises(NotImplementedError, match="'wanda_score' has no triton backend"):
        backend.resolve("wanda_score", "triton", "cpu")
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run 'sparse24_matmul': the CUDA backend needs CUDA tensors"):
        backend.resolve("sparse24_matmul", "cuda", "cpu")


def test_forced_backend_from_the_environment(monkeypatch):
    monkeypatch.setenv("SPARSEKIT_BACKEND", "torch")
    assert backend.auto_order(torch.device("cuda")) == ("torch",)
    monkeypatch.delenv("SPARSEKIT_BACKEND")
    assert backend.auto_order(torch.device("cuda")) == ("cuda", "triton", "torch")
    assert backend.auto_order(torch.device("cpu")) == ("torch",)


def _doubled_magnitude(weight):
    return weight.float().abs() * 2


def test_register_adds_an_implementation_that_call_runs(monkeypatch):
    monkeypatch.setattr(backend, "IMPLEMENTATIONS", {op: dict(impls) for op, impls in backend.IMPLEMENTATIONS.items()})
    backend.register("magnitude_x2", "torch", f"{__name__}:_doubled_magnitude")
    w = torch.randn(3, 5)
    assert torch.equal(backend.call("magnitude_x2", None, w.device, w), w.abs() * 2)
    backend.register("select_mask", "torch", f"{__name__}:_doubled_magnitude")  # replaces, and the cache forgets the old one
    assert backend.resolve("select_mask", "torch", "cpu")[1] is _doubled_magnitude
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        backend.register("magnitude_x2", "gpu", f"{__name__}:_doubled_magnitude")
    backend._load.cache_clear()


def test_triton_interpreting_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not backend.triton_interpreting()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.triton_interpreting()


@needs_triton
def test_besa_kernel_upcasts_only_under_the_interpreter_or_for_float64(monkeypatch):
    from sparsekit.triton_kernels import besa_masked_linear

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not besa_masked_linear._upcast(torch.bfloat16) and besa_masked_linear._upcast(torch.float64)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert besa_masked_linear._upcast(torch.bfloat16)
