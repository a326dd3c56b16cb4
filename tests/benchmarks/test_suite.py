"""The benchmark suite: --quick end to end on CPU, the result schema, README tables, plots, merge."""
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import cli, schema, tables
from benchmarks.bench_decode import Decoder
from benchmarks.bench_kernels import matmul_bytes
from benchmarks.models import prune_24_magnitude_
from benchmarks.timing import Rotation, quantiles, rotation_copies, time_fn
from tests.helpers import tiny_llama

BENCHMARKS = ("kernels", "decode", "prune-time", "accuracy", "zeroshot")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    start = time.perf_counter()
    assert cli.main(["all", "--quick", "--results-dir", str(root)]) == 0
    return root, time.perf_counter() - start


def _quick_rows(root, benchmark):
    files = list(root.glob(f"cpu-*/quick/{benchmark}.jsonl"))
    assert len(files) == 1, f"expected one quick {benchmark} file, got {files}"
    return schema.load_rows(files[0])


def test_quick_runs_every_benchmark_end_to_end(quick_results):
    root, seconds = quick_results
    assert not list(root.glob("*/*.jsonl")), "quick rows must stay under <device>/quick/"
    for benchmark in BENCHMARKS:
        rows = _quick_rows(root, benchmark)
        assert rows, benchmark
        for row in rows:
            assert row.quick and row.device_kind == "cpu" and row.device.startswith("CPU: ")
            assert row.torch == torch.__version__ and row.command.startswith("python -m benchmarks all --quick")
            assert row.status in ("ok", "skipped") or pytest.fail(f"{row.case} [{row.provider}] failed: {row.reason}")
            assert row.status == "ok" or row.reason, f"{row.case} [{row.provider}] skipped without a reason"
            if row.status == "ok":
                assert row.median is not None and row.median >= 0, (row.case, row.provider)
    kernels = _quick_rows(root, "kernels")
    dense = [r for r in kernels if r.case.startswith("sparse24_matmul/") and r.provider == "dense"]
    assert dense and all(r.status == "ok" and r.derived["bandwidth_ceiling"] > 1 for r in dense)
    assert any(r.case.startswith("copy_bandwidth/") for r in kernels)
    decode = _quick_rows(root, "decode")
    assert {r.params["batch"] for r in decode if r.provider == "dense" and r.status == "ok"} == {1, 2}
    prune = {r.provider: r for r in _quick_rows(root, "prune-time")}
    assert prune["wanda"].status == "ok" and {"capture", "statistics", "masks"} <= set(prune["wanda"].derived["phases"])
    accuracy = {(r.provider, r.params["sparsity"]): r for r in _quick_rows(root, "accuracy")}
    assert accuracy[("dense", "dense")].median > 1 and accuracy[("Wanda", "2:4")].derived["sparsity_reached"] == pytest.approx(0.5)
    print(f"quick suite: {seconds:.1f}s")


def test_quick_sparse_rows_run_or_say_why(quick_results):
    root, _ = quick_results
    matmul = [r for r in _quick_rows(root, "kernels") if r.case.startswith("sparse24_matmul/") and r.provider == "torch"]
    decode = [r for r in _quick_rows(root, "decode") if r.provider == "sparse24"]
    for row in matmul + decode:
        assert row.status == "ok" or "sparse" in row.reason.lower() or "24" in row.reason
    for row in matmul:
        if row.status == "ok":
            assert row.derived["rel_err"] < 2e-2 and "speedup_vs_dense" in row.derived


def _row(**overrides):
    base = dict(benchmark="kernels", case="sparse24_matmul/64x64/M=1", provider="triton", metric="time", unit="ms",
                median=0.01, p20=0.009, p80=0.011, params={"N": 64, "K": 64, "M": 1}, derived={"speedup_vs_dense": 1.5},
                device="NVIDIA H100 80GB HBM3", device_kind="cuda", torch="2.11.0", triton="3.6.0", cuda="13.0",
                git_commit="abc123", command="python -m benchmarks kernels", timestamp="2026-11-20T10:00:00+00:00")
    base.update(overrides)
    return schema.BenchRow(**base)


def test_schema_round_trip_upsert_append(tmp_path):
    path = tmp_path / "dev" / "kernels.jsonl"
    a, b = _row(), _row(provider="dense", median=0.02, derived={})
    schema.upsert_rows(path, [a, b])
    assert schema.load_rows(path) == [a, b]
    a2 = dataclasses.replace(a, median=0.005)
    schema.upsert_rows(path, [a2, _row(case="other")])
    rows = schema.load_rows(path)
    assert [r.key for r in rows] == [a.key, b.key, ("kernels", "other", "triton")] and rows[0].median == 0.005
    schema.append_rows(path, [a])
    assert len(schema.load_rows(path)) == 4 and schema.latest(schema.load_rows(path))[0] == a
    assert [p.name for p in path.parent.iterdir()] == ["kernels.jsonl"]  # no temp or lock files in the results tree
    line = json.loads(path.read_text().splitlines()[0])
    assert set(line) == {f.name for f in dataclasses.fields(schema.BenchRow)}


def test_schema_errors(tmp_path):
    with pytest.raises(ValueError, match="status must be one of"):
        _row(status="weird")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"benchmark": "x", "nonsense": 1}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: not a result row"):
        schema.load_rows(bad)


def test_environment_labels_cpu():
    env = schema.environment("cpu", command="cmd")
    assert env["device_kind"] == "cpu" and env["device"].startswith("CPU: ") and env["command"] == "cmd"
    assert schema.device_slug("cpu").startswith("cpu-") and env["git_commit"]


def test_timing_and_rotation_on_cpu():
    t = time_fn(lambda: sum(range(1000)), "cpu", warmup_ms=1, rep_ms=5)
    assert 0 < t.p20_ms <= t.median_ms <= t.p80_ms and t.method == "wallclock"
    rot = Rotation([1, 2, 3])
    assert [rot.next() for _ in range(5)] == [1, 2, 3, 1, 2]
    assert rotation_copies(10**6, "cpu") == 2
    with pytest.raises(ValueError):
        Rotation([])
    assert quantiles([4.0, 1.0, 3.0, 2.0, 5.0, 6.0]) == pytest.approx((3.5, 2.0, 5.0))  # torch.quantile, linear


def test_magnitude_24_prunes_what_sparsify_converts():
    import sparsekit

    model = tiny_llama()
    assert prune_24_magnitude_(model) == 14  # 2 blocks x (q, k, v, o, gate, up, down); lm_head is ignored
    report = sparsekit.sparsify(model)
    assert len(report.swapped) == 14 and not report.skipped
    assert model.lm_head.weight.count_nonzero() == model.lm_head.weight.numel()


def test_matmul_bytes_give_the_178x_ceiling():
    n = k = 4096
    assert matmul_bytes(0, n, k, False) / matmul_bytes(0, n, k, True) == pytest.approx(2 / 1.125)
    assert matmul_bytes(1, n, k, True) == n * k * 9 // 8 + 2 * k + 2 * n  # kernels.md: 1.125NK + 2MK + 2MN


def test_decoder_static_cache_matches_full_recompute():
    model = tiny_llama().requires_grad_(False)
    prompt = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    decoder = Decoder(model, 2, 8, 6, "eager", "cpu")
    assert decoder.prepare(prompt) == "eager"
    _, _, first = decoder.generate(prompt)
    _, _, second = decoder.generate(prompt)  # the cache restarts at position 0
    ids = prompt
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(first, ids[:, 8:]) and torch.equal(second, first)


README = """# project

intro text stays

<!-- bench:accuracy -->
old accuracy table
<!-- /bench:accuracy -->

middle text stays

<!-- bench:prune-time -->
<!-- /bench:prune-time -->
<!-- bench:decode -->
stale
<!-- /bench:decode -->
<!-- bench:zeroshot -->
<!-- /bench:zeroshot -->
<!-- bench:kernels ms=1,8 -->
<!-- /bench:kernels -->

end text stays
"""


def test_tables_regenerate_a_temp_readme(quick_results, tmp_path):
    root, _ = quick_results
    readme = tmp_path / "README.md"
    readme.write_text(README)
    readme.chmod(0o664)
    args = ["tables", "--readme", str(readme), "--results-dir", str(root), "--quick"]
    assert cli.main(args) == 0
    text = readme.read_text()
    for kept in ("# project", "intro text stays", "middle text stays", "end text stays"):
        assert kept in text
    assert "old accuracy table" not in text and "stale" not in text
    assert "| method | 0.5 | 2:4 |" in text and "Perplexity of tiny-llama" in text
    assert "| tiny-llama | wanda |" in text  # prune-time row
    assert "CPU: " in text and "<sub>CPU:" in text  # provenance labels CPU results as CPU
    assert "_No GPU decode results yet" in text and "_No GPU kernel results yet" in text  # CPU never fills GPU tables
    assert cli.main(args + ["--check"]) == 0 and readme.read_text() == text  # idempotent
    assert readme.stat().st_mode & 0o777 == 0o664  # the atomic rewrite keeps the file's permissions
    readme.write_text(text.replace("| method |", "| METHOD |"))
    assert cli.main(args + ["--check"]) == 1


def test_tables_gpu_rows_and_marker_errors(tmp_path):
    root = tmp_path / "results"
    rows = [_row(provider="dense", median=0.02, derived={"bandwidth_ceiling": 1.7}),
            _row(derived={"speedup_vs_dense": 2.0, "pct_copy_bw": 80.0}),
            _row(provider="cuda", status="skipped", reason="no extension", median=None, derived={})]
    schema.upsert_rows(root / "cuda-nvidia-h100" / "kernels.jsonl", rows)
    schema.upsert_rows(root / "cpu-x" / "kernels.jsonl", [_row(device_kind="cpu", device="CPU: x", median=1.0)])
    (root / "cpu").mkdir()
    (root / "cpu" / "other_script.jsonl").write_text('{"foreign": 1}\n')  # another script's format: skipped, not fatal
    text = tables.render("<!-- bench:kernels ms=1 -->\n<!-- /bench:kernels -->", tables.load_results(root))
    assert "**2.00×** (10.0, 80%)" in text and "| 64×64 | 1 | 20.0 |" in text
    assert "cuda: skipped (no extension)" in text and "GPU: NVIDIA H100 80GB HBM3" in text and "CPU: x" not in text
    ops = [_row(case="wanda_mask/64x64/2:4", provider="torch", median=2.0, derived={}),
           _row(case="wanda_mask/64x64/2:4", provider="triton", median=0.5, derived={"speedup_vs_torch": 4.0, "gbps": 900.0, "pct_copy_bw": 30.0})]
    dec = {"batch": 1, "model": "llama7b-shape", "prompt_len": 128, "new_tokens": 256}
    decode = [_row(benchmark="decode", case="d1", provider="dense", metric="decode throughput", unit="tokens/s", median=100.0,
                   params=dec, derived={"per_token_ms": 10.0, "peak_memory_bytes": 14e9, "mode": "cudagraph"}),
              _row(benchmark="decode", case="d1", provider="sparse24", metric="decode throughput", unit="tokens/s", median=150.0,
                   params=dec, derived={"per_token_ms": 6.67, "peak_memory_bytes": 8e9, "mode": "cudagraph", "speedup_vs_dense": 1.5})]
    schema.upsert_rows(root / "cuda-nvidia-h100" / "kernels.jsonl", ops)
    schema.upsert_rows(root / "cuda-nvidia-h100" / "decode.jsonl", decode)
    results = tables.load_results(root)
    assert "| `wanda_mask/64x64/2:4` | 2.000 | 0.500 | 4.00× | 900 | 30% |" in tables.table_kernel_ops(results, {})
    assert "| 1 | 100.0 | 150.0 | 1.50× | 10.00 | 6.67 | 14.0 / 8.0 | cudagraph |" in tables.table_decode(results, {})
    with pytest.raises(ValueError, match="unknown table"):
        tables.render("<!-- bench:nope -->x<!-- /bench:nope -->", {})
    with pytest.raises(ValueError, match="no closing"):
        tables.render("<!-- bench:decode -->x", {})
    with pytest.raises(ValueError, match="key=value"):
        tables.render("<!-- bench:decode oops -->x<!-- /bench:decode -->", {})


def test_plots_from_quick_results(quick_results, tmp_path):
    root, _ = quick_results
    assert cli.main(["plot", "--results-dir", str(root), "--quick", "--out", str(tmp_path)]) == 0
    names = {p.name for p in tmp_path.rglob("*.png")}
    assert {"decode_tokens.png", "ppl_vs_sparsity.png", "prune_time.png"} <= names
    assert all(p.stat().st_size > 5000 for p in tmp_path.rglob("*.png"))


def test_merge_folds_fetched_rows_into_the_tree(tmp_path):
    src, dst = tmp_path / "out", tmp_path / "results"
    schema.upsert_rows(src / "cuda-nvidia-h100" / "decode.jsonl", [_row(benchmark="decode", case="c", provider="dense")])
    schema.upsert_rows(dst / "cuda-nvidia-h100" / "decode.jsonl", [_row(benchmark="decode", case="old", provider="dense")])
    assert cli.main(["merge", str(src), "--results-dir", str(dst)]) == 0
    assert [r.case for r in schema.load_rows(dst / "cuda-nvidia-h100" / "decode.jsonl")] == ["old", "c"]
    assert cli.main(["merge", str(tmp_path / "empty"), "--results-dir", str(dst)]) == 2


def test_cli_errors():
    assert cli.main(["kernels", "--quick", "--ops", "nope"]) == 2
    assert cli.main(["kernels", "--quick", "--device", "cuda"]) == 2


def test_python_m_benchmarks_is_the_entry_point(quick_results):
    """The suite runs as `python -m benchmarks` from the repository root; the library never imports it."""
    root, _ = quick_results
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "benchmarks", "tables", "--print", "prune-time", "--results-dir", str(root),
                          "--quick"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "tiny-llama" in out.stdout
    from sparsekit.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "tables"])
    probe = "import sys, sparsekit, sparsekit.cli; sys.exit('benchmarks' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=repo, timeout=300).returncode == 0


@pytest.mark.parametrize("document", ["README.md", "docs/results.md"])
def test_committed_tables_match_the_committed_results(document):
    """Every measured table in the docs is what the results files regenerate (rerun `tables` after a merge)."""
    path = Path(__file__).resolve().parents[2] / document
    assert cli.main(["tables", "--readme", str(path), "--check"]) == 0
