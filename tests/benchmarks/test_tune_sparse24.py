"""benchmarks/tune_sparse24.py: a CPU smoke run of the whole script, and the table merge it does on GPU."""
import json

import pytest
import torch

from benchmarks import tune_sparse24
from sparsekit.cuda_backend import sparse24_dispatch
from tests.helpers import needs_triton

ROW_KEYS = {"benchmark", "case", "provider", "M", "N", "K", "dtype", "median_us", "p20_us", "p80_us", "device",
            "torch", "triton", "cuda", "command"}


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run; on GPU the real run is gpu_sparse24.sh")
def test_smoke_run_on_cpu_writes_rows(tmp_path):
    rows_path = tmp_path / "rows.jsonl"
    rc = tune_sparse24.main(["--device", "cpu", "--shapes", "32x64", "--ms", "1,3", "--rep-ms", "1",
                             "--jsonl", str(rows_path), "--table", str(tmp_path / "table.json")])
    assert rc == 0
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert {(r["M"], r["provider"]) for r in rows} == {(m, p) for m in (1, 3) for p in ["dense", *tune_sparse24.PROVIDERS]}
    for row in rows:
        assert ROW_KEYS <= set(row)
        if row["provider"] in ("dense", "triton"):
            assert row["status"] == "ok" and row["rel_err"] < tune_sparse24.REL_TOL and row["median_us"] > 0
        else:  # CUDA-only providers: kept as skipped rows with the reason
            assert row["status"] == "skipped" and "CUDA" in row["reason"]
    assert not (tmp_path / "table.json").exists()  # a CPU run never writes a dispatcher table


def test_merge_table_replaces_only_the_measured_shapes(tmp_path):
    path = tmp_path / "table.json"
    env = {"torch": "t", "triton": "tr", "cuda": "c", "command": "cmd"}

    def entry(n, m, t):
        return {"dtype": "bfloat16", "N": n, "K": 64, "M": m, "times_us": {"cublas": t, "triton": t / 2}, "best": "triton"}

    try:
        tune_sparse24.merge_table(path, "GPU A", [entry(32, 1, 10.0), entry(64, 1, 20.0)], env)
        tune_sparse24.merge_table(path, "GPU A", [entry(32, 1, 5.0), entry(32, 8, 6.0)], env)
        tune_sparse24.merge_table(path, "GPU B", [entry(32, 1, 7.0)], env)
        table = json.loads(path.read_text())
        assert table["format"] == sparse24_dispatch.TABLE_FORMAT
        a = {(e["N"], e["M"]): e["times_us"]["cublas"] for e in table["devices"]["GPU A"]["entries"]}
        assert a == {(64, 1): 20.0, (32, 1): 5.0, (32, 8): 6.0}
        assert table["devices"]["GPU A"]["command"] == "cmd"
        assert [e["times_us"]["cublas"] for e in table["devices"]["GPU B"]["entries"]] == [7.0]
    finally:
        sparse24_dispatch.reload_table()
