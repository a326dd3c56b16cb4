"""`python -m benchmarks <kind> ...`, run from the repository root (the suite's only entry point).

Kinds: kernels, decode, prune-time, accuracy, host-overhead, all (those in that order); plus plot, tables
(README regeneration) and merge (fold rows fetched from a GPU machine into the results tree).
`--quick` runs a small CPU version of each benchmark through the torch paths (CI proves the suite
works end to end); its rows go to `<results>/<device>/quick/` and never into tables or plots.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
from pathlib import Path

from benchmarks.schema import DEFAULT_RESULTS

KINDS = {"kernels": "benchmarks.bench_kernels", "decode": "benchmarks.bench_decode",
         "prune-time": "benchmarks.bench_prune_time", "accuracy": "benchmarks.bench_accuracy",
         "host-overhead": "benchmarks.bench_host_overhead"}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small CPU version through torch paths (CI smoke run)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available; --quick: cpu)")
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS), help="root of the results tree (default benchmarks/results)")
    p.add_argument("--resume", action="store_true", help="skip cases already measured successfully in the results file")
    p.add_argument("--rep-ms", type=float, default=None, help="timing budget per case in ms (default 100; quick 5)")
    p.add_argument("--warmup-ms", type=float, default=None, help="warm-up per case in ms (default 25; quick 1)")
    p.add_argument("--graph-rep-ms", type=float, default=20.0,
                   help="ms of calls captured per CUDA graph for µs-scale kernels (do_bench_cudagraph's rep; default 20)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark subcommands to `parser`."""
    sub = parser.add_subparsers(dest="bench_kind", required=True, metavar="{kernels,decode,prune-time,accuracy,host-overhead,all,plot,tables,merge}")
    for kind, module in KINDS.items():
        p = sub.add_parser(kind, help=(importlib.import_module(module).__doc__ or "").strip().splitlines()[0])
        _common(p)
        importlib.import_module(module).add_arguments(p)
    p = sub.add_parser("all", help="kernels, decode, prune-time, accuracy and host-overhead, in that order")
    _common(p)
    for module in KINDS.values():
        importlib.import_module(module).add_arguments(p)
    from benchmarks import plot, tables

    p = sub.add_parser("plot", help="PNGs from the results: speedup vs M, tokens/s, ppl vs sparsity, prune time")
    plot.add_arguments(p)
    p = sub.add_parser("tables", help="regenerate the README's <!-- bench:NAME --> tables from the results")
    tables.add_arguments(p)
    p = sub.add_parser("merge", help="upsert the rows of result files under SRC into the results tree")
    p.add_argument("src", help="a folder holding <device-slug>/<benchmark>.jsonl files (e.g. fetched from $OUT)")
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS))


def _context(args, argv: list[str]):
    import torch

    from benchmarks.common import RunContext

    device = torch.device(args.device or ("cpu" if args.quick or not torch.cuda.is_available() else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch sees no CUDA GPU; use --device cpu")
    if args.quick and device.type != "cpu":
        raise ValueError("--quick is the CPU smoke version of the suite; drop --device or use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in argv)
    return RunContext(device=device, quick=args.quick, results_root=Path(args.results_dir), command=command,
                      resume=args.resume, rep_ms=args.rep_ms or (5.0 if args.quick else 100.0),
                      warmup_ms=args.warmup_ms or (1.0 if args.quick else 25.0), graph_rep_ms=args.graph_rep_ms)


def _merge(args) -> None:
    from benchmarks.schema import load_rows, upsert_rows

    src = Path(args.src)
    files = sorted(src.glob("*/*.jsonl")) + sorted(src.glob("*/quick/*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no <device-slug>/<benchmark>.jsonl files under {src}")
    for path in files:
        relative = path.relative_to(src)
        target = upsert_rows(Path(args.results_dir) / relative, load_rows(path))
        print(f"merged {path} -> {target}")


def execute(args, argv: list[str]) -> int:
    kind = args.bench_kind
    if kind == "plot":
        from benchmarks import plot

        return plot.main_args(args)
    if kind == "tables":
        from benchmarks import tables

        return tables.main_args(args)
    if kind == "merge":
        _merge(args)
        return 0
    ctx = _context(args, argv)
    kinds = list(KINDS) if kind == "all" else [kind]
    start = time.perf_counter()
    for name in kinds:
        ctx.log(f"== {name} on {ctx.device}{' (quick)' if ctx.quick else ''}")
        importlib.import_module(KINDS[name]).run(ctx, args)
    ctx.log(f"done in {time.perf_counter() - start:.1f}s; results: " + ", ".join(map(str, ctx.written)))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return execute(args, argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"benchmarks: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
