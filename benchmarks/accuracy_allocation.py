"""Sparsity allocation on SmolLM2: perplexity of uniform methods vs OWL and BESA allocations.

Each run restores the dense weights, prunes with the sequential pipeline on nsamples x seqlen
calibration windows (seed 0) and evaluates perplexity on the first `--windows` 512-token windows of
the held-out text. One JSON line per run goes to benchmarks/results/cpu/accuracy_allocation.jsonl
(rewritten atomically); runs already recorded with the same settings are skipped, so an interrupted
sweep resumes. `--plot` draws ppl vs sparsity per method from the file.

    python -m benchmarks.accuracy_allocation --runs wanda sparsegpt wanda+owl \\
        'besa:{"granularity":"row","batch_size":4}' --sparsities 0.5 0.6 0.7
    python -m benchmarks.accuracy_allocation --plot

A run is `method[+owl][:{json options}]`; the options are the method's dataclass fields, plus
"batch_size" (calibration sequences per block forward; BESA takes one optimiser step per batch).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "cpu"
DEFAULT_OUT = RESULTS / "accuracy_allocation.jsonl"
DEFAULT_PLOT = RESULTS / "ppl_vs_sparsity_allocation.png"


def parse_run(text: str) -> tuple[str, str | None, dict]:
    head, _, options = text.partition(":")
    method, _, allocation = head.partition("+")
    return method, allocation or None, (json.loads(options) if options else {})


def label(record: dict) -> str:
    method, options = record["method"], record["options"]
    name = {"wanda": "Wanda", "sparsegpt": "SparseGPT", "dsnot": "DSnoT", "magnitude": "Magnitude", "dense": "Dense"}.get(method, method)
    if method == "besa":
        name = f"BESA-{options.get('granularity', 'row')}"
        if options.get("row_method", "besa") != "besa":
            name += f"+{options['row_method']}"
    return f"OWL+{name}" if record["allocation"] == "owl" else name


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_line(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(old + json.dumps(record, sort_keys=True) + "\n")
    tmp.replace(path)


def run_key(record: dict) -> str:
    return json.dumps([record["method"], record["allocation"], record["options"], record["sparsity_target"],
                       record["eval"], record["calibration"], record["dtype"]], sort_keys=True)


def measure(args) -> None:
    import sparsekit

    model, tok = sparsekit.load_model(args.model, dtype=args.dtype)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    calib = sparsekit.calibration_ids(tok, args.nsamples, args.seqlen, seed=0)
    text = sparsekit.evaluation_text()
    command = "python -m benchmarks.accuracy_allocation " + " ".join(shlex.quote(a) for a in args.argv)
    done = {run_key(r) for r in read_records(args.out)}
    common = {"eval": {"text": "wikipedia (held-out)", "seqlen": 512, "windows": args.windows},
              "calibration": {"text": "wikipedia", "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": 0},
              "dtype": args.dtype}
    for spec in args.sparsities:
        for run in args.runs:
            method, allocation, options = parse_run(run)
            target = 0.0 if method == "dense" else float(spec)
            record = {"method": method, "allocation": allocation, "options": options, "sparsity_target": target, **common}
            if run_key(record) in done:
                continue
            model.load_state_dict(dense)
            report, start = None, time.perf_counter()
            if method != "dense":
                options = dict(options)
                batch_size = options.pop("batch_size", 8)
                report = sparsekit.prune(model, calib, sparsekit.PruneConfig(
                    method=method, sparsity=target, method_options=options, allocation=allocation, batch_size=batch_size))
            prune_s = time.perf_counter() - start
            ppl = sparsekit.perplexity(model, tok, text, seqlen=512, batch_size=4, max_windows=args.windows, progress=False)
            record.update(
                reached=report.sparsity if report else 0.0, ppl=ppl, label=label(record), torch=torch.__version__,
                prune_seconds=round(prune_s, 1), phase_seconds={k: round(v, 1) for k, v in (report.seconds if report else {}).items()},
                command=command,
            )
            if method == "besa":
                blocks = len({r.name.rsplit(".", 2)[0] for r in report.layers})
                record["besa_seconds_per_block"] = round(sum(report.seconds[k] for k in ("statistics", "besa_reference", "besa_training", "masks")) / blocks, 2)
            append_line(args.out, record)
            done.add(run_key(record))
            print(f"{record['label']:<22} target {target:.2f} reached {record['reached']:.6f} ppl {ppl:8.3f} "
                  f"({prune_s:.0f} s)", flush=True)


def plot(path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_records(path)
    dense = [r["ppl"] for r in records if r["method"] == "dense"]
    series: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if r["method"] != "dense":
            series.setdefault(r["label"], []).append((r["sparsity_target"], r["ppl"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in sorted(series.items()):
        xs, ys = zip(*sorted(points))
        ax.plot([100 * x for x in xs], ys, marker="o", label=name)
    if dense:
        ax.axhline(dense[-1], color="grey", linestyle=":", label=f"dense ({dense[-1]:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("unstructured sparsity (%)")
    ax.set_ylabel("perplexity (held-out Wikipedia, 512-token windows)")
    ax.set_title("SmolLM2-135M (bf16, CPU): uniform vs OWL / BESA allocation")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(out)
    print(f"wrote {out}")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=[], help="method[+owl][:{json options}], or dense")
    p.add_argument("--sparsities", nargs="+", default=["0.5", "0.6", "0.7"])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--windows", type=int, default=128, help="first N evaluation windows (a fixed subset)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--plot", nargs="?", type=Path, const=DEFAULT_PLOT, default=None, help="write the PNG (default path)")
    args = p.parse_args(argv)
    args.argv = argv
    if args.runs:
        measure(args)
    if args.plot:
        plot(args.out, args.plot)


if __name__ == "__main__":
    main()
