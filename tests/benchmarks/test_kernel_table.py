"""bench_kernels --write-table: the dispatcher table from benchmark rows, merged per device; host timing."""
import json

import pytest
import torch

from benchmarks import bench_kernels, cli
from benchmarks.schema import BenchRow
from benchmarks.timing import host_us_per_call


def row(provider, m, us, device="GPU A", n=4096, k=4096, status="ok", kind="cuda", quick=False):
    return BenchRow(benchmark="kernels", case=f"sparse24_matmul/{n}x{k}/M={m}", provider=provider, metric="time", unit="ms",
                    median=us / 1e3, p20=us / 1e3, p80=us / 1e3, params={"N": n, "K": k, "M": m, "dtype": "bfloat16"},
                    status=status, device=device, device_kind=kind, quick=quick, torch="2.11", command="cmd",
                    timestamp="2026-11-29T00:00:00")


def test_table_keeps_only_dispatcher_providers_and_replaces_only_measured_devices(tmp_path):
    path = tmp_path / "table.json"
    rows = [row("dense", 1, 12.5), row("cublas", 1, 14.0), row("cuda", 1, 7.0), row("triton", 1, 11.0),
            row("cusparselt", 1, 5.0), row("cuda-r128", 1, 6.0), row("auto", 1, 7.1),
            row("cuda", 2, 1.0, status="error"), row("cublas", 2, 14.0),
            row("cublas", 1, 9.0, device="cpu", kind="cpu"), row("cublas", 1, 9.0, device="GPU Q", quick=True)]
    written, entries = bench_kernels.merge_tuning_table(rows, path)
    table = json.loads(written.read_text())
    assert set(table["devices"]) == {"GPU A"} and entries == 2
    by_m = {e["M"]: e for e in table["devices"]["GPU A"]["entries"]}
    assert set(by_m[1]["times_us"]) == {"dense_ref", "cublas", "cuda", "triton"}, "cuSPARSELt and variants stay out"
    assert by_m[1]["best"] == "cuda" and by_m[1]["times_us"]["cuda"] == pytest.approx(7.0)
    assert "cuda" not in by_m[2]["times_us"], "failed rows never enter the table"
    assert table["devices"]["GPU A"]["command"] == "cmd"
    bench_kernels.merge_tuning_table([row("cublas", 1, 20.0, device="GPU B")], path)
    table = json.loads(path.read_text())
    assert set(table["devices"]) == {"GPU A", "GPU B"}


def test_write_table_refuses_cpu_runs(tmp_path, capsys):
    path = tmp_path / "t.json"
    assert cli.main(["kernels", "--quick", "--ops", "matmul", "--results-dir", str(tmp_path / "r"),
                     "--write-table", str(path)]) == 0
    assert not path.exists()
    assert "needs rows measured on a CUDA device" in capsys.readouterr().out


def test_host_time_per_call_counts_the_python_cost():
    calls = []
    us = host_us_per_call(lambda: calls.append(sum(range(2000))), "cpu", calls=50)
    assert len(calls) == 50 and us > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph timing needs a GPU")
def test_cudagraph_timer_on_gpu():
    from benchmarks.timing import time_cudagraph

    a = torch.randn(1024, 1024, device="cuda")
    t = time_cudagraph(lambda: a @ a, "cuda", rep_ms=2)
    assert 0 < t.p20_ms <= t.median_ms <= t.p80_ms and t.method.startswith("cudagraph")
