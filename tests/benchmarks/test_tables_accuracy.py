"""README tables for issue 13: prune time against a base method, zero-shot filters and stderr, presets."""
from benchmarks import schema, tables

CPU = dict(device="CPU: x (2 threads visible, torch uses 1)", device_kind="cpu", torch="2.13.0", triton="3.9.0", cuda=None,
           git_commit="abc123", command="python -m benchmarks accuracy", timestamp="2026-11-29T10:00:00+00:00",
           p20=None, p80=None, unit="")
ACC = {"model": "m", "dtype": "bfloat16", "calibration": "32x256", "eval_text": "w", "eval_windows": 64, "eval_seqlen": 512}


def _acc(provider, sparsity, ppl, seconds=None, **params):
    derived = {"prune_seconds": seconds * 3, "prune_cpu_seconds": seconds} if seconds else {}
    return schema.BenchRow(benchmark="accuracy", case=f"m/{provider}/{sparsity}", provider=provider, metric="ppl", median=ppl,
                           params={**ACC, "sparsity": sparsity, **params}, derived=derived, **CPU)


def _time(provider, pattern, seconds, cpu=None):
    derived = {"phases": {"masks": seconds / 2}, **({"cpu_seconds": cpu} if cpu else {})}
    return schema.BenchRow(benchmark="prune-time", case=f"m/{provider}/{pattern}", provider=provider, metric="prune seconds",
                           median=seconds, params={"model": "m", "calibration": "c"}, derived=derived, **{**CPU, "unit": "s"})


def _zs(provider, sparsity, task, acc, stderr):
    return schema.BenchRow(benchmark="zeroshot", case=f"m/{provider}/{sparsity}/{task}", provider=provider, metric="acc",
                           median=acc, params={"model": "m", "sparsity": sparsity, "task": task, "limit": 50},
                           derived={"acc_stderr": stderr, "chance": 0.5}, **CPU)


def test_prune_time_relative_to_a_base(tmp_path):
    schema.upsert_rows(tmp_path / "cpu-x" / "prune-time.jsonl",
                       [_time("SparseGPT", "0.5", 10.0), _time("ALPS", "0.5", 47.0), _time("SparseGPT", "2:4", 20.0),
                        _time("ALPS", "2:4", 30.0), _time("Wanda", "0.5", 2.0)])
    text = tables.table_prune_time(tables.load_results(tmp_path), {"methods": "SparseGPT;ALPS", "relative_to": "SparseGPT"})
    assert "| m | ALPS | 0.5 | c | 47.0 | 4.70× | 23.5 |" in text and "| m | ALPS | 2:4 | c | 30.0 | 1.50× | 15.0 |" in text
    assert "| m | SparseGPT | 0.5 | c | 10.0 | 1.00× |" in text and "Wanda" not in text
    assert text.index("| SparseGPT | 0.5") < text.index("| ALPS | 0.5")
    schema.upsert_rows(tmp_path / "cpu-x" / "prune-time.jsonl", [_time("SparseGPT", "0.6", 30.0, cpu=2.0), _time("ALPS", "0.6", 40.0, cpu=12.0)])
    text = tables.table_prune_time(tables.load_results(tmp_path), {"methods": "SparseGPT;ALPS", "relative_to": "SparseGPT"})
    assert "| m | ALPS | 0.6 | c | 40.0 | 12.00 | 6.00× | 20.0 |" in text  # CPU seconds when both rows have them


def test_zeroshot_filters_and_stderr(tmp_path):
    rows = [_zs("dense", "dense", "piqa", 0.66, 0.06), _zs("Wanda", "0.5", "piqa", 0.60, 0.07),
            _zs("ALPS", "2:4", "piqa", 0.62, 0.07), _zs("Wanda", "2:4", "piqa", 0.55, 0.07), _zs("ALPS", "0.6", "piqa", 0.5, 0.07)]
    schema.upsert_rows(tmp_path / "cpu-x" / "zeroshot.jsonl", rows)
    text = tables.table_zeroshot(tables.load_results(tmp_path), {"methods": "Wanda;ALPS", "sparsities": "0.5,2:4"})
    lines = [line for line in text.splitlines() if line.startswith("| m |")]
    assert lines == ["| m | dense | dense | 66.0 | 66.0 |", "| m | Wanda | 0.5 | 60.0 | 60.0 |",
                     "| m | Wanda | 2:4 | 55.0 | 55.0 |", "| m | ALPS | 2:4 | 62.0 | 62.0 |"]
    assert "per task: 6.0 to 7.0 points" in text
    rows = [_zs("dense", "dense", "boolq", 0.20, 0.06), _zs("Wanda", "0.5", "boolq", 0.70, 0.06)]
    schema.upsert_rows(tmp_path / "cpu-x" / "zeroshot.jsonl", rows)
    text = tables.table_zeroshot(tables.load_results(tmp_path), {"methods": "Wanda", "sparsities": "0.5", "mean_without": "boolq"})
    assert "| mean | mean without boolq |" in text
    assert "| m | dense | dense | 66.0 | 20.0 | 43.0 | 66.0 |" in text and "| m | Wanda | 0.5 | 60.0 | 70.0 | 65.0 | 60.0 |" in text


def test_presets_table_from_accuracy_rows(tmp_path):
    rows = [_acc("dense", "dense", 25.0), _acc("SparseGPT", "0.6", 100.0, seconds=10.0), _acc("ALPS", "0.6", 75.0, seconds=50.0),
            _acc("SparseGPT", "2:4", 100.0, seconds=10.0), _acc("ALPS+permute", "2:4", 80.0, seconds=50.0),
            _acc("SparseGPT+ALPS", "2:4", 90.0, seconds=16.0)]
    schema.upsert_rows(tmp_path / "cpu-x" / "accuracy.jsonl", rows)
    schema.upsert_rows(tmp_path / "cpu-x" / "prune-time.jsonl",  # plain methods are named by their key there
                       [_time("sparsegpt", "2:4", 20.0, cpu=2.0), _time("ALPS+permute", "2:4", 90.0, cpu=9.0)])
    text = tables.table_presets(tables.load_results(tmp_path), {"sparsities": "0.6,2:4", "calibration": "32x256"})
    assert "| quality | 0.6 | `--method alps` | 75.00 | 3.00× | -25.0% | 5.0×* |" in text  # accuracy runs' CPU seconds
    assert "| quality | 2:4 | `--method alps --permute` | 80.00 | 3.20× | -20.0% | 4.5× |" in text  # the prune-time benchmark's
    assert "| fast | 0.6 | `--method admm` | not measured | – | – | 2.2x SparseGPT (CPU s per block) |" in text
    rendered = tables.render("<!-- bench:presets sparsities=0.6 -->\n<!-- /bench:presets -->", tables.load_results(tmp_path))
    assert "| quality | 0.6 |" in rendered and "| quality | 2:4 |" not in rendered


def test_prune_time_takes_configurations_and_records_cpu_seconds(tmp_path):
    from benchmarks import cli

    assert cli.main(["prune-time", "--quick", "--results-dir", str(tmp_path), "--prune-pattern", "2:4",
                     "--prune-configs", "sparsegpt", 'sparsegpt:{"update":"alps"}']) == 0
    rows = {r.provider: r for r in schema.load_rows(next(tmp_path.rglob("prune-time.jsonl")))}
    assert set(rows) == {"sparsegpt", "SparseGPT+ALPS"} and all(r.status == "ok" for r in rows.values())
    assert rows["SparseGPT+ALPS"].params["options"] == {"update": "alps"}
    assert "update" in rows["SparseGPT+ALPS"].derived["phases"] and "update" not in rows["sparsegpt"].derived["phases"]
    assert all(r.derived["cpu_seconds"] > 0 and r.derived["threads"] >= 1 for r in rows.values())
