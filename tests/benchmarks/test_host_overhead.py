"""benchmarks/bench_host_overhead.py on CPU: the emulated CUDA launch path runs and rows follow the schema."""
import pytest
import torch

from benchmarks import cli, schema
from tests.helpers import needs_triton


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU emulation; on GPU the launches are real")
def test_host_overhead_quick_run_writes_paired_rows(tmp_path):
    assert cli.main(["host-overhead", "--quick", "--results-dir", str(tmp_path), "--host-calls", "50",
                     "--host-repeats", "2", "--generate-tokens", "2"]) == 0
    files = list(tmp_path.glob("cpu-*/quick/host-overhead.jsonl"))
    assert len(files) == 1
    rows = {(r.case, r.provider): r for r in schema.load_rows(files[0])}
    for m in (1, 16):
        dense, ours = rows[(f"forward/32x64/M={m}", "nn.Linear")], rows[(f"forward/32x64/M={m}", "SparseLinear24")]
        assert dense.status == ours.status == "ok", ours.reason
        assert ours.unit == "us" and ours.median > 0 and "stubbed" in ours.params["launch"]
        assert isinstance(ours.derived["over_linear_us"], float)
        permuted = rows[(f"forward/32x64/M={m}", "SparseLinear24+perm")]
        assert permuted.status == "ok" and permuted.median > 0 and isinstance(permuted.derived["over_linear_us"], float)
        assert ours.device_kind == "cpu" and ours.torch == torch.__version__ and ours.triton
    generate = {p: rows[("generate/tiny-llama/batch=1", p)] for p in ("dense", "2:4")}
    assert all(r.status == "ok" and r.median > 0 for r in generate.values())


def test_emulated_launch_runs_the_real_plan_code():
    from benchmarks.bench_host_overhead import _layers, emulated_cuda_launch

    linear, sparse = _layers(64, 128, torch.float32, torch.device("cpu"))
    x = torch.randn(3, 128)
    with torch.no_grad(), emulated_cuda_launch() as stub:
        torch.testing.assert_close(sparse(x), linear(x))  # the first call's output comes from the reference
        sparse(x)
        sparse(x.view(1, 3, 128))
        assert stub.launches == 2
        assert stub.launcher in ("Triton CudaLauncher.__call__, C launch stubbed", "bare no-op")  # recorded in rows
    sparse.to(torch.float32)  # drops the module's (stub) plans
    torch.testing.assert_close(sparse(x), linear(x))
    assert stub.launches == 2
