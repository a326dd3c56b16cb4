"""Pruning time: seconds per pipeline phase for each method (PruneReport.seconds).

Phases are what the pipeline's PhaseTimer records (capture, statistics, masks, forward, plus any a
method adds, e.g. DSnoT, SparseGPT or BESA steps), CUDA-synchronised. One run per case (pruning is
seconds to minutes; repeats would multiply the cost), so p20/p80 are empty.
Models: SmolLM2-135M (real weights and calibration text), a LLaMA-7B-shaped random model (GPU;
random calibration token ids are fine for timing), a tiny LLaMA for --quick.
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.bench_accuracy import config_label, parse_config
from benchmarks.common import RunContext, describe_exception, free_memory, skip_row
from benchmarks.models import LLAMA_7B, build_llama
from tests.helpers import tiny_llama

BENCHMARK = "prune-time"
DEFAULT_METHODS = ["magnitude", "wanda", "sparsegpt", "dsnot", "besa", "owl"]
QUICK_METHODS = ["magnitude", "wanda", "sparsegpt", "dsnot"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prune-time")
    g.add_argument("--models", default=None, help="comma list of smollm2, llama7b (default: smollm2 on CPU, both on GPU)")
    g.add_argument("--methods", default=None, help=f"comma list (default: {','.join(DEFAULT_METHODS)}, where registered)")
    g.add_argument("--prune-configs", nargs="+", default=None,
                   help="configurations as `accuracy --acc-configs` takes them (method[+owl][:{json options}]), e.g. "
                        "sparsegpt 'sparsegpt:{\"update\":\"alps\"}' alps; replaces --methods")
    g.add_argument("--prune-pattern", default="unstructured", help="unstructured (at --prune-sparsity) or N:M")
    g.add_argument("--prune-sparsity", type=float, default=0.5)
    g.add_argument("--nsamples", type=int, default=None, help="calibration sequences (default GPU 128, CPU 32)")
    g.add_argument("--seqlen", type=int, default=None, help="tokens per sequence (default GPU 2048, CPU 512)")
    g.add_argument("--calib-batch-size", type=int, default=8, help="sequences per block forward")
    g.add_argument("--smollm2-layers", default=None, metavar="A:B",
                   help="keep only SmolLM2's decoder layers A..B-1 (a per-block cost on a busy CPU in a minute; the "
                        "first kept layer sees the embeddings instead of the residual stream)")
    g.add_argument("--llama-layers", type=int, default=None, help="decoder layers of the LLaMA-7B shape (default 32)")
    g.add_argument("--backend", default=None, choices=["torch", "triton", "cuda"], help="op backend (default: automatic)")


def _registered(method: str) -> str | None:
    from sparsekit.pruners import PRUNERS

    return None if method in PRUNERS else f"method {method!r} is not registered in sparsekit.pruners.PRUNERS (yet); have {sorted(PRUNERS)}"


def _load(ctx: RunContext, model_name: str, args):
    """(model, calibration ids, label, calibration description)."""
    if model_name == "tiny":
        model = tiny_llama().to(ctx.device).requires_grad_(False)
        gen = torch.Generator().manual_seed(0)
        return model, torch.randint(0, model.config.vocab_size, (4, 32), generator=gen), "tiny-llama", "random 4x32"
    nsamples = args.nsamples or (128 if ctx.is_cuda else 32)
    seqlen = args.seqlen or (2048 if ctx.is_cuda else 512)
    if model_name == "smollm2":
        import sparsekit

        model, tok = sparsekit.load_model("smollm2-135m", dtype="bfloat16", device=str(ctx.device))
        calib = sparsekit.calibration_ids(tok, nsamples, seqlen, seed=0)
        label = "smollm2-135m"
        if args.smollm2_layers:
            start, _, stop = args.smollm2_layers.partition(":")
            kept = model.model.layers[int(start):int(stop)]
            if not len(kept):
                raise ValueError(f"--smollm2-layers {args.smollm2_layers} keeps no layer of {len(model.model.layers)}")
            model.model.layers = kept
            model.config.num_hidden_layers = len(kept)
            label += f"[{args.smollm2_layers}]"
        return model, calib, label, f"wikipedia {nsamples}x{seqlen}"
    if model_name == "llama7b":
        if not ctx.is_cuda:
            raise RuntimeError("the LLaMA-7B-shaped model is timed on GPU only (13.5 GB of bf16 weights)")
        layers = args.llama_layers
        model = build_llama(LLAMA_7B, device=ctx.device, dtype=torch.bfloat16, layers=layers)
        gen = torch.Generator().manual_seed(0)
        calib = torch.randint(0, LLAMA_7B["vocab_size"], (nsamples, seqlen), generator=gen)
        label = "llama7b-shape" + (f"-{layers}layers" if layers else "")
        return model, calib, label, f"random ids {nsamples}x{seqlen}"
    raise ValueError(f"unknown model {model_name!r} for prune-time; choose smollm2, llama7b")


def run(ctx: RunContext, args) -> None:
    import sparsekit

    if ctx.quick:
        models = ["tiny"]
        methods = args.methods.split(",") if args.methods else QUICK_METHODS
    else:
        models = args.models.split(",") if args.models else (["smollm2", "llama7b"] if ctx.is_cuda else ["smollm2"])
        methods = args.methods.split(",") if args.methods else DEFAULT_METHODS
    configs = [parse_config(c) for c in args.prune_configs] if args.prune_configs else [(m, None, {}) for m in methods]
    pattern = args.prune_pattern
    pattern_label = pattern if ":" in pattern else f"{args.prune_sparsity:g}"
    done = ctx.done(BENCHMARK)
    for model_name in models:
        state, loaded = None, None
        for method, allocation, options in configs:
            reason = _registered(method)
            label_guess = {"tiny": "tiny-llama", "smollm2": "smollm2-135m"}.get(model_name, model_name)
            name = config_label(method, allocation, options) if (allocation or options) else method
            if reason:
                ctx.save(BENCHMARK, [skip_row(ctx, BENCHMARK, f"{label_guess}/{name}/{pattern_label}", name, reason,
                                              metric="prune seconds", unit="s")])
                continue
            try:
                if loaded is None:
                    loaded = _load(ctx, model_name, args)
                    state = {k: v.detach().clone() for k, v in loaded[0].state_dict().items()}
                else:
                    loaded[0].load_state_dict(state)  # every method starts from the same dense weights
            except Exception as exc:
                ctx.save(BENCHMARK, [skip_row(ctx, BENCHMARK, f"{label_guess}/{name}/{pattern_label}", name,
                                              describe_exception(exc), status="error", metric="prune seconds", unit="s")])
                break
            model, calib, label, calib_desc = loaded
            case = f"{label}/{name}/{pattern_label}"
            if (BENCHMARK, case, name) in done:
                continue
            params = {"model": label, "method": method, "pattern": pattern, "calibration": calib_desc,
                      "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "backend": args.backend or "auto",
                      "batch_size": args.calib_batch_size}
            if options or allocation:
                params.update(options=options, allocation=allocation)
            method_options = dict(options)
            permute = method_options.pop("permute", False)  # a PruneConfig field, not the pruner's
            config = sparsekit.PruneConfig(method=method, pattern=pattern,
                                           sparsity=None if ":" in pattern else args.prune_sparsity,
                                           device=str(ctx.device), batch_size=args.calib_batch_size, backend=args.backend,
                                           method_options=method_options, allocation=allocation, permute=permute)
            ctx.log(f"prune-time {case} ({calib_desc}) on {ctx.device}")
            try:
                start, cpu_start = time.perf_counter(), time.process_time()
                report = sparsekit.prune(model, calib, config)
                total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
            except Exception as exc:
                ctx.save(BENCHMARK, [skip_row(ctx, BENCHMARK, case, name, describe_exception(exc), status="error",
                                              metric="prune seconds", unit="s", params=params)])
                continue
            derived = {"phases": {k: float(v) for k, v in report.seconds.items()}, "sparsity_reached": report.sparsity,
                       "peak_memory_bytes": report.peak_memory_bytes, "layers": len(report.layers),
                       "cpu_seconds": cpu_total, "threads": torch.get_num_threads()}  # process CPU time: comparable on a shared CPU
            ctx.log(f"  {total:.1f}s: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items()))
            ctx.save(BENCHMARK, [ctx.row(benchmark=BENCHMARK, case=case, provider=name, metric="prune seconds", unit="s",
                                         median=total, params=params, derived=derived)])
        del loaded, state
        free_memory(ctx.device)
