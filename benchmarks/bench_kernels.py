"""Kernel benchmarks: 2:4 matmul providers vs cuBLAS dense; pruning kernels vs their torch forms.

2:4 matmul over LLaMA shapes and M; Wanda selection, activation statistics and DSnoT kernels at
LLaMA-7B shapes against their torch forms.

2:4 matmul, y = x @ W^T with W (N, K) 2:4-sparse along K, x (M, K), bf16:
  providers  dense (cuBLAS via F.linear on fully dense random W), triton / cuda / cublas / auto
             (sparsekit.ops.sparse24_matmul with backend="triton" / "cuda" / "cublas" / None, the last being what
             SparseLinear24 uses; cublas decompresses into one reusable scratch, then cuBLAS), cuda-r128 /
             cuda-r256 (sp24_decode with a fixed tile height, M <= 64),
             cusparselt / cutlass (torch.sparse.to_sparse_semi_structured + F.linear), cusparselt-search
             (torch._cslt_sparse_mm with the alg_id that _cslt_sparse_mm_search picks).
  bytes      dense 2NK + 2MK + 2MN; 2:4 1.125NK + 2MK + 2MN (values NK/2 + metadata NK/16 16-bit words),
             the fewest bytes each must move (kernels.md section 4); FLOPs 2MNK for both.
  derived    speedup vs dense (same run), GB/s, % of the copy bandwidth measured in the same run,
             TFLOP/s (dense-equivalent 2MNK), bandwidth ceiling = dense bytes / 2:4 bytes (1.78x at M=1).
Each provider's output is checked against an fp32 reference first (relative error in the row); a
wrong result makes its rows "error". Weights and inputs are random and rotated through more than
twice the L2 size; µs-scale cases are timed in CUDA graphs (benchmarks.timing.time_cudagraph: one graph
of >= 50 calls rotating over the weight copies, 15 replays), and the eager host cost per call
(enqueue, no sync) is reported separately as derived["host_us_per_call"].

--write-table [PATH] turns the 2:4 rows of this device (the results file, read at the end) into the
dispatcher's tuning table (sparsekit.cuda_backend.sparse24_dispatch.table_from_rows), merged per device
into PATH (default: the dispatcher's table). Only dense / triton / cuda / cublas rows enter it: cuSPARSELt
is explicit-only (torch plans it on every call).
"""
from __future__ import annotations

import argparse
import math
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import (RunContext, Skip, describe_exception, free_memory, prune_24_by_magnitude,
                               random_like_weights, skip_row)
from benchmarks.schema import load_rows
from benchmarks.timing import Rotation, copy_bandwidth, host_us_per_call, rotation_copies, time_fn

BENCHMARK = "kernels"
LLAMA_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336)]
MS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 2048, 4096]
GPU_PROVIDERS = ["dense", "triton", "cuda", "cublas", "auto", "cusparselt", "cusparselt-search", "cutlass"]
TABLE_PROVIDERS = ("dense", "triton", "cuda", "cublas")  # what the dispatcher table is built from
DECODE_MAX_M = 64
QUICK_SHAPES = [(128, 256), (192, 128)]
QUICK_MS = [1, 8, 32]
QUICK_PROVIDERS = ["dense", "torch"]
OP_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # LLaMA-7B q/k/v/o, gate/up, down
QUICK_OP_SHAPES = [(64, 128)]
REL_TOL = 2e-2  # bf16 products accumulated in fp32 land near 1e-3..1e-2 (METHOD.md)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kernels")
    g.add_argument("--ops", default="matmul,wanda,select,stats,dsnot",
                   help="comma list of: matmul, wanda, select, stats, dsnot, copy")
    g.add_argument("--shapes", default=None, help="2:4 matmul shapes NxK, comma separated (default: LLaMA-7B/8B)")
    g.add_argument("--ms", default=None, help="M values, comma separated")
    g.add_argument("--providers", default=None, help=f"2:4 matmul providers (default GPU: {','.join(GPU_PROVIDERS)})")
    g.add_argument("--kernel-dtype", default="bfloat16", choices=["bfloat16", "float16"])
    g.add_argument("--stats-tokens", type=int, default=2048, help="tokens per calibration sequence for stats")
    g.add_argument("--stats-chunk", type=int, default=8, help="sequences per activation_stats call (the pipeline's batch)")
    g.add_argument("--write-table", nargs="?", const="", default=None, metavar="PATH",
                   help="after the 2:4 sweep, write the dispatcher tuning table from this device's rows "
                        "(default path: the dispatcher's table)")


# ---------------------------------------------------------------------------------------------
# 2:4 matmul providers: prepare(weight24) -> state; run(state, x) -> y
# ---------------------------------------------------------------------------------------------

def _prepare_ours(backend: str):
    def prepare(w24):
        from sparsekit import ops

        values, meta = ops.compress_24(w24)
        return lambda x: ops.sparse24_matmul(x, values, meta, backend=backend)
    return prepare


def _prepare_semi_structured(force_cutlass: bool):
    def prepare(w24):
        if w24.device.type != "cuda":
            raise Skip("torch semi-structured sparsity needs a CUDA device")
        from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

        previous = SparseSemiStructuredTensor._FORCE_CUTLASS
        SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
        try:
            sparse = to_sparse_semi_structured(w24)
        finally:
            SparseSemiStructuredTensor._FORCE_CUTLASS = previous
        return lambda x: F.linear(x, sparse)
    return prepare


def _pad_rows(x: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = -x.shape[0] % multiple
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def _prepare_cslt_search(w24):
    if w24.device.type != "cuda" or not hasattr(torch, "_cslt_compress"):
        raise Skip("torch._cslt_compress (cuSPARSELt) needs a CUDA build of torch with cuSPARSELt")
    packed = torch._cslt_compress(w24)
    algs: dict[int, int] = {}

    def run(x):
        m = x.shape[0]
        xt = _pad_rows(x, 8).t()  # the sparse operand must be the left one: y^T = W @ x^T
        if m not in algs:
            try:
                algs[m] = int(torch._cslt_sparse_mm_search(packed, xt))
            except Exception:  # search missing or deprecated in this torch: library default
                algs[m] = 0
        return torch._cslt_sparse_mm(packed, xt, alg_id=algs[m]).t()[:m]
    return run


def _prepare_decode(rows: int):
    def prepare(w24):
        if w24.device.type != "cuda":
            raise Skip("sp24_decode needs a CUDA device")
        from sparsekit import ops
        from sparsekit.cuda_backend.sparse24 import sparse24_decode

        values, meta = ops.compress_24(w24)
        return lambda x: sparse24_decode(x, values, meta, None, rows=rows)
    return prepare


PREPARE = {
    "dense": lambda w: (lambda x: F.linear(x, w)),
    "cublas": _prepare_ours("cublas"),
    "cuda-r128": _prepare_decode(128),
    "cuda-r256": _prepare_decode(256),
    "torch": _prepare_ours("torch"),
    "auto": _prepare_ours(None),
    "triton": _prepare_ours("triton"),
    "cuda": _prepare_ours("cuda"),
    "cusparselt": _prepare_semi_structured(False),
    "cutlass": _prepare_semi_structured(True),
    "cusparselt-search": _prepare_cslt_search,
}


def matmul_bytes(m: int, n: int, k: int, sparse: bool, elem: int = 2) -> int:
    weight = (n * k // 2 * elem + n * k // 16 * 2) if sparse else n * k * elem
    return weight + m * k * elem + m * n * elem


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm().clamp_min(1e-30))


def _matmul_shape(ctx: RunContext, n: int, k: int, ms: list[int], providers: list[str], dtype, copy_gbps, done) -> None:
    """Measure every provider at every M for one weight shape; rows are saved after each M."""
    todo = [m for m in ms if not all((BENCHMARK, f"sparse24_matmul/{n}x{k}/M={m}", p) in done for p in providers)]
    if not todo:  # --resume: a case is re-measured whole (all providers), so speedups stay same-run
        return
    sets = rotation_copies(matmul_bytes(0, n, k, True), ctx.device)
    gen = torch.Generator(device=ctx.device).manual_seed(n * 31 + k)
    dense_w = [random_like_weights((n, k), dtype, ctx.device, gen) for _ in range(sets)]
    sparse_w = [prune_24_by_magnitude(random_like_weights((n, k), dtype, ctx.device, gen)) for _ in range(sets)]
    ctx.log(f"2:4 matmul {n}x{k}: {sets} rotating weight sets")
    runners: dict[str, list[Callable] | str] = {}
    for provider in providers:
        try:
            weights = dense_w if provider == "dense" else sparse_w
            runners[provider] = [PREPARE[provider](w) for w in weights]
        except Skip as exc:
            runners[provider] = f"skipped: {exc}"
        except Exception as exc:
            runners[provider] = f"error: preparing failed: {describe_exception(exc)}"
    # correctness first, on the first weight set at the smallest M
    x0 = random_like_weights((todo[0], k), dtype, ctx.device, gen)
    errors: dict[str, float] = {}
    for provider, runner in runners.items():
        if isinstance(runner, str):
            continue
        weight = (dense_w if provider == "dense" else sparse_w)[0]
        try:
            errors[provider] = _rel_err(runner[0](x0), x0.float() @ weight.float().t())
        except Exception as exc:
            runners[provider] = f"error: {describe_exception(exc)}"
            continue
        if not math.isfinite(errors[provider]) or errors[provider] > REL_TOL:
            runners[provider] = f"error: wrong result, relative error {errors[provider]:.3g} > {REL_TOL}"
    for m in todo:
        ctx.save(BENCHMARK, _matmul_case(ctx, n, k, m, runners, errors, sets, dtype, copy_gbps, gen))
    del dense_w, sparse_w, runners
    free_memory(ctx.device)


def _matmul_case(ctx, n, k, m, runners, errors, sets, dtype, copy_gbps, gen) -> list:
    xs = [random_like_weights((m, k), dtype, ctx.device, gen) for _ in range(sets)]
    case = f"sparse24_matmul/{n}x{k}/M={m}"
    params = {"N": n, "K": k, "M": m, "dtype": str(dtype).replace("torch.", ""), "rotation_sets": sets}
    rows, times = [], {}
    for provider, runner in runners.items():
        if isinstance(runner, str):
            status, _, reason = runner.partition(": ")
            rows.append(skip_row(ctx, BENCHMARK, case, provider, reason, status=status, params=params))
            continue
        if provider.startswith("cuda-r") and m > DECODE_MAX_M:
            rows.append(skip_row(ctx, BENCHMARK, case, provider, f"sp24_decode takes M <= {DECODE_MAX_M}", params=params))
            continue
        rot = Rotation(list(zip(runner, xs)))

        def call(rot=rot):
            fn, x = rot.next()
            return fn(x)
        try:
            timing = time_fn(call, ctx.device, cudagraph=True, warmup_ms=ctx.warmup_ms,
                             rep_ms=ctx.graph_rep_ms if ctx.is_cuda else ctx.rep_ms)
        except Exception as exc:
            rows.append(skip_row(ctx, BENCHMARK, case, provider, describe_exception(exc), status="error", params=params))
            continue
        times[provider] = timing
        t = timing.median_ms * 1e-3
        nbytes = matmul_bytes(m, n, k, provider != "dense")
        derived = {"gbps": nbytes / t / 1e9, "tflops": 2 * m * n * k / t / 1e12, "bytes": nbytes,
                   "timer": timing.method, "rel_err": errors.get(provider),
                   "bandwidth_ceiling": matmul_bytes(m, n, k, False) / matmul_bytes(m, n, k, True)}
        if copy_gbps:
            derived["pct_copy_bw"] = 100 * derived["gbps"] / copy_gbps
        if ctx.is_cuda:
            derived["host_us_per_call"] = host_us_per_call(call, ctx.device)
        rows.append(ctx.row(benchmark=BENCHMARK, case=case, provider=provider, params=params, derived=derived,
                            **timing.row_fields()))
    dense = times.get("dense")
    for row in rows:
        if row.status == "ok" and dense is not None:
            row.derived["speedup_vs_dense"] = dense.median_ms / row.median
    ctx.log(f"  M={m}: " + ", ".join(f"{p} {t.median_ms * 1e3:.1f}us" + (f" ({dense.median_ms / t.median_ms:.2f}x)" if dense else "")
                                     for p, t in times.items()))
    return rows


def bench_matmul(ctx: RunContext, args, copy_gbps) -> None:
    shapes = _parse_shapes(args.shapes) if args.shapes else (QUICK_SHAPES if ctx.quick else LLAMA_SHAPES)
    ms = [int(v) for v in args.ms.split(",")] if args.ms else (QUICK_MS if ctx.quick else MS)
    providers = args.providers.split(",") if args.providers else (QUICK_PROVIDERS if ctx.quick else GPU_PROVIDERS)
    unknown = sorted(set(providers) - set(PREPARE))
    if unknown:
        raise ValueError(f"unknown 2:4 matmul provider(s) {unknown}; choose from {sorted(PREPARE)}")
    dtype = getattr(torch, args.kernel_dtype)
    done = ctx.done(BENCHMARK)
    for n, k in shapes:
        _matmul_shape(ctx, n, k, ms, providers, dtype, copy_gbps, done)


def tuning_rows(rows) -> list:
    """The successful GPU 2:4 rows the dispatcher table is built from."""
    return [r for r in rows if r.status == "ok" and r.device_kind == "cuda" and not r.quick
            and r.case.startswith("sparse24_matmul/") and r.provider in TABLE_PROVIDERS]


def merge_tuning_table(rows, path=None) -> tuple[object, int]:
    """Write the table of `rows` (table_from_rows) into `path`, replacing only the devices they measured."""
    import json
    from pathlib import Path

    from sparsekit.cuda_backend import sparse24_dispatch as dispatch

    fresh = dispatch.table_from_rows(tuning_rows(rows))
    target = Path(path) if path else dispatch.table_path()
    table = {"format": dispatch.TABLE_FORMAT, "devices": {}}
    if target.exists():
        loaded = json.loads(target.read_text())
        if loaded.get("format") == dispatch.TABLE_FORMAT:
            table = loaded
    entries = 0
    for name, device in fresh["devices"].items():
        sample = next(r for r in rows if r.device == name)
        device.update(torch=sample.torch, triton=sample.triton, cuda=sample.cuda, command=sample.command,
                      measured_at=sample.timestamp, git_commit=sample.git_commit)
        table["devices"][name] = device
        entries += len(device["entries"])
    written = dispatch.write_table(table, target)
    dispatch.reload_table()
    return written, entries


def write_tuning_table(ctx: RunContext, path: str | None) -> None:
    if not ctx.is_cuda or ctx.quick:
        ctx.log("--write-table: skipped, a tuning table needs rows measured on a CUDA device")
        return
    rows = load_rows(ctx.path(BENCHMARK))  # everything this device has measured, this run and resumed ones
    if not tuning_rows(rows):
        ctx.log("--write-table: no successful 2:4 matmul rows for this device; table left alone")
        return
    written, entries = merge_tuning_table(rows, path)
    ctx.log(f"tuning table: {written} ({entries} entries for this device)")


def _parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        try:
            n, k = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"shape {item!r} must look like NxK, e.g. 11008x4096") from None
        shapes.append((n, k))
    return shapes


# ---------------------------------------------------------------------------------------------
# Pruning kernels vs their torch forms
# ---------------------------------------------------------------------------------------------

def _op_backends(ctx: RunContext) -> list[str]:
    return ["torch"] if ctx.quick or not ctx.is_cuda else ["torch", "triton"]


def _time_op(ctx, case, params, make_call: Callable[[str], Callable], nbytes: int, extra=None) -> list:
    """Time make_call(backend)() for each backend; rows with GB/s and speedup vs torch."""
    rows, times = [], {}
    done = ctx.done(BENCHMARK)
    if all((BENCHMARK, case, b) in done for b in _op_backends(ctx)):
        return rows
    for backend in _op_backends(ctx):
        try:
            fn = make_call(backend)
            fn()  # first call: compile / autotune, and surface errors before timing
            timing = time_fn(fn, ctx.device, rep_ms=ctx.rep_ms, warmup_ms=ctx.warmup_ms)
        except Skip as exc:
            rows.append(skip_row(ctx, BENCHMARK, case, backend, str(exc), params=params))
            continue
        except Exception as exc:
            rows.append(skip_row(ctx, BENCHMARK, case, backend, describe_exception(exc), status="error", params=params))
            continue
        times[backend] = timing.median_ms
        derived = {"gbps": nbytes / (timing.median_ms * 1e-3) / 1e9, "bytes": nbytes, "timer": timing.method}
        if ctx.copy_gbps:
            derived["pct_copy_bw"] = 100 * derived["gbps"] / ctx.copy_gbps
        if "per_call_scale" in (extra or {}):
            derived["seconds_total"] = timing.median_ms * 1e-3 * extra["per_call_scale"]
        rows.append(ctx.row(benchmark=BENCHMARK, case=case, provider=backend, params=params, derived=derived,
                            **timing.row_fields()))
    for row in rows:
        if row.status == "ok" and "torch" in times:
            row.derived["speedup_vs_torch"] = times["torch"] / row.median
    ctx.log(f"{case}: " + ", ".join(f"{b} {t:.3f}ms" for b, t in times.items()))
    return rows


def bench_wanda(ctx: RunContext, args, shapes) -> None:
    from sparsekit import ops

    dtype = getattr(torch, args.kernel_dtype)
    for n, k in shapes:
        w = random_like_weights((n, k), dtype, ctx.device)
        sq_norm = torch.rand(k, device=ctx.device) * 10 + 0.1
        for label, sparsity, nm in (("unstructured50", 0.5, (0, 0)), ("2:4", None, (2, 4))):
            case = f"wanda_mask/{n}x{k}/{label}"
            params = {"N": n, "K": k, "pattern": label, "dtype": args.kernel_dtype}
            nbytes = w.numel() * w.element_size() + k * 4 + w.numel()  # read W and sq_norm, write a bool mask
            rows = _time_op(ctx, case, params, lambda b, w=w, sq=sq_norm, s=sparsity, nm=nm:
                            (lambda: ops.wanda_mask(w, sq, s, *nm, backend=b)), nbytes)
            ctx.save(BENCHMARK, rows)
    free_memory(ctx.device)


def bench_select(ctx: RunContext, args, shapes) -> None:
    from sparsekit import ops

    for n, k in shapes:
        score = torch.rand((n, k), device=ctx.device)
        case = f"select_mask/{n}x{k}/row50"
        params = {"N": n, "K": k, "pattern": "unstructured 0.5 per row", "dtype": "float32"}
        nbytes = score.numel() * 4 + score.numel()
        ctx.save(BENCHMARK, _time_op(ctx, case, params, lambda b, score=score: (lambda: ops.select_mask(score, 0.5, backend=b)), nbytes))
    free_memory(ctx.device)


def bench_stats(ctx: RunContext, args) -> None:
    from sparsekit import backend as sk_backend

    dtype = getattr(torch, args.kernel_dtype)
    features = [64, 96] if ctx.quick else [4096, 11008]
    tokens = 16 if ctx.quick else args.stats_tokens
    chunk = 2 if ctx.quick else args.stats_chunk
    nsamples = 4 if ctx.quick else 128
    for k in features:
        x = random_like_weights((chunk, tokens, k), dtype, ctx.device)

        def make(b, x=x):
            try:
                _, impl = sk_backend.resolve("activation_stats", b, ctx.device)
            except NotImplementedError as exc:
                raise Skip(str(exc)) from None
            return lambda: impl(x)
        case = f"activation_stats/{chunk}x{tokens}x{k}"
        params = {"sequences_per_call": chunk, "tokens": tokens, "K": k, "dtype": args.kernel_dtype,
                  "calibration": f"{nsamples}x{tokens}"}
        nbytes = x.numel() * x.element_size() + 3 * k * 4
        ctx.save(BENCHMARK, _time_op(ctx, case, params, make, nbytes, extra={"per_call_scale": nsamples / chunk}))
        del x
        free_memory(ctx.device)


def bench_dsnot(ctx: RunContext, args, shapes) -> None:
    from sparsekit import ops

    dtype = getattr(torch, args.kernel_dtype)
    tokens = 16 if ctx.quick else args.stats_tokens
    for n, k in shapes:
        w = random_like_weights((n, k), dtype, ctx.device)
        mean = torch.randn(k, device=ctx.device)
        var = torch.rand(k, device=ctx.device) + 0.05
        sq_norm = mean.square() + var + torch.rand(k, device=ctx.device)
        keep = ops.wanda_mask(w, sq_norm, 0.5)
        factor = torch.randn(k, 256, device=ctx.device) / 16  # a correlated input Hessian: low rank + diagonal
        hessian = factor @ factor.t() + torch.diag(sq_norm)
        for mode in ("official", "error", "exact"):
            case = f"dsnot/{n}x{k}/unstructured50/{mode}"
            params = {"N": n, "K": k, "pattern": "unstructured 0.5, Wanda initial mask", "dtype": args.kernel_dtype,
                      "mode": mode, "max_cycles": 50, "threshold": 0.1, "seqlen": tokens}

            def make(b, mode=mode, args=(w, keep, mean, var, sq_norm), hessian=hessian):
                extra = {"hessian": hessian} if mode == "exact" else {}
                return lambda: ops.dsnot(*args, max_cycles=50, threshold=0.1, mode=mode, seqlen=tokens, backend=b, **extra)
            nbytes = w.numel() * w.element_size() + 2 * w.numel()  # read W and the mask, write the mask
            ctx.save(BENCHMARK, _time_op(ctx, case, params, make, nbytes))
        del hessian, factor
    free_memory(ctx.device)


def run(ctx: RunContext, args) -> None:
    ops_wanted = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = sorted(set(ops_wanted) - {"matmul", "wanda", "select", "stats", "dsnot", "copy"})
    if unknown:
        raise ValueError(f"unknown kernel benchmark(s) {unknown}; choose from matmul, wanda, select, stats, dsnot, copy")
    copy_gbps = None
    if ctx.is_cuda or "copy" in ops_wanted or ctx.quick:
        nbytes = 2**24 if ctx.quick or not ctx.is_cuda else 2**30
        copy_gbps, timing = copy_bandwidth(ctx.device, nbytes)
        ctx.copy_gbps = copy_gbps
        ctx.log(f"copy bandwidth: {copy_gbps:.0f} GB/s (read + write, {nbytes >> 20} MiB)")
        ctx.save(BENCHMARK, [ctx.row(benchmark=BENCHMARK, case=f"copy_bandwidth/{nbytes >> 20}MiB", provider="torch",
                                     params={"bytes": nbytes}, derived={"gbps": copy_gbps, "timer": timing.method},
                                     **timing.row_fields())])
    op_shapes = QUICK_OP_SHAPES if ctx.quick else OP_SHAPES
    if "matmul" in ops_wanted:
        bench_matmul(ctx, args, copy_gbps)
    if args.write_table is not None:
        write_tuning_table(ctx, args.write_table or None)
    if "wanda" in ops_wanted:
        bench_wanda(ctx, args, op_shapes)
    if "select" in ops_wanted:
        bench_select(ctx, args, op_shapes)
    if "stats" in ops_wanted:
        bench_stats(ctx, args)
    if "dsnot" in ops_wanted:
        bench_dsnot(ctx, args, op_shapes)
