"""Tune sparse24_matmul's dispatcher on this GPU and benchmark every provider (one pass does both).

    python -m benchmarks.tune_sparse24 [--shapes 4096x4096,11008x4096] [--ms 1,16,64] [--dtypes bfloat16]
        [--table sparsekit/tuning/sparse24_matmul.json | --no-table] [--jsonl rows.jsonl]

For every dtype, weight shape (N, K) and token count M it times, with `triton.testing.do_bench`
(CUDA events, L2 flushed before each call; median, p20, p80) on random data:
  triton      sparsekit's Triton kernel (autotuned; the first call per M bucket tunes, outside the timing)
  cuda        sparsekit's mma.sp kernel (csrc/sparse24)
  cusparselt  torch._cslt_sparse_mm with the algorithm _cslt_sparse_mm_search picks for this M
  cublas      cuBLAS on the cached dense copy of the 2:4 weight (the dispatcher's dense provider)
  dense       cuBLAS on an unrelated fully dense weight: the baseline every speedup is against
Weights are rotated over enough copies to exceed twice the L2 (50 MB on H100) on top of the flush.
Each provider's output is checked against an fp32 reference at every point before it is timed; a
wrong one is reported as an error and left out of the table. Results: the dispatcher table (merged per
device name, written atomically) and one JSON object per line (keys: benchmark, case, provider, M, N, K,
dtype, median_us, p20_us, p80_us, device, torch, triton, cuda, command, and derived gbps, pct_copy_bw,
speedup_vs_dense). Bytes: dense 2NK + 2MK + 2MN, 2:4 1.125NK + 2MK + 2MN (kernels.md section 4).
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096)]
MS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
PROVIDERS = ["triton", "cuda", "cusparselt", "cublas"]
MAX_SETS = 16
REL_TOL = 2e-2  # bf16 operands, fp32 accumulation: 1e-3..1e-2 (METHOD.md)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]


def random_24_weight(n: int, k: int, dtype, device, gen) -> torch.Tensor:
    """Random normal weight pruned 2:4 by magnitude along K."""
    w = torch.randn(n, k, device=device, dtype=torch.float32, generator=gen)
    keep = w.abs().view(n, k // 4, 4).topk(2, dim=-1).indices
    mask = torch.zeros(n, k // 4, 4, dtype=torch.bool, device=device).scatter_(-1, keep, True).view(n, k)
    return (w * mask).to(dtype)


def matmul_bytes(m: int, n: int, k: int, sparse: bool) -> int:
    weight = n * k * 9 // 8 if sparse else 2 * n * k
    return weight + 2 * m * k + 2 * m * n


def copy_bandwidth_gbps(device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth, bytes read + written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    med_us = time_us(lambda: dst.copy_(src), device, 25, 200)[0]
    del src, dst
    return 2 * nbytes / (med_us * 1e-6) / 1e9


class Rotation:
    """Calls fn(*args_i) with the next argument set each time, so consecutive calls miss in L2."""

    def __init__(self, fn, sets):
        self.fn, self.sets, self.i = fn, sets, 0

    def __call__(self):
        args = self.sets[self.i]
        self.i = (self.i + 1) % len(self.sets)
        return self.fn(*args)


def time_us(fn, device, warmup_ms: float, rep_ms: float) -> tuple[float, float, float]:
    """(median, p20, p80) in µs: do_bench on CUDA; on CPU (smoke runs only) a wall clock over a few calls."""
    if torch.device(device).type == "cuda":
        import triton.testing

        med, p20, p80 = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return med * 1e3, p20 * 1e3, p80 * 1e3
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    q = torch.quantile(torch.tensor(samples, dtype=torch.float64), torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return tuple(float(v) for v in q)


def cusparselt_search(blob: torch.Tensor, x: torch.Tensor) -> int:
    """The algorithm id torch._cslt_sparse_mm_search picks for this operand shape (0 if unavailable)."""
    from sparsekit.cuda_backend.sparse24 import CUSPARSELT_MIN_ROWS

    pad = -x.shape[0] % CUSPARSELT_MIN_ROWS
    xp = F.pad(x, (0, 0, 0, pad)) if pad else x
    try:
        found = torch._cslt_sparse_mm_search(blob, xp.t(), transpose_result=True)
    except Exception as exc:  # removed or failing in this torch: the library default
        log(f"    cusparselt search failed ({type(exc).__name__}: {exc}); alg_id 0")
        return 0
    return int(found[0] if isinstance(found, (tuple, list)) else found)


def environment(device, command: str) -> dict:
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke run, times meaningless)"
    return {"device": name, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "command": command}


def tune_shape(n, k, dtype, ms, providers, args, env, copy_gbps, device, gen) -> tuple[list[dict], list[dict]]:
    from sparsekit import backend, ops
    from sparsekit.cuda_backend import sparse24 as cuda_providers

    l2 = (torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else 0) or 50 * 2**20
    # Copies to exceed 2x L2 (do_bench also flushes L2 before each call); capped for small weights.
    sparse_sets = min(MAX_SETS, max(2, math.ceil(2 * l2 / matmul_bytes(0, n, k, True)) + 1))
    dense_sets = min(MAX_SETS, max(2, math.ceil(2 * l2 / matmul_bytes(0, n, k, False)) + 1))
    dense_w = [torch.randn(n, k, device=device, generator=gen).to(dtype) for _ in range(dense_sets)]
    weights = [random_24_weight(n, k, dtype, device, gen) for _ in range(sparse_sets)]
    compressed = [ops.compress_24(w) for w in weights]
    log(f"{n}x{k} {dtype}: {sparse_sets} rotating 2:4 weight sets, {dense_sets} dense")

    impls, reasons = {}, {}
    for p in providers:
        try:
            impls[p] = backend.resolve("sparse24_matmul", p, device)[1]
        except Exception as exc:
            reasons[p] = f"{type(exc).__name__}: {exc}"
            log(f"  {p}: unavailable: {reasons[p][:300]}")

    rows, entries = [], []
    for m in ms:
        xs = [torch.randn(m, k, device=device, generator=gen).to(dtype) for _ in range(max(sparse_sets, dense_sets))]
        case = f"{n}x{k}/M={m}"
        results: dict[str, dict] = {}
        alg_id = 0
        for p in ["dense", *providers]:
            if p in reasons:
                results[p] = {"status": "skipped", "reason": reasons[p]}
                continue
            try:
                if p == "dense":
                    fn, sets = F.linear, [(xs[i], dense_w[i]) for i in range(dense_sets)]
                    check = (F.linear(xs[0], dense_w[0]), dense_w[0])
                else:
                    impl = impls[p]
                    if p == "cusparselt":
                        alg_id = cusparselt_search(cuda_providers.cusparselt_blob(*compressed[0]), xs[0])
                        fn = lambda x, v, mt, impl=impl, alg=alg_id: impl(x, v, mt, None, alg_id=alg)  # noqa: E731
                    else:
                        fn = lambda x, v, mt, impl=impl: impl(x, v, mt, None)  # noqa: E731
                    sets = [(xs[i], *compressed[i]) for i in range(sparse_sets)]
                    for s in sets:  # warm-up: autotuning, caches (dense copy, cuSPARSELt blob)
                        fn(*s)
                    check = (fn(*sets[0]), weights[0])
                out, w = check
                ref = xs[0].float() @ w.float().t()
                rel = float((out.float() - ref).norm() / ref.norm().clamp_min(1e-30))
                if not math.isfinite(rel) or rel > REL_TOL:
                    results[p] = {"status": "error", "reason": f"wrong result: relative error {rel:.3g} > {REL_TOL}"}
                    continue
                med, p20, p80 = time_us(Rotation(fn, sets), device, args.warmup_ms, args.rep_ms)
                results[p] = {"status": "ok", "median_us": med, "p20_us": p20, "p80_us": p80, "rel_err": rel}
            except Exception as exc:
                results[p] = {"status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:500]}"}
        dense_us = results.get("dense", {}).get("median_us")
        for p, r in results.items():
            row = {"benchmark": "sparse24_matmul", "case": case, "provider": p, "M": m, "N": n, "K": k,
                   "dtype": str(dtype).replace("torch.", ""), **env, "median_us": None, "p20_us": None, "p80_us": None,
                   "copy_gbps": copy_gbps, "rotation_sets": dense_sets if p == "dense" else sparse_sets, **r}
            if r["status"] == "ok":
                nbytes = matmul_bytes(m, n, k, p != "dense")
                row["gbps"] = nbytes / (r["median_us"] * 1e-6) / 1e9
                row["pct_copy_bw"] = 100 * row["gbps"] / copy_gbps
                row["tflops"] = 2 * m * n * k / (r["median_us"] * 1e-6) / 1e12
                if dense_us:
                    row["speedup_vs_dense"] = dense_us / r["median_us"]
                if p == "cusparselt":
                    row["cusparselt_alg_id"] = alg_id
            rows.append(row)
        times = {p: r["median_us"] for p, r in results.items() if r["status"] == "ok" and p != "dense"}
        if "cublas" in times:  # the dense provider must be in every entry: the no-slower-than-dense guarantee
            entry = {"dtype": str(dtype).replace("torch.", ""), "N": n, "K": k, "M": m,
                     "times_us": {**times, **({"dense_ref": dense_us} if dense_us else {})},
                     "best": min(times, key=times.get), "cusparselt_alg_id": alg_id}
            entries.append(entry)
        summary = ", ".join(f"{p} {r['median_us']:.1f}" if r["status"] == "ok" else f"{p} {r['status']}" for p, r in results.items())
        log(f"  M={m}: {summary} (us)")
    del dense_w, weights, compressed
    cuda_providers.clear_prepared_cache()
    torch.cuda.empty_cache()
    return rows, entries


def merge_table(path: Path, device_name: str, entries: list[dict], env: dict) -> Path:
    from sparsekit.cuda_backend import sparse24_dispatch

    table = {"format": sparse24_dispatch.TABLE_FORMAT, "devices": {}}
    if path.exists():
        loaded = json.loads(path.read_text())
        if loaded.get("format") == sparse24_dispatch.TABLE_FORMAT:
            table = loaded
    device = table["devices"].setdefault(device_name, {"entries": []})
    fresh = {(e["dtype"], e["N"], e["K"]) for e in entries}
    device["entries"] = [e for e in device["entries"] if (e["dtype"], e["N"], e["K"]) not in fresh] + entries
    device.update({key: env[key] for key in ("torch", "triton", "cuda", "command")},
                  measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), dense_cache=True)
    written = sparse24_dispatch.write_table(table, path)
    sparse24_dispatch.reload_table()
    return written


def print_summary(rows: list[dict]) -> None:
    by_case: dict[tuple, dict] = {}
    for r in rows:
        by_case.setdefault((r["dtype"], r["N"], r["K"], r["M"]), {})[r["provider"]] = r
    providers = ["dense", *PROVIDERS]
    print("\n" + " ".join(f"{h:>10}" for h in ["dtype", "NxK", "M", *providers, "best", "x dense"]))
    for (dtype, n, k, m), rs in by_case.items():
        cells = [f"{rs[p]['median_us']:10.1f}" if p in rs and rs[p]["status"] == "ok" else f"{'-':>10}" for p in providers]
        ok = {p: rs[p]["median_us"] for p in PROVIDERS if p in rs and rs[p]["status"] == "ok"}
        best = min(ok, key=ok.get) if ok else "-"
        speed = f"{rs['dense']['median_us'] / ok[best]:.2f}" if ok and rs.get("dense", {}).get("status") == "ok" else "-"
        print(" ".join([f"{dtype[:10]:>10}", f"{str(n) + 'x' + str(k):>10}", f"{m:>10}", *cells, f"{best:>10}", f"{speed:>10}"]))


def main(argv=None) -> int:
    from sparsekit.cuda_backend import sparse24_dispatch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="weight shapes NxK")
    p.add_argument("--ms", default=",".join(map(str, MS)), help="token counts M")
    p.add_argument("--dtypes", default="bfloat16", help="comma list of bfloat16, float16")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--table", default=str(sparse24_dispatch.DEFAULT_TABLE), help="dispatcher table to merge into")
    p.add_argument("--no-table", action="store_true", help="benchmark only; leave the table alone")
    p.add_argument("--jsonl", default=None, help="append one JSON row per (shape, M, provider) here")
    p.add_argument("--warmup-ms", type=float, default=25.0)
    p.add_argument("--rep-ms", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run of the script (no table)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("tune_sparse24 needs a CUDA GPU (the table is per device); --device cpu for a smoke run", file=sys.stderr)
            return 2
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        args.no_table = True
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    env = environment(device, command)
    providers = [x for x in args.providers.split(",") if x]
    copy_gbps = copy_bandwidth_gbps(device, (1 << 30) if device.type == "cuda" else (1 << 24))
    log(f"{env['device']}: torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}; copy bandwidth {copy_gbps:.0f} GB/s")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    all_rows, all_entries = [], []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for n, k in parse_shapes(args.shapes):
            rows, entries = tune_shape(n, k, dtype, [int(m) for m in args.ms.split(",")], providers, args, env,
                                       copy_gbps, device, gen)
            all_rows += rows
            all_entries += entries
            if args.jsonl:  # after every shape, so a run cut short keeps what it measured
                with open(args.jsonl, "a", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
            if not args.no_table and entries:
                merge_table(Path(args.table), env["device"], entries, env)
    print_summary(all_rows)
    if not args.no_table:
        log(f"table: {args.table} ({len(all_entries)} entries for {env['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
