"""Accuracy rows of a second model (issue 13: Gemma 3 beside SmolLM2) never mix into one table: a marker without
model= keeps showing the harness's default model, and model=... shows the other one."""
from benchmarks import schema, tables

CPU = dict(device="CPU: x (2 threads visible, torch uses 1)", device_kind="cpu", torch="2.13.0", triton="3.9.0", cuda=None,
           git_commit="abc123", command="python -m benchmarks accuracy", timestamp="2026-11-29T10:00:00+00:00",
           p20=None, p80=None, unit="")


def _acc(model, provider, sparsity, ppl):
    params = {"model": model, "dtype": "bfloat16", "calibration": "32x256", "eval_text": "w", "eval_windows": 64,
              "eval_seqlen": 512, "sparsity": sparsity}
    return schema.BenchRow(benchmark="accuracy", case=f"{model}/{provider}/{sparsity}", provider=provider, metric="ppl",
                           median=ppl, params=params, derived={}, **CPU)


def test_each_table_shows_one_model(tmp_path):
    default = tables.DEFAULT_ACCURACY_MODEL
    rows = [_acc(default, "dense", "dense", 25.0), _acc(default, "Wanda", "2:4", 200.0), _acc(default, "SparseGPT", "2:4", 100.0),
            _acc("gemma3-270m", "dense", "dense", 23.0), _acc("gemma3-270m", "Wanda", "2:4", 170.0)]
    schema.upsert_rows(tmp_path / "cpu-x" / "accuracy.jsonl", rows)
    results = tables.load_results(tmp_path)
    text = tables.table_accuracy(results, {"relative_to": "SparseGPT"})
    assert f"Perplexity of {default}" in text and "Dense: **25.00**" in text and "| Wanda | 200.00 (+100.0%) |" in text
    gemma = tables.table_accuracy(results, {"model": "gemma3-270m"})
    assert "Perplexity of gemma3-270m" in gemma and "Dense: **23.00**" in gemma and "| Wanda | 170.00 |" in gemma
    assert "SparseGPT" not in gemma
