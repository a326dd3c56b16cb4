"""DSnoT accuracy on SmolLM2: perplexity of Wanda / SparseGPT with and without DSnoT refinement.

Each configuration restores the dense weights, prunes with the sequential pipeline on nsamples x
seqlen calibration windows (seed 0), and evaluates perplexity on the first `--windows` 512-token
windows of the held-out text. One JSON line per measurement is appended to
benchmarks/results/cpu/accuracy_dsnot.jsonl (rewritten atomically).

    python -m benchmarks.accuracy_dsnot --configs 'wanda' 'dsnot:{"mode":"official"}' --sparsities 0.5 0.6 2:4

A config is `method` or `method:{json options}` (the pruner's dataclass fields).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cpu" / "accuracy_dsnot.jsonl"


def parse_config(text: str) -> tuple[str, dict]:
    method, _, options = text.partition(":")
    return method, (json.loads(options) if options else {})


def append_line(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(old + json.dumps(record, sort_keys=True) + "\n")
    tmp.replace(path)


def main(argv=None) -> None:
    import sparsekit

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", required=True, help="method or method:{json options}")
    p.add_argument("--sparsities", nargs="+", default=["0.5", "0.6", "0.7", "2:4"], help="fractions or N:M patterns")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--windows", type=int, default=128, help="first N evaluation windows (fixed subset)")
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)

    model, tok = sparsekit.load_model(args.model, dtype=args.dtype)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    calib = sparsekit.calibration_ids(tok, args.nsamples, args.seqlen, seed=0)
    text = sparsekit.evaluation_text()
    command = "python -m benchmarks.accuracy_dsnot " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    for spec in args.sparsities:
        pattern = spec if ":" in spec else "unstructured"
        for config in args.configs:
            method, options = parse_config(config)
            model.load_state_dict(dense)
            start = time.perf_counter()
            report = sparsekit.prune(model, calib, sparsekit.PruneConfig(
                method=method, sparsity=None if ":" in spec else float(spec), pattern=pattern, method_options=options))
            prune_s = time.perf_counter() - start
            ppl = sparsekit.perplexity(model, tok, text, seqlen=args.eval_seqlen, batch_size=4, max_windows=args.windows, progress=False)
            record = {
                "model": args.model, "method": method, "options": options, "sparsity": spec, "sparsity_reached": report.sparsity,
                "ppl": ppl, "eval": {"text": "wikipedia (held-out)", "seqlen": args.eval_seqlen, "windows": args.windows},
                "calibration": {"text": "wikipedia", "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": 0},
                "dtype": args.dtype, "torch": torch.__version__, "device": platform.processor() or platform.machine(),
                "prune_seconds": round(prune_s, 1), "command": command,
            }
            append_line(args.out, record)
            print(json.dumps({k: record[k] for k in ("method", "options", "sparsity", "ppl")}), flush=True)


if __name__ == "__main__":
    main()
